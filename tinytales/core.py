"""The bottom layer: what every module may import. It imports nothing from the package (torch only inside
functions, so that the command line starts fast).

- constants shared by data, training and the model: the end-of-story text, the ignored target id, the bundled
  model's name;
- writes that a kill never leaves half done: `atomic_file`, `write_json`, `atomic_directory`;
- `resolve_device`: what "auto" means, for every command;
- `require`: an optional dependency, or one line naming the extra to install;
- the interfaces the rest relies on: `Tokenizer`, `LanguageModel` (Protocols), and `LoadedModel`.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

EOT = "<|endoftext|>"  # the end-of-story text; tokenizers map it to their eot_id
IGNORE_INDEX = -100  # a target the loss does not score (padding, unscored positions)
BUNDLED = "bundled"  # the bundled model's name wherever a model is named: --model bundled, --init-from bundled


# ----------------------------------------------------------------------------- atomic writes

@contextmanager
def atomic_file(path, sync: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write, renamed over `path` when the block succeeds (flushed to disk first with fsync;
    `sync=False` skips it for files rewritten every few seconds) and removed when it fails: readers see the old
    file or the whole new one, never a half-written one.

    Example: with atomic_file("out/model.bin") as f: f.write(data)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the block failed


def write_json(path, data, sync: bool = True) -> None:
    """Write JSON atomically (`atomic_file`)."""
    with atomic_file(path, sync) as f:
        f.write((json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def fsync_tree(directory) -> None:
    """Flush every file of a directory, and the directory itself, to disk: after a power loss a renamed
    directory then holds its whole files, never empty ones. One fsync per file (a checkpoint has five)."""
    directory = Path(directory)
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_directory(directory)


def fsync_directory(directory) -> None:
    """Flush a directory's entries (renames, new files); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory
    finally:
        os.close(fd)


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the `.NAME.tmp-PID` / `.NAME.old-PID` folders that killed processes left in `folder`
    (those of processes still running are kept). Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        name = path.name
        if not (name.startswith(".") and (".tmp-" in name or ".old-" in name)):
            continue
        pid = name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue  # not ours to judge, or still being written
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's)
    return True


def replace_directory(tmp: Path, target: Path) -> None:
    """Move a fully written directory into place; the old one is removed only afterwards."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_directory(target.parent)
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
        fsync_tree(tmp)  # the files are on disk before the rename makes them visible
        replace_directory(tmp, target)
    except OSError as e:
        if e.filename is None:  # e.g. disk full inside a library's write: say which directory failed
            raise OSError(e.errno, e.strerror or str(e), str(target)) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- devices

def auto_device() -> str:
    """What --device auto picks: a CUDA GPU, else Apple's GPU (MPS), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)  # builds without it have none
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str = "auto"):
    """A torch.device for "auto" (`auto_device`: CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:1", "mps" ...;
    ValueError naming the fix for an unknown name or a GPU this machine does not have."""
    import torch

    if spec == "auto":
        spec = auto_device()
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec} asked for, but this machine has no usable CUDA GPU; use --device cpu")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"--device {spec} asked for, but this machine has no usable Apple GPU (MPS); use --device cpu")
    return device


# ----------------------------------------------------------------------------- optional dependencies

class MissingDependency(ImportError):
    """An optional dependency is not installed; the message names the pip command that installs it."""


def require(module: str, extra: str, purpose: str):
    """Import and return `module`, an optional dependency of the `extra` of pyproject.toml; when it cannot be
    imported, a MissingDependency whose one-line message names the fix.

    Example: uvicorn = require("uvicorn", "serve", "tinytales serve")
    -> tinytales serve needs uvicorn, which is not installed: pip install "tinytales[serve]"
    """
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and (e.name is None or e.name.split(".")[0] == package)
        why = "which is not installed" if missing else f"which cannot be imported ({e})"
        raise MissingDependency(f'{purpose} needs {package}, {why}: pip install "tinytales[{extra}]"',
                                name=package) from e


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
