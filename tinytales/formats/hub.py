"""Models by Hugging Face hub name: `hf:owner/name`, `hf:owner/name/path/to/file.bin` (a llama2.c file in a
hub repository, e.g. karpathy's tinyllamas), each optionally `@revision` (a branch, tag or commit).

`fetch` downloads into the hub's standard cache ($HF_HUB_CACHE, ~/.cache/huggingface/hub) with its progress
bars, and works offline from that cache ($HF_HUB_OFFLINE=1, or when the hub cannot be reached and the files
are there). Only weights, configs and tokenizer files are fetched: never code.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..core import require

PREFIX = "hf:"
FILES = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "README.md"]  # weights, configs, tokenizers
_REFERENCE = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?P<file>/[^@]+)?(?:@(?P<revision>[\w./-]+))?")


def is_hub_reference(reference) -> bool:
    return isinstance(reference, str) and reference.startswith(PREFIX)


def parse(reference: str) -> tuple[str, str | None, str | None]:
    """(repo id, file inside the repo or None, revision or None) of "hf:owner/name[/file][@revision]"."""
    match = _REFERENCE.fullmatch(reference.removeprefix(PREFIX))
    if match is None:
        raise ValueError(f"{reference!r} is not a hub model name: write hf:owner/name (a model repository), "
                         f"hf:owner/name/file.bin (a llama2.c file in it), optionally @revision")
    file = match["file"].lstrip("/") if match["file"] else None
    return match["repo"], file, match["revision"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def fetch(reference: str) -> Path:
    """The local path of a hub model (a snapshot folder, or the one file asked for), downloaded if needed."""
    repo, file, revision = parse(reference)
    hub = require("huggingface_hub", "hub", f"the hub model {reference}")
    cache = os.environ.get("HF_HUB_CACHE") or None
    offline = _offline()
    try:
        if file:
            return Path(hub.hf_hub_download(repo, file, revision=revision, cache_dir=cache, local_files_only=offline))
        return Path(hub.snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=offline,
                                      allow_patterns=FILES))
    except Exception as e:  # offline and not cached, no such repository, no network: one line, with the fix
        how = ("HF_HUB_OFFLINE=1 is set and it is not in the local cache" if offline
               else "it could not be downloaded and is not in the local cache")
        raise FileNotFoundError(f"{reference}: {how} ({type(e).__name__}); check the name, go online once to "
                                f"download it, or pass a local folder or file with --model") from e
