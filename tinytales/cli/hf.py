"""`tinytales export` and `tinytales import`: Hugging Face model directories; `export --format llama2c` too."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import console, model_option, print_json, user_errors

DTYPES = ("float32", "float16", "bfloat16")
FORMATS = ("hf", "llama2c")


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


@app.command()
@user_errors
def export(
    model: str = model_option(),
    format: str = typer.Option("hf", "--format", help="Output format: hf (a transformers model directory) or llama2c "
                                                       "(a .bin file for llama2.c's run.c, tokenizer.bin beside it)."),
    out: Path = typer.Option(..., "--out", help="hf: the directory to write (a model directory there is replaced); "
                                                "llama2c: the .bin file to write."),
    dtype: str = typer.Option("float32", help="Weight precision (hf): float32, float16 or bfloat16."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="llama2c: q8_0 writes llama2.c's version 2 "
                                                                    "(8-bit weights, for runq.c); default float32."),
    force: bool = typer.Option(False, "--force", help="Replace --out even when it is not a model directory "
                                                      "(llama2c: replace existing files)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Export a model for Hugging Face transformers (GPT-2 or Llama architecture, with its tokenizer), or for
    llama2.c (Llama-style models: RoPE, RMSNorm, SwiGLU, no biases).

    The hf folder is ready to upload to the Hugging Face Hub: a README.md model card (hub metadata, training
    data, parameters, bits per byte, how to use it) and a generation_config.json with the story defaults.

    Examples:

      tinytales export -m runs/tiny/model --format hf --out exported/tiny

    then in Python: AutoModelForCausalLM.from_pretrained("exported/tiny") and AutoTokenizer.from_pretrained(...);
    to share it, the hub's own CLI: hf upload USER/NAME exported/tiny

      tinytales export --format llama2c --out exported/stories.bin [--quantize q8_0]

    then in llama2.c: ./run exported/stories.bin -z exported/tokenizer.bin -t 0 -n 256 -i ""
    """
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "llama2c":
        return _export_llama2c(model, out, dtype, quantize, force, as_json)
    if quantize is not None:
        raise ValueError("--quantize applies to --format llama2c; for hf choose the precision with --dtype")
    torch_dtype = _torch_dtype(dtype)
    check_replaceable(out, force)
    from ..formats import load_model
    from ..formats.hf import export_hf
    from ..formats.native import read_config

    loaded = load_model(model)
    out_dir = export_hf(loaded, out, dtype=torch_dtype)
    hf = read_config(out_dir)
    summary = {"model": str(loaded.path), "out": str(out_dir), "architecture": hf["architectures"][0],
               "model_type": hf["model_type"], "dtype": dtype, "parameters": loaded.model.num_params(),
               "files": sorted(p.name for p in out_dir.iterdir())}
    if as_json:
        print_json(summary)
        return
    console.print(f"exported {loaded.path} as {summary['architecture']} to [bold]{out_dir}[/]")
    console.print(f'load it with: AutoModelForCausalLM.from_pretrained("{out_dir}") and '
                  f'AutoTokenizer.from_pretrained("{out_dir}")', highlight=False)
    console.print(f"upload it with the hub's CLI (after hf auth login): hf upload USER/NAME {out_dir}", highlight=False)


def _export_llama2c(model: Optional[str], out: Path, dtype: str, quantize: Optional[str], force: bool,
                    as_json: bool) -> None:
    if dtype != "float32":
        raise ValueError(f"--dtype {dtype} applies to --format hf; llama2c files are float32, or 8-bit with "
                         f"--quantize q8_0")
    from ..formats import load_model
    from ..formats.llama2c_export import export_llama2c

    loaded = load_model(model)
    summary = {"source": str(loaded.path), **export_llama2c(loaded, out, quantize=quantize, overwrite=force)}
    if as_json:
        print_json(summary)
        return
    program = "runq" if quantize else "run"
    console.print(f"exported {loaded.path} to [bold]{summary['model']}[/] ({summary['weights']}, "
                  f"{summary['bytes']:,} bytes) and {summary['tokenizer']}")
    console.print(f"run it in llama2.c: ./{program} {summary['model']} -z {summary['tokenizer']} -t 0 -n 256 -i \"\"",
                  highlight=False)


def check_replaceable(out: Path, force: bool) -> None:
    """--out is replaced whole: refuse a file, and a non-empty folder that is not a model directory (no
    config.json), unless --force, so that a mistyped path never deletes an unrelated folder's contents."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory to write")
    if out.is_dir() and not (out / "config.json").is_file() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is a non-empty folder that is not a model directory (no config.json); "
                         f"it would be replaced whole: choose another --out, or pass --force to replace it")


@app.command("import")
@user_errors
def import_(
    directory: Path = typer.Argument(..., help="A Hugging Face model directory (GPT-2 or Llama architecture)."),
    out: Path = typer.Option(..., "--out", help="TinyTales model directory to write (a model directory there is "
                                                "replaced)."),
    dtype: str = typer.Option("float32", help="Weight precision: float32, float16 or bfloat16."),
    force: bool = typer.Option(False, "--force", help="Replace --out even when it is not a model directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Import a Hugging Face GPT-2 or Llama model directory as a TinyTales model directory.

    Example:

      tinytales import exported/tiny --out models/tiny-again

    Other architectures (e.g. GPT-Neo) need no import: tinytales generate --model DIR runs them through transformers.
    """
    from ..formats.hf import import_hf

    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; pass a Hugging Face model directory")
    check_replaceable(out, force)
    loaded = import_hf(directory, out_dir=out, dtype=_torch_dtype(dtype))
    summary = {"source": str(directory), "out": str(loaded.path), "model_type": loaded.card["hf_model_type"],
               "dtype": dtype, "parameters": loaded.model.num_params(), "config": loaded.model.config.to_dict()}
    if as_json:
        print_json(summary)
        return
    console.print(f"imported {directory} ({summary['model_type']}, {summary['parameters']:,} parameters) "
                  f"to [bold]{loaded.path}[/]")
    console.print(f'try it: tinytales generate "Once upon a time" --model {loaded.path}', highlight=False)
