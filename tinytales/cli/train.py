"""`tinytales train` and `tinytales plot`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import console, print_json, user_errors


@app.command()
@user_errors
def train(
    data: Optional[str] = typer.Option(None, help="Training stories: file, folder, glob, prepared folder or hf:DATASET."),
    val_data: Optional[str] = typer.Option(None, help="Validation stories (same kinds of source)."),
    out: Optional[str] = typer.Option(None, help="Run directory (checkpoints, history, final model)."),
    preset: Optional[str] = typer.Option(None, help="Model + training preset: story (the recommended recipe), tiny, seed, micro, small."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings (flags override it)."),
    tokenizer: Optional[str] = typer.Option(None, help="gpt2, a tokenizer.json or a model dir; default: train one."),
    vocab_size: Optional[int] = typer.Option(None, help="Vocabulary of the tokenizer trained when none is given."),
    mode: Optional[str] = typer.Option(None, help="packed (fixed-length, fast) or padded (dynamic padding)."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the data."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps (overrides --epochs)."),
    minutes: Optional[float] = typer.Option(None, help="Train for this many minutes of wall-clock time: the schedule "
                                                       "follows the budget used (overrides --epochs/--max-steps)."),
    optimizer: Optional[str] = typer.Option(None, help="muon (Muon for weight matrices + AdamW) or adamw."),
    muon_lr: Optional[float] = typer.Option(None, help="Muon's peak learning rate (with --optimizer muon)."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per micro-batch."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    schedule: Optional[str] = typer.Option(None, help="cosine, wsd or constant (after warmup)."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warmup steps."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (matrices only)."),
    dropout: Optional[float] = typer.Option(None, help="Dropout probability."),
    precision: Optional[str] = typer.Option(None, help="auto, fp32, bf16 or fp16."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:1 ..."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints."),
    eval_every: Optional[int] = typer.Option(None, help="Steps between validation evaluations."),
    keep_last: Optional[int] = typer.Option(None, help="Checkpoints to keep."),
    seed: Optional[int] = typer.Option(None, help="Random seed (weights, data order, dropout)."),
    resume: Optional[str] = typer.Option(None, help="A checkpoint, a run directory, or 'auto' (newest in --out)."),
    init_from: Optional[str] = typer.Option(None, help="Fine-tune: start from this model's weights and tokenizer."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (torch.set_num_threads)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Train a model from scratch, resume a run, or fine-tune a model on new stories.

    Examples:

      tinytales train --preset tiny --data stories.jsonl --out runs/tiny

      tinytales train --config configs/bundled.yaml --resume auto

      tinytales train --init-from runs/base/model --data my_stories.txt --out runs/mine --epochs 2 --lr 3e-4
    """
    from ..train import TrainConfig, train as run_training

    overrides = dict(data=data, val_data=val_data, out=out, tokenizer=tokenizer, vocab_size=vocab_size, mode=mode,
                     epochs=epochs, max_steps=max_steps, minutes=minutes, optimizer=optimizer, muon_lr=muon_lr, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                     schedule=schedule, warmup_steps=warmup_steps, weight_decay=weight_decay, precision=precision,
                     device=device, checkpoint_every=checkpoint_every, eval_every=eval_every, keep_last=keep_last,
                     seed=seed, resume=resume, init_from=init_from, threads=threads, compile=compile,
                     model={"dropout": dropout} if dropout is not None else None)
    if (max_steps is not None or minutes is not None) and epochs is None:
        overrides["epochs"] = None
    settings = TrainConfig.from_sources(preset=preset, config_file=str(config) if config else None, **overrides)
    settings.progress = sys.stdout.isatty() and not as_json
    result = run_training(settings)
    if result.model_dir is None:  # one of torchrun's other processes: the first one reports
        return
    summary = {"run_dir": str(result.run_dir), "model_dir": str(result.model_dir), "steps": result.steps,
               "final_loss": result.final_loss, "val_loss": result.val_loss, "epochs": result.history["epochs"]}
    if as_json:
        print_json(summary)
        return
    _print_epoch_table(result.history["epochs"])
    console.print(f"model saved to [bold]{result.model_dir}[/]; curves in {result.run_dir / 'loss.png'}")
    console.print(f'try it: tinytales generate "Once upon a time" --model {result.model_dir}')


def _print_epoch_table(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="Training summary")
    for name in ("epoch", "loss", "val loss", "grad norm", "minutes"):
        table.add_column(name, justify="right")
    for row in rows:
        val = f"{row['val_loss']:.4f}" if row["val_loss"] is not None else "-"
        table.add_row(str(row["epoch"]), f"{row['loss']:.4f}", val, f"{row['grad_norm']:.3f}", f"{row['minutes']:.1f}")
    console.print(table)


@app.command()
@user_errors
def plot(
    run: Path = typer.Argument(..., help="A run directory (the --out of tinytales train)."),
    out: Optional[Path] = typer.Option(None, help="PNG to write (default RUN/loss.png)."),
):
    """Plot a run's loss and gradient-norm curves to a PNG.

    Example: tinytales plot runs/tiny
    """
    from ..plot import plot_run

    path = plot_run(run, out)
    console.print(f"wrote {path}")
