"""Experiment trackers: the figures the training log prints, also as TensorBoard event files
(`RUN/tensorboard/`) and as a Weights & Biases run, each an optional extra.

`train.py` opens them once (`open_trackers`) on the first process only, and calls `log(step, metrics)` where
it already records a step or an evaluation. A resumed run writes on in the same TensorBoard folder (the events
after the checkpoint it resumes from are purged) and in the same W&B run (its id is kept in the checkpoints).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Protocol

# the packages themselves, not tinytales' extras: the command works in a checkout too, and survives rich markup
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}

# a step record of the training loop (train.py) -> the name each tracker shows it under
TRAIN_METRICS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                 "tokens_per_s": "train/tokens_per_s", "tokens": "train/tokens"}
VAL_LOSS = "val/loss"


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def require(tensorboard: bool, wandb: str | None) -> None:
    """Before any work: a ValueError with the install command for each tracker asked for whose package is missing."""
    missing = [name for name, wanted in (("tensorboard", tensorboard), ("wandb", wandb))
               if wanted and importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError("; ".join(f"--{name} needs the {name} package: {INSTALL[name]}" for name in missing))


def train_metrics(record: dict) -> dict[str, float]:
    return {name: float(record[key]) for key, name in TRAIN_METRICS.items()}


class TensorBoardTracker:
    def __init__(self, log_dir: Path, config: dict, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run hides what an interrupted one logged after the checkpoint it resumes from
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)
        code = "\n".join("    " + line for line in json.dumps(config, indent=2, default=str).splitlines())
        self.writer.add_text("config", code, start_step)  # indented: Markdown shows it as code

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, project: str, run_dir: Path, config: dict, run_id: str | None = None):
        import wandb

        try:
            self.run = wandb.init(project=project, name=run_dir.name, config=config, id=run_id,
                                  resume="allow" if run_id else None,
                                  dir=None if "WANDB_DIR" in os.environ else str(run_dir))  # beside the run
        except wandb.errors.Error as e:
            raise ValueError(f"W&B could not start a run in project {project!r}: {e}; log in with `wandb login`, "
                             f"or set WANDB_MODE=offline (upload later with `wandb sync`)") from e
        self.run_id = self.run.id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Trackers:
    """Every tracker of a run behind one `log`; none at all is fine. Closes them on leaving a `with` block."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def state(self) -> dict:
        """What a checkpoint keeps so that a resumed run goes on logging to the same W&B run."""
        return {"wandb_run_id": t.run_id for t in self.trackers if isinstance(t, WandbTracker)}

    def close(self, failed: bool = False) -> None:
        for tracker in self.trackers:
            tracker.close(failed)
        self.trackers = []

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.close(failed=kind is not None)


def open_trackers(run_dir, *, tensorboard: bool = False, wandb: str | None = None, config: dict | None = None,
                  start_step: int = 0, saved: dict | None = None, main: bool = True) -> Trackers:
    """The trackers asked for (none on the other processes of a torchrun job). `config` is logged once;
    `saved` is `Trackers.state()` from the checkpoint a run resumes from."""
    if not main:
        return Trackers([])
    require(tensorboard, wandb)
    run_dir, config, saved = Path(run_dir), config or {}, saved or {}
    trackers: list[Tracker] = []
    try:
        if tensorboard:
            trackers.append(TensorBoardTracker(run_dir / "tensorboard", config, start_step))
        if wandb:
            trackers.append(WandbTracker(wandb, run_dir, config, saved.get("wandb_run_id")))
    except BaseException:
        Trackers(trackers).close(failed=True)
        raise
    return Trackers(trackers)
