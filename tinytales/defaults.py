"""The story defaults and the named decoding methods, in one place (no torch import: the command line reads
them before loading a model).

How `tinytales generate`, the page (`/api/story`) and ollama's `/api/generate` tell a story unless told otherwise:
sampling with these settings, chosen by measurement against loops and endings (docs/experiments.md, "Story defaults").
`--method greedy` stays plain greedy; beam search blocks repeated 3-grams. GenerationConfig's own defaults
stay the neutral ones (temperature 1, no filters), as in other libraries.
"""
from __future__ import annotations

STORY_DEFAULTS = {"temperature": 0.8, "top_k": 0, "top_p": 0.95, "min_p": 0.0, "repetition_penalty": 1.1,
                  "no_repeat_ngram_size": 0, "max_new_tokens": 200}

# Small models trapped by beam search repeat one sentence forever; blocking repeated 3-grams is the
# usual remedy (the CLI, the API and the compare tables use it for beam search unless told otherwise).
BEAM_NO_REPEAT_NGRAM = 3

# What each sampling setting is when it changes nothing (GenerationConfig's own defaults).
OFF = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0,
       "no_repeat_ngram_size": 0}

# The decoding methods by name, the one vocabulary of `generate --method`, `compare --method` and
# `grade --method`: each is GenerationConfig settings (the rest stay off). "sample" is the story defaults;
# the others are the plain textbook methods, one filter each, as the compare tables show them.
DECODING_METHODS: dict[str, dict] = {
    "sample": {"method": "sample", **{k: v for k, v in STORY_DEFAULTS.items() if k in OFF and v != OFF[k]}},
    "greedy": {"method": "greedy"},
    "beam": {"method": "beam", "num_beams": 4, "no_repeat_ngram_size": BEAM_NO_REPEAT_NGRAM},
    "multinomial": {"method": "sample", "temperature": 1.0},  # every token by its probability, no filter
    "temperature": {"method": "sample", "temperature": 0.7},
    "top-k": {"method": "sample", "top_k": 40},
    "top-p": {"method": "sample", "top_p": 0.9},
    "min-p": {"method": "sample", "min_p": 0.1},
}


def method_settings(name: str, **overrides) -> dict:
    """GenerationConfig settings of a named decoding method, with `overrides` on top (None values are ignored).

    Example: GenerationConfig(**method_settings("top-p", max_new_tokens=50)); ValueError for an unknown name.
    """
    if name not in DECODING_METHODS:
        raise ValueError(f"unknown decoding method {name!r}; choose from {', '.join(DECODING_METHODS)}")
    return {**DECODING_METHODS[name], **{k: v for k, v in overrides.items() if v is not None}}


def describe_methods() -> str:
    """The methods and their settings in one line, for --help: "sample (temperature=0.8 ...), greedy, ..."."""
    def one(name: str, settings: dict) -> str:
        shown = " ".join(f"{k}={v}" for k, v in settings.items() if k != "method")
        return f"{name} ({shown})" if shown else name
    return ", ".join(one(name, settings) for name, settings in DECODING_METHODS.items())


# Limits. The library and the command line take long prompts (the model reads only their last tokens);
# the HTTP API, open to anyone who can reach it, takes less of everything.
MAX_PROMPT_CHARS = 20_000
API_MAX_PROMPT_CHARS = 2_000
API_MAX_NEW_TOKENS = 1024
API_MAX_BEAMS = 8
API_MAX_TOP_K = 1000

# The server: stories told at once (rows of the continuous batch, or worker threads without it) and requests
# that may wait for one; beyond both, 503 with Retry-After. bench serve measured 8 rows on 2 cores.
SERVE_MAX_CONCURRENT = 8
SERVE_MAX_QUEUE = 16
