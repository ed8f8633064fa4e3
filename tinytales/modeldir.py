"""The model directory: config.json + model.safetensors + tokenizer.json + card.json.

Loading never unpickles code: weights come from safetensors, everything else from JSON.
`load_model` is the one entry point that turns any accepted model reference (a TinyTales
directory, the bundled model, a llama2.c .bin file, a Hugging Face directory) into a model.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .model import GPT, GPTConfig
from .tokenizer import BPETokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
FORMAT_NAME = "tinytales"
FORMAT_VERSION = 1
BUNDLED_DIR = Path(__file__).parent / "pretrained" / "tinytales-stories"


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: BPETokenizer
    path: Path | None = None
    card: dict = field(default_factory=dict)


def bundled_model_path() -> Path:
    return BUNDLED_DIR


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a temporary file renamed over the target."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def replace_directory(tmp: Path, target: Path) -> None:
    """Move a fully written directory into place; the old one is removed only afterwards."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model: GPT, tokenizer: BPETokenizer, directory, card: dict | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write a model directory atomically (a kill never leaves a half-written one)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
             if not (model.config.tie_embeddings and k == "lm_head.weight")}
    save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    tokenizer.save(tmp)
    write_json(tmp / CONFIG_FILE, {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "tokenizer": {"file": "tokenizer.json", "eot_id": tokenizer.eot_id, "vocab_size": tokenizer.vocab_size},
        "dtype": str(dtype).removeprefix("torch."),
    })
    write_json(tmp / CARD_FILE, card or {})
    replace_directory(tmp, directory)
    return directory


def read_config(directory) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a model directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the model directory is corrupt") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object")
    return data


def load_tinytales_dir(directory, device="cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    data = read_config(directory)
    if data.get("format") != FORMAT_NAME or "model" not in data:
        raise ValueError(f"{directory / CONFIG_FILE} is not a TinyTales model config (no \"format\": \"tinytales\")")
    config = GPTConfig.from_dict(data["model"])
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{directory}: tokenizer.json has {tokenizer.vocab_size} tokens but the model only "
                         f"{config.vocab_size}; the files do not belong together")
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights} is corrupt or truncated ({e}); re-save or re-download the model") from e
    model = GPT(config)
    expected = {k: v.shape for k, v in model.state_dict().items()
                if not (config.tie_embeddings and k == "lm_head.weight")}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected.keys() & state.keys() if tuple(state[k].shape) != tuple(expected[k]))
    if missing or extra or wrong:
        raise ValueError(f"{weights} does not match {directory / CONFIG_FILE}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.to(device=device, dtype=dtype).eval()
    card_path = directory / CARD_FILE
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.exists() else {}
    return LoadedModel(model, tokenizer, directory, card)


def load_model(path=None, device="cpu", dtype: torch.dtype = torch.float32, tokenizer_path=None) -> LoadedModel:
    """Load any accepted model reference; None means the bundled storyteller."""
    path = Path(path) if path is not None else bundled_model_path()
    if not path.exists():
        hint = " (the bundled model ships with the package; reinstall it)" if path == bundled_model_path() else ""
        raise FileNotFoundError(f"model not found: {path}{hint}")
    if path.is_file() and path.suffix == ".bin":
        from .llama2c import load_llama2c

        return load_llama2c(path, tokenizer_path=tokenizer_path, device=device, dtype=dtype)
    if path.is_dir():
        data = read_config(path)
        if data.get("format") == FORMAT_NAME:
            return load_tinytales_dir(path, device, dtype)
        if "model_type" in data:
            from .hf import load_hf

            return load_hf(path, device=device, dtype=dtype)
    raise ValueError(f"{path} is not a model: expected a TinyTales model directory, a Hugging Face model "
                     f"directory, or a llama2.c .bin file")
