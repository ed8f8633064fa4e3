"""The TinyTales model directory: config.json + model.safetensors + tokenizer.json + card.json.

Loading never unpickles code: weights come from safetensors, everything else from JSON.
(`tinytales.formats.load_model` is the entry point for every format.)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..core import LoadedModel, atomic_directory, write_json
from ..model import GPT, GPTConfig
from ..tokenizer import BPETokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
MODEL_FORMAT = "tinytales"
FORMAT_VERSION = 1
BUNDLED_DIR = Path(__file__).parents[1] / "pretrained" / "tinytales-stories"


def bundled_model_path() -> Path:
    return BUNDLED_DIR


def save_model(model: GPT, tokenizer: BPETokenizer, directory, card: dict | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write a model directory atomically (a kill never leaves a half-written one)."""
    with atomic_directory(directory) as tmp:
        write_model_files(model, tokenizer, tmp, card, dtype)
    return Path(directory)


def write_model_files(model: GPT, tokenizer: BPETokenizer, directory: Path, card: dict | None = None,
                      dtype: torch.dtype = torch.float32) -> None:
    """The model directory's files, written into an existing (temporary) directory."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
             if not (model.config.tie_embeddings and k == "lm_head.weight")}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": MODEL_FORMAT})
    tokenizer.save(directory)
    write_json(directory / CONFIG_FILE, {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "tokenizer": {"file": "tokenizer.json", "eot_id": tokenizer.eot_id, "vocab_size": tokenizer.vocab_size},
        "dtype": str(dtype).removeprefix("torch."),
    })
    write_json(directory / CARD_FILE, card or {})


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


def saved_shapes(model: GPT) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the tensors a model directory holds for this model (a tied output matrix once)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not (model.config.tie_embeddings and k == "lm_head.weight")}


def read_weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a safetensors file, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights} is corrupt or truncated ({e}); re-save or re-download the model") from e


def check_finite(state: dict[str, torch.Tensor], weights: Path) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{weights} holds NaN or infinite weights (in {len(bad)} tensors, e.g. {bad[0]}); the "
                         f"training that wrote it diverged: use an earlier checkpoint or train again with a lower --lr")


def load_tinytales_dir(directory, device="cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    data = read_config(directory)
    if data.get("format") != MODEL_FORMAT or "model" not in data:
        raise ValueError(f"{directory / CONFIG_FILE} is not a TinyTales model config (no \"format\": \"tinytales\")")
    if not isinstance(data["model"], dict):
        raise ValueError(f"{directory / CONFIG_FILE}: \"model\" should hold the model's settings (a JSON object)")
    config = GPTConfig.from_dict(data["model"])
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{directory}: tokenizer.json has {tokenizer.vocab_size} tokens but the model only "
                         f"{config.vocab_size}; the files do not belong together")
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing")
    # the sizes first, from the header: a config that does not match its weights allocates nothing (the
    # header's matrices against the count the config implies; building the model on the meta device instead
    # costs 2 s of torch's start-up)
    found = read_weight_shapes(weights)
    matrices = sum(math.prod(shape) for shape in found.values() if len(shape) >= 2)
    if matrices != config.estimated_params():
        raise ValueError(f"{weights} does not match {directory / CONFIG_FILE}: its matrices hold {matrices:,} "
                         f"weights, the config implies {config.estimated_params():,}; the files do not belong together")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights} is corrupt or truncated ({e}); re-save or re-download the model") from e
    check_finite(state, weights)
    model = GPT(config)
    expected = saved_shapes(model)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in expected.keys() & found.keys() if found[k] != expected[k])
    if missing or extra or wrong:
        raise ValueError(f"{weights} does not match {directory / CONFIG_FILE}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong shape {wrong[:5]}; the files do not belong together")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, tokenizer, directory, read_card(directory))


def read_card(directory) -> dict:
    """card.json as a dict; a card that is not a JSON object is an error naming the file."""
    path = Path(directory) / CARD_FILE
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or delete it (the card is optional)") from e
    if not isinstance(card, dict):
        raise ValueError(f"{path} should hold a JSON object, got a {type(card).__name__}; fix or delete it "
                         f"(the card is optional)")
    return card
