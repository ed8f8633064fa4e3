"""Named presets: a model architecture plus the training settings that suit it.

`vocab_size` is taken from the tokenizer at training time (rounded up to a multiple of 64).
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    # Trains in seconds: for tests and for trying the tool out.
    "tiny": {
        "model": {"context_length": 64, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "train": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "max_steps": 30, "eval_every": 10,
                  "checkpoint_every": 10, "log_every": 1},
    },
    # The seeds' architecture: GPT-2 vocabulary, context 512, n_embd 256, 4 layers, 4 heads.
    "seed": {
        "model": {"context_length": 512, "n_layer": 4, "n_head": 4, "n_embd": 256},
        "train": {"tokenizer": "gpt2", "batch_size": 8, "lr": 1e-3, "warmup_steps": 200},
    },
    # Small-vocabulary models (train a tokenizer first with `tinytales train-tokenizer`).
    "micro": {
        "model": {"context_length": 256, "n_layer": 4, "n_head": 4, "n_embd": 128},
        "train": {"batch_size": 32, "lr": 2e-3, "warmup_steps": 200},
    },
    # The recipe for a storyteller of your own (docs/experiments.md, "Training recipe"): Llama-style blocks,
    # Muon for the weight matrices, WSD schedule; a 4K BPE trained on the stories. The bundled model's shape.
    "story": {
        "model": {"context_length": 256, "n_layer": 4, "n_head": 4, "n_embd": 256, "position": "rope",
                  "norm": "rmsnorm", "activation": "swiglu", "bias": False},
        "train": {"vocab_size": 4096, "batch_size": 16, "optimizer": "muon", "muon_lr": 0.02, "lr": 0.004,
                  "warmup_steps": 30, "schedule": "wsd", "decay_fraction": 0.2, "min_lr_ratio": 0.05,
                  "weight_decay": 0.1},
    },
    "small": {
        "model": {"context_length": 256, "n_layer": 4, "n_head": 4, "n_embd": 256},
        "train": {"batch_size": 16, "lr": 1e-3, "warmup_steps": 200},
    },
}


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
