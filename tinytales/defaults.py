"""The story defaults, in one place (no torch import: the command line reads them before loading a model).

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

# Limits. The library and the command line take long prompts (the model reads only their last tokens);
# the HTTP API, open to anyone who can reach it, takes less of everything.
MAX_PROMPT_CHARS = 20_000
API_MAX_PROMPT_CHARS = 2_000
API_MAX_NEW_TOKENS = 1024
API_MAX_BEAMS = 8
API_MAX_TOP_K = 1000
