"""TinyTales performance benchmarks (the repository's bench/ folder, not part of the installed package).

    python -m bench                 # everything, about 15 minutes on a 2-core CPU
    python -m bench train           # training tokens/s against transformers' GPT2LMHeadModel
    python -m bench generate        # generation tokens/s against transformers' generate, time to first token
    python -m bench data            # tinytales.batches.prepare MB/s
    python -m bench all --quick     # seconds: tiny models, one iteration (the smoke test)

Results go to bench/results/<benchmark>.json with the machine's description; docs/performance.md
summarises them. `tinytales bench` runs the same from a checkout.
"""
