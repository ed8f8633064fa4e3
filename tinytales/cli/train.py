"""`tinytales train` and `tinytales plot`."""
from __future__ import annotations

import inspect
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import console, print_json, user_errors


# Flags not generated from TrainConfig: the command's own, and one per setting kept from the command line
OWN_FLAGS = {"model", "progress", "plot"}


def _train_flags() -> list[inspect.Parameter]:
    """One --flag per TrainConfig setting, with its help and default, so that no setting is restated by hand."""
    from ..config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig.__dataclass_fields__
    flags = []
    for f in fields(TrainConfig):
        if f.name in OWN_FLAGS:
            continue
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
        default = defaults[f.name].default
        names = [f"--{f.name.replace('_', '-')}"]
        if base is bool:
            names = [f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"]
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {'none' if default in (None, '') else default})"
        option = typer.Option(None, *names, help=help_text, show_default=False)
        flags.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                       annotation=Optional[base]))
    return flags


def train(config: Optional[Path] = None, dropout: Optional[float] = None, model_setting: Optional[list[str]] = None,
          as_json: bool = False, **settings):
    """Train a model from scratch, resume a run, or fine-tune a model on new stories.

    Every training setting has a flag (shown below with its built-in default; a --preset or --config file
    changes those defaults, and a resumed run starts from its own settings). Model settings come from the
    preset, the config file's `model:` mapping, or --model-setting KEY=VALUE.

    Examples:

      tinytales train --preset tiny --data stories.jsonl --out runs/tiny

      tinytales train --config configs/bundled.yaml --resume auto

      tinytales train --init-from bundled --data my_stories.txt --out runs/mine --epochs 2 --lr 3e-4

      tinytales train --data stories.jsonl --model-setting n_layer=6 --model-setting qk_norm=true
    """
    from ..config import TrainConfig
    from ..train import train as run_training

    model = _model_settings(model_setting or [])
    if dropout is not None:
        model["dropout"] = dropout
    preset = settings.pop("preset", None)
    run = TrainConfig.from_sources(preset=preset, config_file=str(config) if config else None, model=model or None,
                                   **settings)
    run.progress = sys.stdout.isatty() and not as_json
    result = run_training(run)
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


def _model_settings(pairs: list[str]) -> dict:
    """KEY=VALUE pairs of GPTConfig settings, the values read as YAML (6, 0.1, true, rmsnorm)."""
    import yaml

    model = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-setting takes KEY=VALUE, e.g. --model-setting n_layer=6; got {pair!r}")
        model[key.strip()] = yaml.safe_load(value)
    return model


train.__signature__ = inspect.Signature([
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                      default=typer.Option(None, "--config", help="YAML/JSON file of settings (flags override it; "
                                                                  "default: none).")),
    inspect.Parameter("dropout", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[float],
                      default=typer.Option(None, help="Dropout probability (a model setting; default: the preset's "
                                                      "or config file's, else 0).")),
    inspect.Parameter("model_setting", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]],
                      default=typer.Option(None, "--model-setting", help="A model setting KEY=VALUE (GPTConfig: "
                                           "n_layer, n_embd, n_head, qk_norm, ...); repeat for several (default: "
                                           "the preset's or config file's).")),
    *_train_flags(),
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--json", help="Print the result as JSON.")),
])
app.command("train")(user_errors(train))


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
    out: Optional[Path] = typer.Option(None, help="PNG to write (default: RUN/loss.png)."),
):
    """Plot a run's loss and gradient-norm curves to a PNG.

    Example: tinytales plot runs/tiny
    """
    from ..plot import plot_run

    path = plot_run(run, out)
    console.print(f"wrote {path}")
