"""`tinytales bench`: the performance benchmarks of the repository's bench/ folder.

bench/ is not part of the installed package (it compares against transformers and reads ../shared),
so this command runs `python -m bench ...` in the checkout the package was installed from
(`pip install -e .`) and streams its output.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import app
from .common import user_errors

BENCHMARKS = ("all", "train", "generate", "data", "quality")


def bench_checkout() -> Path:
    """The repository root holding bench/ (next to the tinytales package of an editable install)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "__main__.py").exists():
        raise FileNotFoundError(f"the benchmarks are not installed with the package: no bench/ folder in {root}; "
                                f"run them from a git checkout of TinyTales (pip install -e . there, then "
                                f"`tinytales bench` or `python -m bench`)")
    return root


@app.command()
@user_errors
def bench(
    which: str = typer.Argument("all", help="all (the speed benchmarks), train, generate, data, or quality "
                                            "(bits per byte per training minute against transformers)."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run in seconds (tiny model, 1 iteration, 1 thread); "
                                                      "results go to bench/results/tmp unless --out."),
    threads: Optional[int] = typer.Option(None, help="Threads per measurement (default 2; --quick: 1)."),
    reps: Optional[int] = typer.Option(None, help="Processes / rounds per figure, median (default 3)."),
    configs: Optional[str] = typer.Option(None, help="Comma-separated: seed, 4k-d256, 4k-d128, tiny (default: "
                                                     "seed, 4k-d256, 4k-d128; --quick: tiny)."),
    steps: Optional[int] = typer.Option(None, help="Timed training steps per process (default: about 10-15 s of "
                                                   "work per configuration)."),
    no_levers: bool = typer.Option(False, "--no-levers", help="Skip the TinyTales-only lever measurements."),
    new_tokens: Optional[int] = typer.Option(None, help="New tokens per generation (default 200)."),
    minutes: Optional[List[float]] = typer.Option(None, "--minutes", help="quality: a training budget in minutes "
                                                                        "(repeat; default 5 and 10)."),
    out: Optional[Path] = typer.Option(None, help="Results folder (default bench/results)."),
    as_json: bool = typer.Option(False, "--json", help="Print all results as one JSON object at the end."),
):
    """Measure training, generation and data-preparation speed against transformers.

    Runs `python -m bench` in the repository checkout: about 15 minutes, on a quiet machine.

    Results: bench/results/*.json, summarised in docs/performance.md.

    Examples:

      tinytales bench --quick

      tinytales bench train --configs seed --reps 3

      tinytales bench generate --json

      tinytales bench quality --minutes 5 --minutes 10
    """
    if which not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {which!r}; choose one of {', '.join(BENCHMARKS)}")
    for name, value in (("--threads", threads), ("--reps", reps), ("--steps", steps), ("--new-tokens", new_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    root = bench_checkout()
    command = [sys.executable, "-m", "bench", which]
    command += ["--quick"] * quick + ["--no-levers"] * no_levers + ["--json"] * as_json
    for flag, value in (("--threads", threads), ("--reps", reps), ("--configs", configs), ("--steps", steps),
                        ("--new-tokens", new_tokens), ("--out", out.resolve() if out else None)):
        if value is not None:
            command += [flag, str(value)]
    if minutes:
        if min(minutes) <= 0:
            raise ValueError(f"--minutes must be > 0, got {minutes}")
        command += ["--minutes", *map(str, minutes)]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:  # streamed: a full run prints progress for minutes
        typer.echo(line, nl=False)
    if process.wait() != 0:
        raise typer.Exit(process.returncode)
