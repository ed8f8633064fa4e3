"""The bottom layer: what every module may import. It imports nothing from the package (torch only inside
functions, so that the command line starts fast).

- constants shared by data, training and the model: the end-of-story text, the ignored target id;
- writes that a kill never leaves half done: `write_json`, `atomic_directory`;
- `resolve_device`: what "auto" means, for every command;
- the interfaces the rest relies on: `Tokenizer`, `LanguageModel` (Protocols), and `LoadedModel`.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

EOT = "<|endoftext|>"  # the end-of-story text; tokenizers map it to their eot_id
IGNORE_INDEX = -100  # a target the loss does not score (padding, unscored positions)


# ----------------------------------------------------------------------------- atomic writes

def write_json(path, data) -> None:
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


@contextmanager
def atomic_directory(target) -> Iterator[Path]:
    """A fresh temporary directory beside `target`, moved into place when the block succeeds and removed
    when it fails: readers see the old directory or the whole new one, never a half-written one.

    Example: with atomic_directory("runs/x/model") as tmp: (tmp / "a.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_directory(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- devices

def resolve_device(spec: str = "auto"):
    """A torch.device for "auto" (CUDA when usable, else CPU), "cpu", "cuda", "cuda:1" ...; ValueError naming
    the fix for an unknown name or a GPU this machine does not have."""
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec} asked for, but this machine has no usable CUDA GPU; use --device cpu")
    return device


# ----------------------------------------------------------------------------- interfaces

@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer offers (BPETokenizer, Llama2cTokenizer, the transformers tokenizer wrapper)."""

    eot_id: int  # the end-of-story token
    bos_id: int | None  # a token put before every text, or None

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str: ...

    def save(self, directory) -> Path: ...


@runtime_checkable
class LanguageModel(Protocol):
    """What generation, evaluation and comparison use of a model (GPT, TransformersLM).

    `model(idx, targets=None, cache=None, attention_mask=None, last_only=False) -> (logits, loss)`;
    `model.new_cache(batch, max_length)` returns a cache with `length` and `reorder(index)`.
    """

    config: Any  # has context_length and vocab_size

    def __call__(self, idx, targets=None, cache=None, attention_mask=None, last_only: bool = False): ...

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype=None): ...

    def num_params(self, embeddings: bool = True) -> int: ...


@dataclass
class LoadedModel:
    """A model ready to use, whatever its format: the model, its tokenizer, where it came from, its card."""

    model: LanguageModel
    tokenizer: Tokenizer
    path: Path | None = None
    card: dict = field(default_factory=dict)
