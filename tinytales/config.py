"""Every training setting (`TrainConfig`, each with the help text the command line shows), how settings
combine (preset, then a resumed run's own run.json, then a config file, then flags), and the
learning-rate schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from .presets import get_preset

SCHEDULES = ("cosine", "wsd", "constant")
OPTIMIZERS = ("adamw", "muon")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MODES = ("packed", "padded")


def setting(default=None, help: str = "", factory=None):
    """A TrainConfig field with the help text `tinytales train --help` shows."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    data: str = setting("", 'Training stories: file, folder, glob, prepared folder or hf:DATASET.')
    out: str = setting("runs/tinytales", 'Run directory (checkpoints, history, final model).')
    val_data: str | None = setting(None, 'Validation stories (same kinds of source).')
    text_field: str = setting("text", 'Field / column that holds the story text (JSON, parquet, hub datasets).')
    mode: str = setting("packed", 'packed (fixed-length, fast) or padded (dynamic padding).')
    preset: str | None = setting(None, 'Model + training preset: story (the recommended recipe), tiny, seed, micro, '
                                       'small.')
    model: dict = setting(factory=dict, help="GPTConfig settings: a config file's `model:` mapping, or "
                                             "--model-setting KEY=VALUE (and --dropout).")
    tokenizer: str | None = setting(None, 'gpt2, a tokenizer.json or a model dir; default: train one on the data.')
    vocab_size: int = setting(4096, 'Vocabulary of the tokenizer trained when none is given.')
    init_from: str | None = setting(None, "Fine-tune: start from this model's weights and tokenizer.")
    epochs: float | None = setting(1.0, 'Passes over the data.')
    max_steps: int | None = setting(None, 'Optimizer steps (overrides --epochs).')
    minutes: float | None = setting(None, 'Train for this many minutes of wall-clock time: the schedule follows the '
                                          'budget used (overrides --epochs/--max-steps).')
    batch_size: int = setting(16, 'Sequences per micro-batch.')
    grad_accum: int = setting(1, 'Micro-batches per optimizer step.')
    lr: float = setting(1e-3, 'Peak learning rate of AdamW (with Muon: embeddings, output layer, norms and biases).')
    optimizer: str = setting("adamw", "muon (Muon for the blocks' weight matrices + AdamW for the rest) or adamw.")
    muon_lr: float = setting(0.02, "Muon's peak learning rate (with --optimizer muon).")
    muon_momentum: float = setting(0.95, "Muon's momentum.")
    min_lr_ratio: float = setting(0.1, 'The schedule ends at this share of the peak learning rates.')
    warmup_steps: int = setting(100, 'Linear warmup steps.')
    schedule: str = setting("cosine", 'cosine, wsd or constant (after warmup).')
    decay_fraction: float = setting(0.2, 'WSD: share of the steps (or of the --minutes budget) spent decaying.')
    weight_decay: float = setting(0.1, 'Weight decay of AdamW on matrices.')
    beta1: float = setting(0.9, "AdamW's beta1.")
    beta2: float = setting(0.95, "AdamW's beta2.")
    grad_clip: float = setting(1.0, 'Clip the gradient norm to this.')
    precision: str = setting("auto", 'auto, fp32, bf16 or fp16.')
    device: str = setting("auto", 'auto (CUDA, else CPU), cpu, cuda, cuda:1 ...')
    seed: int = setting(1337, 'Random seed (weights, data order, dropout).')
    log_every: int = setting(10, 'Steps between history records.')
    eval_every: int = setting(200, 'Steps between validation evaluations.')
    eval_batches: int = setting(20, 'Validation batches per evaluation.')
    checkpoint_every: int = setting(500, 'Steps between checkpoints.')
    keep_last: int = setting(3, 'Checkpoints to keep.')
    resume: str | None = setting(None, "A checkpoint, a run directory, or 'auto' (newest in --out).")
    compile: bool = setting(False, 'torch.compile the model.')
    threads: int | None = setting(None, 'CPU threads (torch.set_num_threads).')
    save_dtype: str = setting("float16", 'Weights of the final model: float16, bfloat16 or float32 (checkpoints stay '
                                         'float32).')
    progress: bool = setting(True, 'A progress bar (on a terminal).')
    plot: bool = setting(True, 'Write loss.png at the end.')
    tensorboard: bool = setting(False, 'Also log the figures to TensorBoard event files in OUT/tensorboard '
                                       '(needs the tensorboard package).')
    wandb: str | None = setting(None, 'Also log the figures to this Weights & Biases project (needs the wandb '
                                      'package; `wandb login` first, or WANDB_MODE=offline).')

    def __post_init__(self):
        def need(ok, message):
            if not ok:
                raise ValueError(f"invalid training setting: {message}")

        need(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.minutes is None or self.minutes > 0, f"minutes must be > 0, got {self.minutes}")
        need(self.muon_lr > 0 and 0 <= self.muon_momentum < 1,
             f"muon_lr must be > 0 and muon_momentum in [0, 1), got {self.muon_lr} and {self.muon_momentum}")
        need(self.epochs is None or self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        need(self.max_steps is not None or self.epochs is not None or self.minutes is not None,
             "give epochs, max_steps or minutes")
        for name in ("batch_size", "grad_accum", "log_every", "eval_every", "checkpoint_every", "eval_batches",
                     "keep_last"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be an integer >= 1, got {value!r}")
        need(self.threads is None or (isinstance(self.threads, int) and not isinstance(self.threads, bool)
                                      and self.threads >= 1),
             f"threads must be >= 1 (CPU threads), got {self.threads!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(0 < self.decay_fraction <= 1, f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        need(self.save_dtype in ("float16", "bfloat16", "float32"), f"save_dtype must be float16, bfloat16 or float32")
        need(self.wandb is None or isinstance(self.wandb, str),
             f"wandb takes a W&B project name, got {self.wandb!r}")

    @classmethod
    def from_sources(cls, preset: str | None = None, config_file: str | None = None, **overrides) -> "TrainConfig":
        """Preset, then config file (YAML/JSON), then explicit overrides (None values are ignored).

        A new run with neither a preset, a config file's `model` nor `init_from` gets DEFAULT_PRESET (the
        recipe). A resumed run starts from the settings it was started with (its run.json), so a run begun
        before a default changed keeps its own; what is given now goes on top.
        """
        values: dict = {}
        model: dict = {}
        loaded = _read_config_file(config_file) if config_file else {}
        given = {**loaded, **{k: v for k, v in overrides.items() if v is not None}}
        saved = _saved_settings(given.get("out"), given.get("resume"))
        if saved is not None:
            model.update(saved.pop("model", None) or {})
            values.update(saved)
        elif preset is None and not loaded.get("model") and not given.get("init_from"):
            preset = DEFAULT_PRESET
        if preset:
            chosen = get_preset(preset)
            values.update(chosen.get("train", {}))
            model.update(chosen.get("model", {}))
            values["preset"] = preset
        if loaded:
            model.update(loaded.pop("model", {}) or {})
            values.update(loaded)
        model.update(overrides.pop("model", None) or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        from .model import GPTConfig

        model_keys = {f.name for f in fields(GPTConfig)}
        unknown_model = sorted(set(model) - model_keys)
        if unknown_model:  # now, not after the tokenizer has trained
            raise ValueError(f"unknown model settings {unknown_model} (from {config_file or 'arguments'}); "
                             f"known model settings are: {', '.join(sorted(model_keys))}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown} (from {config_file or 'arguments'}); "
                             f"known settings are: {', '.join(sorted(known))}")
        return cls(model=model, **values)


DEFAULT_PRESET = "story"  # what `tinytales train` trains when told nothing else (presets.py)


def _saved_settings(out, resume) -> dict | None:
    """The settings a run being resumed was started with (run.json), or None."""
    import json

    from .checkpoint import CHECKPOINTS

    if resume is None:
        return None
    path = Path(str(resume))
    if str(resume) == "auto":
        run_dir = Path(out) if out else None
    elif (path / CHECKPOINTS).is_dir():
        run_dir = path
    else:
        run_dir = path.parent.parent  # RUN/checkpoints/step-N
    if run_dir is None or not (run_dir / "run.json").is_file():
        return None
    try:
        saved = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    known = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in saved.items() if k in known and k not in ("resume", "progress", "plot")}


def _read_config_file(path: str) -> dict:
    import json

    import yaml

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} not found")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ValueError(f"config file {p} cannot be parsed: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} should hold a mapping of settings, got {type(data).__name__}")
    return data


def learning_rate(step: int, total_steps: int | None, config: TrainConfig, budget_used: float | None = None) -> float:
    """Linear warmup, then cosine decay (or WSD: stable, then a linear decay) to min_lr_ratio * lr.

    The schedule follows the share of steps done, or with a time budget (`minutes`) the share of the
    budget used, `budget_used` in [0, 1]: a run told to train for 10 minutes ends decayed whatever its speed.
    """
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if budget_used is None:
        warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    else:
        warmup = config.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    if config.schedule == "constant":
        return peak
    if budget_used is not None:  # the same shapes over the share of time used
        used = min(max(budget_used, 0.0), 1.0)
        if config.schedule == "wsd":
            start = 1.0 - config.decay_fraction
            return peak if used < start else peak + (floor - peak) * (used - start) / config.decay_fraction
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * used))
    if config.schedule == "wsd":
        decay_start = total_steps - max(1, int(config.decay_fraction * total_steps))
        if step < decay_start:
            return peak
        return peak + (floor - peak) * min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
