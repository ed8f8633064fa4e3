"""Run directories and checkpoints.

A run directory holds:
  run.json                 the training configuration
  history.json             every logged step, every evaluation, every epoch
  checkpoints/step-NNNNNNNN/  a model directory plus trainer.pt (optimizer, scaler, RNG) and state.json
  model/                   the final model (a model directory)
  loss.png                 loss and grad-norm curves

A checkpoint appears only by renaming a fully written temporary directory, so a kill at
any moment leaves either the previous checkpoints or the new one, never a broken one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch

from .core import atomic_directory, write_json
from .formats.native import write_model_files

CHECKPOINTS = "checkpoints"
TRAINER_FILE = "trainer.pt"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir, step: int, model, tokenizer, trainer_state: dict, state: dict, card: dict,
                    keep_last: int | None = None) -> Path:
    """Write checkpoint `step` atomically, then prune to the newest `keep_last`."""
    target = checkpoint_dir(run_dir, step)
    with atomic_directory(target) as tmp:
        write_model_files(model, tokenizer, tmp, card=card)  # float32: resume must be exact
        torch.save(trainer_state, tmp / TRAINER_FILE)
        write_json(tmp / STATE_FILE, state)
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def verify_checkpoint(checkpoint: Path) -> None:
    """ValueError naming the file unless the checkpoint's state.json parses, model.safetensors' header reads
    and trainer.pt loads (a truncated or empty file, from a crash or a full disk, is found here, not mid-resume)."""
    from safetensors import SafetensorError, safe_open

    checkpoint = Path(checkpoint)
    state_path, weights, trainer = checkpoint / STATE_FILE, checkpoint / "model.safetensors", checkpoint / TRAINER_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{state_path} cannot be read ({e})") from e
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{state_path} holds no training state (no \"step\")")
    try:
        with safe_open(str(weights), framework="pt") as f:
            list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights} cannot be read ({e})") from e
    try:
        torch.load(trainer, map_location="cpu", weights_only=True, mmap=True)  # mapped: cheap for any size
    except Exception as e:  # a truncated zip, an empty file
        raise ValueError(f"{trainer} cannot be read ({' '.join(str(e).split())})") from e


def newest_good_checkpoint(found: list[Path], where) -> Path:
    """The newest checkpoint that verifies, warning about each newer broken one; ValueError naming them all."""
    problems = []
    for checkpoint in reversed(found):
        try:
            verify_checkpoint(checkpoint)
        except ValueError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"skipping {len(problems)} broken checkpoint(s) ({'; '.join(problems)}); resuming from "
                          f"{checkpoint}", stacklevel=2)
        return checkpoint
    raise ValueError(f"no checkpoint of {where} can be resumed from: {'; '.join(problems)}; delete the broken "
                     f"checkpoints to start again, or resume from another run")


def resolve_resume(resume: str | os.PathLike | None, run_dir) -> Path | None:
    """`auto`: the run's newest checkpoint that is whole (None if there is none; older ones when the newest
    are broken, with a warning); a run directory: the same; a path: that checkpoint."""
    if resume is None:
        return None
    if str(resume) == "auto":
        found = list_checkpoints(run_dir)
        if not found:
            _warn_if_run_had_steps(run_dir)
            return None
        return newest_good_checkpoint(found, run_dir)
    path = Path(resume)
    if (path / CHECKPOINTS).is_dir():  # a run directory: its newest checkpoint
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{path} has no complete checkpoint to resume from")
        return newest_good_checkpoint(found, path)
    if not (path / STATE_FILE).exists() or not (path / TRAINER_FILE).exists():
        raise FileNotFoundError(
            f"{path} is not a checkpoint (no {STATE_FILE} / {TRAINER_FILE}); pass a checkpoint directory, "
            f"a run directory, or --resume auto")
    return path


def _warn_if_run_had_steps(run_dir) -> None:
    """--resume auto in a run that trained (history.json has steps) but has no checkpoint left starts from step 0."""
    history = Path(run_dir) / "history.json"
    try:
        steps = json.loads(history.read_text(encoding="utf-8")).get("steps") or []
    except (OSError, ValueError, AttributeError):
        return
    if steps:
        warnings.warn(f"--resume auto: {run_dir} trained {steps[-1].get('step', '?')} steps (history.json) but has "
                      f"no checkpoint left in {Path(run_dir) / CHECKPOINTS}; training starts again from step 0",
                      stacklevel=3)


def load_trainer_state(checkpoint: Path) -> tuple[dict, dict]:
    """(trainer_state, state) of a checkpoint; tensors only, never pickled code (weights_only=True)."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{checkpoint / STATE_FILE} cannot be read ({e}); resume from an older checkpoint") from e
    try:
        trainer_state = torch.load(checkpoint / TRAINER_FILE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{checkpoint / TRAINER_FILE} cannot be read ({e}); resume from an older checkpoint") from e
    return trainer_state, state
