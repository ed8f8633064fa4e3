"""The training loop: AdamW, warmup + cosine/WSD schedule, clipping, accumulation, mixed precision,
periodic evaluation, atomic checkpoints and exact resume, optionally over several processes (torchrun).

`train(TrainConfig(...))` is what `tinytales train` calls (the settings and the schedule: tinytales.config).

Longer than 500 lines because the loop needs its helpers at hand: processes and precision, building the
tokenizer, model and optimizers, checkpoints with exact resume, evaluation, and the progress reporter.
"""
from __future__ import annotations

import gc
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from . import trackers as tracking
from .config import TrainConfig, learning_rate
from .model import GPT, GPTConfig
from .core import IGNORE_INDEX, remove_stale_temporaries, resolve_device, write_json
from .formats import load_model, resolve_tokenizer, save_model
from .optim import Muon, Optimizers
from .allocator import tune_allocator

# ---------------------------------------------------------------------------------------------
# Environment: device, precision, processes


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run started the process group, so it ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Single process, or one of torchrun's processes (NCCL on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device_type = resolve_device(config.device).type
    if world_size > 1:
        import torch.distributed as dist

        # torch.distributed.nn's functions take `group=group.WORLD` as a default argument, evaluated when
        # the module is first imported (DDP imports it): imported after init_process_group they keep the
        # group alive for good, destroy_process_group can no longer stop gloo's worker threads, and one
        # that frees a tensor after Python began shutting down aborts the process at exit.
        from torch.distributed import nn as _distributed_nn  # noqa: F401

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        owns_group = not dist.is_initialized()
        if owns_group:
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        device = torch.device(f"cuda:{local_rank}") if device_type == "cuda" else torch.device("cpu")
        if device_type == "cuda":
            torch.cuda.set_device(device)
        return Runtime(device, rank, world_size, local_rank, owns_group)
    return Runtime(resolve_device(config.device))


def end_runtime(runtime: Runtime) -> None:
    """All processes finish together; a process group this run started is shut down while Python still runs.

    Destroying it joins gloo's worker threads, so none is left to free a tensor (which takes the GIL)
    during interpreter shutdown, where it would abort the process (torchrun then reports the run failed).
    """
    import torch.distributed as dist

    gc.collect()  # a DistributedDataParallel wrapper caught in a reference cycle still holds the group
    dist.barrier()
    if runtime.owns_group:
        dist.destroy_process_group()


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # CPUs with native bf16 (AVX-512 BF16, AMX) train about twice as fast under bf16 autocast
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# RNG state (for exact resume)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), None))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Building the pieces


def build_tokenizer(config: TrainConfig, runtime: Runtime):
    from .stories import train_tokenizer
    from .tokenizer import load_tokenizer

    out = Path(config.out)
    if config.tokenizer:
        return resolve_tokenizer(config.tokenizer)
    if config.init_from:  # fine-tuning keeps the model's own tokenizer
        return load_model(config.init_from).tokenizer
    saved = out / "tokenizer"
    if (saved / "tokenizer.json").exists():  # trained by an earlier (or another) process of this run
        return load_tokenizer(saved)
    if runtime.world_size > 1:
        raise ValueError("with several processes, pass --tokenizer (train one first with `tinytales train-tokenizer`)")
    return train_tokenizer(config.data, config.vocab_size, saved)


def build_model(config: TrainConfig, tokenizer, device) -> tuple[GPT, dict]:
    """A fresh model sized for the tokenizer, or the weights of --init-from (fine-tuning)."""
    if config.init_from:
        loaded = load_model(config.init_from)
        if loaded.tokenizer.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"--init-from {config.init_from} uses a tokenizer of {loaded.tokenizer.vocab_size} tokens "
                             f"but training uses one of {tokenizer.vocab_size}; drop --tokenizer to use the model's own")
        model = loaded.model.float()
        if config.model:
            dropout = config.model.get("dropout")
            loaded_config = model.config.to_dict()
            others = sorted(k for k, v in config.model.items() if k != "dropout" and loaded_config.get(k) != v)
            if others:
                raise ValueError(f"--init-from keeps the model's architecture; cannot change {others} "
                                 f"(drop those settings or the preset)")
            if dropout is not None:
                for module in model.modules():  # GPT, attention and MLP keep their dropout rate as a float
                    if isinstance(getattr(module, "dropout", None), (int, float)):
                        module.dropout = dropout
                model.config.dropout = dropout
        return model.to(device), loaded.card
    settings = dict(config.model)
    settings.setdefault("vocab_size", 64 * math.ceil(tokenizer.vocab_size / 64))  # padded: faster matmuls
    model_config = GPTConfig(**settings)
    if model_config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model vocab_size {model_config.vocab_size} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size}")
    return GPT(model_config).to(device), {}


def make_optimizer(model: GPT, config: TrainConfig, device, kind: str | None = None):
    """AdamW over every parameter (decay on matrices only), or Muon for the blocks' weight matrices with
    AdamW for embeddings, output layer, norms and biases, as nanochat and modded-nanogpt train.

    Each parameter group carries its peak learning rate as `base_lr`; the schedule scales it.
    """
    kind = kind or config.optimizer
    fused = device.type in ("cuda", "cpu")
    betas = (config.beta1, config.beta2)
    if kind == "adamw":
        groups = model.param_groups(config.weight_decay)
        for group in groups:
            group["base_lr"] = config.lr
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas, fused=fused)
    matrices = [p for p in model.blocks.parameters() if p.requires_grad and p.dim() == 2]
    chosen = {id(p) for p in matrices}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    adam_groups = [{"params": [p for p in others if p.dim() >= 2], "weight_decay": 0.0, "base_lr": config.lr},
                   {"params": [p for p in others if p.dim() < 2], "weight_decay": 0.0, "base_lr": config.lr}]
    # decoupled decay shrinks weights by lr * weight_decay per step: scaled so that Muon's matrices shrink
    # as fast as under AdamW at the same weight_decay
    muon = Muon([{"params": matrices, "base_lr": config.muon_lr}], lr=config.muon_lr,
                weight_decay=config.weight_decay * config.lr / config.muon_lr, momentum=config.muon_momentum)
    adam = torch.optim.AdamW([g for g in adam_groups if g["params"]], lr=config.lr, betas=betas, fused=fused)
    return Optimizers(muon=muon, adamw=adam)


def saved_optimizer_kind(state: dict) -> str:
    """Which optimizer wrote a checkpoint's optimizer state (a run resumes with the optimizer it began with)."""
    return "muon" if "muon" in state else "adamw"


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path | None
    steps: int
    final_loss: float
    val_loss: float | None
    history: dict
    model: GPT | None = None


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume, or fine-tune) a model; returns where the model and history went."""
    from .batches import make_batches

    resolve_device(config.device)  # a device this machine lacks is the first thing said, before any work
    tracking.require(config.tensorboard, config.wandb)  # so is a tracker's missing package
    if not config.data:
        raise ValueError("no training data: pass --data (a file, folder, glob, prepared folder or hf:dataset)")
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file; pass a directory for the run (it is created if missing)")
    if config.threads:
        torch.set_num_threads(config.threads)
    tune_allocator()
    runtime = setup_runtime(config)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for folder in (run_dir, run_dir / ckpt.CHECKPOINTS):  # what a killed run left half written
            for stale in remove_stale_temporaries(folder):
                print(f"removed {stale}, left by a run that was stopped while writing", file=sys.stderr)
    tokenizer = build_tokenizer(config, runtime)
    resume_from = ckpt.resolve_resume(config.resume, run_dir)
    if resume_from is not None:
        loaded = load_model(resume_from)
        # the run's own provenance, not the checkpoint's card, describes what it started from
        model, init_card = loaded.model.float().to(runtime.device), loaded.card.get("training", {}).get("base_model_card")
        model.train()
        trainer_state, saved_state = ckpt.load_trainer_state(resume_from)
    else:
        torch.manual_seed(config.seed)
        model, init_card = build_model(config, tokenizer, runtime.device)
        trainer_state, saved_state = None, None
    model.train()

    seq_len = model.config.context_length
    batches = make_batches(config.data, tokenizer, mode=config.mode, batch_size=config.batch_size, seq_len=seq_len,
                           seed=config.seed, rank=runtime.rank, world_size=runtime.world_size,
                           text_field=config.text_field)
    total_steps = _total_steps(config, batches, runtime)
    budget = config.minutes * 60 if config.minutes else None
    kind = saved_optimizer_kind(trainer_state["optimizer"]) if trainer_state is not None else config.optimizer
    optimizer = make_optimizer(model, config, runtime.device, kind)
    precision = resolve_precision(config, runtime.device)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=precision == "fp16")

    step, history = 0, {"steps": [], "evals": [], "epochs": []}
    if trainer_state is not None:
        optimizer.load_state_dict(trainer_state["optimizer"])
        for group in optimizer.param_groups:  # checkpoints from before per-group learning rates
            group.setdefault("base_lr", config.lr)
        scaler.load_state_dict(trainer_state["scaler"])
        set_rng_state(trainer_state["rng"])
        batches.load_state_dict(rescale_data_state(saved_state["data"], saved_state.get("world_size", 1),
                                                   runtime.world_size))
        step = saved_state["step"]
        history = saved_state["history"]

    if runtime.rank > 0:  # own dropout masks per process (rank 0 keeps the exactly resumable stream)
        torch.manual_seed(config.seed + 1000 * runtime.rank + step)
    ddp_model = model
    if runtime.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None)
    forward = torch.compile(ddp_model) if config.compile else ddp_model

    card_base = {"training": {"data": config.data, "preset": config.preset, "init_from": config.init_from,
                              "ingredients": _ingredients_share(config.data),
                              "base_model_card": init_card or None}}
    run_info = {"config": asdict(config), "model": model.config.to_dict(), "total_steps": total_steps,
                "minutes": config.minutes, "optimizer": kind, "precision": precision, "world_size": runtime.world_size}
    if runtime.is_main:
        write_json(run_dir / "run.json", run_info)
    # before the clock starts: starting a W&B run takes a second, not to be taken from a --minutes budget
    trackers = tracking.open_trackers(run_dir, tensorboard=config.tensorboard, wandb=config.wandb, config=run_info,
                                      start_step=step, saved=saved_state.get("trackers") if saved_state else None,
                                      main=runtime.is_main)

    reporter = _Reporter(config, total_steps or 0, step, enabled=config.progress, main=runtime.is_main)
    data_iter = iter(batches)
    tokens_per_step = config.batch_size * seq_len * config.grad_accum * runtime.world_size
    elapsed_before = history["steps"][-1]["elapsed"] if history["steps"] else 0.0
    start_time = time.perf_counter()
    epoch_acc = _EpochAccumulator(history, batches.epoch, saved_state.get("epoch_progress") if saved_state else None)
    last_loss, val_loss = float("nan"), None
    def budget_used() -> float | None:
        return None if budget is None else (elapsed_before + time.perf_counter() - start_time) / budget

    finished = step >= total_steps if budget is None else budget_used() >= 1
    with reporter, trackers:
        while not finished:
            t0 = time.perf_counter()
            lr = learning_rate(step, total_steps, config, budget_used())
            factor = lr / config.lr
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            micro = [next(data_iter) for _ in range(config.grad_accum)]
            scored = sum(int((b.targets != IGNORE_INDEX).sum()) for b in micro)
            loss_sum = torch.zeros((), device=runtime.device)
            for i, batch in enumerate(micro):
                inputs, targets = batch.inputs.to(runtime.device), batch.targets.to(runtime.device)
                mask = batch.attention_mask.to(runtime.device) if batch.attention_mask is not None else None
                sync = i == len(micro) - 1 or runtime.world_size == 1
                with (nullcontext() if sync else ddp_model.no_sync()), autocast_context(precision, runtime.device):
                    _, loss = forward(inputs, targets, attention_mask=mask)
                    # weight by scored tokens so accumulated (and padded) batches average per token
                    weighted = loss * (int((batch.targets != IGNORE_INDEX).sum()) / max(scored, 1))
                scaler.scale(weighted).backward()
                loss_sum += weighted.detach()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            last_loss = _mean_across_ranks(loss_sum, runtime).item()
            # the same values on every process (all-reduced loss, all-reduced gradients): they all stop here.
            # A non-finite gradient norm has already spoilt the weights (fp16's scaler skips such steps itself)
            bad = (not math.isfinite(last_loss) and f"the loss became {last_loss}") or (
                not scaler.is_enabled() and not math.isfinite(float(grad_norm))
                and f"the gradient norm became {float(grad_norm)}")
            if bad:
                kept = ckpt.list_checkpoints(run_dir)
                raise ValueError(
                    f"{bad} at step {step}: training diverged; lower --lr (now {config.lr:g}) "
                    f"or --grad-clip and start again"
                    + (f" or --resume auto from the last good checkpoint, {kept[-1]}" if kept else "")
                    + "; nothing was saved after the non-finite loss")
            elapsed = elapsed_before + time.perf_counter() - start_time
            # every process stops after the same step (rank 0's clock decides under a time budget)
            finished = step >= total_steps if budget is None else _all_agree(elapsed >= budget, runtime)
            record = {"step": step, "loss": last_loss, "grad_norm": float(grad_norm), "lr": lr,
                      "tokens_per_s": tokens_per_step / max(time.perf_counter() - t0, 1e-9),
                      "elapsed": elapsed, "epoch": batches.epoch, "tokens": step * tokens_per_step}
            if step % config.log_every == 0 or finished or step == 1:
                history["steps"].append(record)
                if runtime.is_main:  # lets `tinytales plot` follow a running job (no fsync: rewritten often)
                    write_json(run_dir / "history.json", history, sync=False)
                trackers.log(step, tracking.train_metrics(record))
            epoch_acc.add(record)
            reporter.update(step, record, None if budget is None else int(step / max(elapsed / budget, 1e-9)))

            epoch_ended = batches.epoch != epoch_acc.epoch
            if config.val_data and (step % config.eval_every == 0 or finished or epoch_ended):
                val_loss = estimate_val_loss(model, config, tokenizer, seq_len, precision, runtime)
                history["evals"].append({"step": step, "val_loss": val_loss, "elapsed": elapsed})
                trackers.log(step, {tracking.VAL_LOSS: val_loss})
                reporter.note(f"step {step}: val loss {val_loss:.4f}")
            if epoch_ended:
                row = epoch_acc.close(val_loss, elapsed, batches.epoch)
                reporter.note(_format_epoch(row))
            if step % config.checkpoint_every == 0 or epoch_ended or finished:
                if runtime.is_main:
                    _save(run_dir, step, model, tokenizer, optimizer, scaler, batches, history, config, card_base,
                          epoch_acc, trackers.state())
                    write_json(run_dir / "history.json", history)
                    reporter.note(f"step {step}: checkpoint written to {ckpt.checkpoint_dir(run_dir, step)}")

    if step and epoch_acc.steps:  # a partial last epoch still gets its row
        row = epoch_acc.close(val_loss, history["steps"][-1]["elapsed"] if history["steps"] else 0.0, batches.epoch)
        reporter.note(_format_epoch(row))
    model_dir = None
    if runtime.is_main:
        write_json(run_dir / "history.json", history)
        card = _card(card_base, config, model, step, history, val_loss, tokens_per_step, runtime.device.type)
        model_dir = save_model(model, tokenizer, run_dir / "model", card=card,
                               dtype=getattr(torch, config.save_dtype))
        if config.plot and history["steps"]:
            from .plot import plot_run

            plot_run(run_dir)
    if runtime.world_size > 1:
        del forward, ddp_model  # DDP's reducer holds the process group
        end_runtime(runtime)
    return TrainResult(run_dir, model_dir, step, last_loss, val_loss, history, model)


def _total_steps(config: TrainConfig, batches, runtime: Runtime) -> int | None:
    if config.minutes:
        return None  # the time budget decides
    if config.max_steps:
        return config.max_steps
    per_epoch = batches.batches_per_epoch
    if per_epoch is None:
        raise ValueError("a streamed dataset has no known length: pass --max-steps instead of --epochs")
    return max(1, int(config.epochs * per_epoch / config.grad_accum))


def rescale_data_state(state: dict, old_world: int, new_world: int) -> dict:
    """Resume with a different number of processes at the same place in the data.

    Each process's loader counts its own batches; globally that is batch * world_size batches of the
    epoch. With a new process count the run continues from the same global position, rounded down
    to a whole batch (a few batches may be seen twice, none skipped). Streamed sources count stories
    per process and are rescaled the same way.
    """
    if old_world == new_world:
        return state
    state = dict(state)
    for key in ("batch", "documents"):
        if key in state:
            state[key] = state[key] * old_world // new_world
    if "leftover" in state:
        state["leftover"] = []
    return state


def _all_agree(flag: bool, runtime: Runtime) -> bool:
    """Rank 0's flag, on every process."""
    if runtime.world_size == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def _mean_across_ranks(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.world_size > 1:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        value /= runtime.world_size
    return value


@torch.no_grad()
def estimate_val_loss(model, config: TrainConfig, tokenizer, seq_len: int, precision: str, runtime: Runtime) -> float:
    """Mean loss over the same first `eval_batches` batches of the validation data each time."""
    from .batches import make_batches

    was_training = model.training
    model.eval()
    batches = make_batches(config.val_data, tokenizer, mode="packed", batch_size=config.batch_size, seq_len=seq_len,
                           seed=0, rank=runtime.rank, world_size=runtime.world_size, text_field=config.text_field)
    count = min(config.eval_batches, batches.batches_per_epoch or config.eval_batches)
    total = torch.zeros((), device=runtime.device)
    for _, batch in zip(range(count), batches):
        with autocast_context(precision, runtime.device):
            _, loss = model(batch.inputs.to(runtime.device), batch.targets.to(runtime.device))
        total += loss.float()
    model.train(was_training)
    return _mean_across_ranks(total / max(count, 1), runtime).item()


def _save(run_dir, step, model, tokenizer, optimizer, scaler, batches, history, config, card_base, epoch_acc,
          tracker_state):
    trainer_state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state()}
    state = {"step": step, "data": batches.state_dict(), "history": history, "world_size": batches.world_size,
             "epoch_progress": epoch_acc.state_dict(), "trackers": tracker_state}
    card = {**card_base, "training": {**card_base["training"], "steps": step}}
    ckpt.save_checkpoint(run_dir, step, model, tokenizer, trainer_state, state, card, keep_last=config.keep_last)


def _ingredients_share(data) -> float:
    """The share of training stories written after their ingredients (a prepared folder records it)."""
    from .batches import is_prepared, read_meta

    return read_meta(data).get("ingredients", 0.0) if data and is_prepared(data) else 0.0


def _card(card_base, config, model, step, history, val_loss, tokens_per_step, device_type) -> dict:
    elapsed = history["steps"][-1]["elapsed"] if history["steps"] else 0.0
    training = {**card_base["training"], "steps": step, "tokens_seen": step * tokens_per_step,
                "device": device_type, "compute_hours": round(elapsed / 3600, 4),
                "final_train_loss": history["steps"][-1]["loss"] if history["steps"] else None,
                "val_loss": val_loss, "val_data": config.val_data,
                "settings": {k: v for k, v in asdict(config).items() if k not in ("progress", "plot")}}
    return {"parameters": model.num_params(), "parameters_without_embeddings": model.num_params(embeddings=False),
            "training": training}


class _EpochAccumulator:
    """Per-epoch means of loss and grad norm, for the epoch table."""

    def __init__(self, history: dict, epoch: int, saved: dict | None = None):
        self.history, self.epoch = history, epoch
        self.loss = self.grad = 0.0
        self.steps = 0
        self.started = history["steps"][-1]["elapsed"] if history["steps"] else 0.0
        if saved and saved.get("epoch") == epoch:  # resumed mid-epoch: its row still covers the whole epoch
            self.loss, self.grad, self.steps, self.started = saved["loss"], saved["grad"], saved["steps"], saved["started"]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": self.loss, "grad": self.grad, "steps": self.steps, "started": self.started}

    def add(self, record: dict):
        self.loss += record["loss"]
        self.grad += record["grad_norm"]
        self.steps += 1

    def close(self, val_loss, elapsed, next_epoch) -> dict:
        row = {"epoch": self.epoch + 1, "loss": self.loss / max(self.steps, 1), "val_loss": val_loss,
               "grad_norm": self.grad / max(self.steps, 1), "minutes": (elapsed - self.started) / 60,
               "steps": self.steps}
        self.history["epochs"].append(row)
        self.epoch, self.loss, self.grad, self.steps, self.started = next_epoch, 0.0, 0.0, 0, elapsed
        return row


def _format_epoch(row: dict) -> str:
    val = f"{row['val_loss']:.4f}" if row["val_loss"] is not None else "-"
    return (f"epoch {row['epoch']}: loss {row['loss']:.4f}, val loss {val}, grad norm {row['grad_norm']:.3f}, "
            f"{row['minutes']:.1f} min")


class _Reporter:
    """How a run shows its progress: a rich progress bar on a terminal; elsewhere (a log file, CI, a notebook)
    plain flushed lines on stderr every `log_every` steps, with evaluations and checkpoints; nothing on the
    other processes of a torchrun job."""

    def __init__(self, config: TrainConfig, total: int, start: int, enabled: bool, main: bool = True):
        self.bar = enabled and main and sys.stdout.isatty()
        self.lines = main and not self.bar
        self.total, self.start, self.log_every = total, start, config.log_every
        self.progress = None
        self.started = time.perf_counter()

    def __enter__(self):
        if self.bar:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                                     TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, completed=self.start, loss="-", speed="-")
        return self

    def update(self, step: int, record: dict, total: int | None = None):
        """total: the estimated number of steps, under a time budget."""
        total = max(total or self.total, step)
        if self.progress:
            self.progress.update(self.task, total=total, completed=step, loss=f"{record['loss']:.3f}",
                                 speed=f"{record['tokens_per_s']:,.0f}")
        elif self.lines and (step % self.log_every == 0 or step == self.start + 1 or step == total):
            done = step - self.start
            seconds = time.perf_counter() - self.started
            eta = seconds / max(done, 1) * max(total - step, 0)
            self.note(f"step {step}/{total}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                      f"{record['tokens_per_s']:,.0f} tok/s  elapsed {_clock(record['elapsed'])}  eta {_clock(eta)}")

    def note(self, message: str):
        if self.progress:
            self.progress.console.print(message)
        elif self.lines:
            print(message, file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
