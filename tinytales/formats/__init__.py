"""Model formats, and the one entry point that loads any of them.

- `native`: the TinyTales model directory (config.json + model.safetensors + tokenizer.json + card.json);
- `llama2c`: llama2.c's `.bin` models and `tokenizer.bin`; `llama2c_export` writes them (for run.c and runq.c);
- `hf`: conversion to and from Hugging Face GPT-2 / Llama directories;
- `transformers_lm`: any other transformers causal LM, run through an adapter;
- `hub`: models by Hugging Face hub name (`hf:owner/name`), fetched into the hub's cache.

`model_location(reference)` is where a model's name is read (None or `bundled`: the bundled model; a path);
`load_model(reference)` and `resolve_tokenizer(spec)` turn what a user names into a model or a tokenizer;
the modules below never import this one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..core import BUNDLED, LoadedModel
from ..tokenizer import TOKENIZER_FILE, BPETokenizer, gpt2_tokenizer, load_tokenizer
from . import hf, hub, llama2c, native, transformers_lm
from .native import bundled_model_path, save_model

__all__ = ["load_model", "model_location", "resolve_tokenizer", "bundled_model_path", "save_model", "LoadedModel",
           "BUNDLED"]


def model_location(reference) -> Path:
    """The local path a model reference names: None or "bundled" is the bundled model, whatever the current
    folder (a folder called bundled is ./bundled); anything else is a path."""
    if reference is None or reference == BUNDLED:
        return bundled_model_path()
    return Path(reference).expanduser()


def load_model(path=None, device="cpu", dtype: torch.dtype = torch.float32, tokenizer_path=None) -> LoadedModel:
    """Load any accepted model reference; None or "bundled" means the bundled storyteller (`model_location`).

    `hf:owner/name[/file.bin][@revision]` is fetched from the Hugging Face hub first (`hub.fetch`: the hub's
    cache, offline from it), then loaded like a local one. A TinyTales directory loads natively; a llama2.c
    `.bin` file with its tokenizer (`tokenizer_path`, or tokenizer.bin beside it); a Hugging Face directory
    natively when its architecture maps exactly (GPT-2, Llama), else through transformers (`TransformersLM`).
    """
    if hub.is_hub_reference(path):
        path = hub.fetch(path)
    path = model_location(path)
    if not path.exists():
        hint = " (the bundled model ships with the package; reinstall it)" if path == bundled_model_path() else ""
        if not hint and re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
            hint = f" (a model on the Hugging Face hub? write hf:{path})"
        raise FileNotFoundError(f"model not found: {path}{hint}")
    if path.is_file() and path.suffix == ".bin":
        return llama2c.load_llama2c(path, tokenizer_path=tokenizer_path, device=device, dtype=dtype)
    if path.is_dir():
        data = native.read_config(path)
        if data.get("format") == native.MODEL_FORMAT:
            return native.load_tinytales_dir(path, device, dtype)
        if "model_type" in data:
            try:
                hf.tinytales_config(data)
            except hf.UnsupportedArchitecture:
                return transformers_lm.load_transformers(path, device, dtype)
            return hf.import_hf(path, device=device, dtype=dtype)
    raise ValueError(f"{path} is not a model: expected a TinyTales model directory, a Hugging Face model "
                     f"directory, or a llama2.c .bin file")


def resolve_tokenizer(spec, gpt2_dir: str | os.PathLike | None = None):
    """The tokenizer a user names: "gpt2", a tokenizer.json file, or a folder holding tokenizer.json (a model
    folder, or "bundled": the bundled model's, see `model_location`).

    "gpt2" reads vocab.json + merges.txt from `gpt2_dir`, then $TINYTALES_GPT2_DIR, then the Hugging Face
    cache (see `gpt2_tokenizer`). A llama2.c `tokenizer.bin` (or a folder with one) is accepted too.
    A tokenizer object is returned as it is.
    """
    if hasattr(spec, "encode") and hasattr(spec, "eot_id"):
        return spec
    if not spec:
        raise ValueError("no tokenizer given: pass gpt2, a tokenizer.json file or a model folder")
    if str(spec).lower() == "gpt2":
        return gpt2_tokenizer(gpt2_dir)
    path = model_location(spec)
    if path.is_dir():
        if (path / TOKENIZER_FILE).exists():
            return load_tokenizer(path)
        if (path / "tokenizer.bin").exists():
            return llama2c.Llama2cTokenizer.from_file(path / "tokenizer.bin")
        raise FileNotFoundError(f"{path} holds no {TOKENIZER_FILE}: pass gpt2, a tokenizer.json file or a model "
                                f"folder that contains one (train one with `tinytales train-tokenizer`)")
    if path.is_file():
        return llama2c.Llama2cTokenizer.from_file(path) if path.suffix == ".bin" else BPETokenizer.from_file(path)
    raise FileNotFoundError(f"tokenizer {str(spec)!r} not found: pass gpt2, a tokenizer.json file or a model "
                            f"folder that contains one")
