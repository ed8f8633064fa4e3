"""The `tinytales` command: a thin layer over the library's public functions.

Each command lives in its own module and registers itself on `app`.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="tinytales",
    help="Train a small GPT on children's stories and tell stories with it.\n\n"
         "Example: tinytales generate \"Once upon a time\"",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



def package_version() -> str:
    """The installed package's version (importlib.metadata), else the source tree's `tinytales.__version__`."""
    from importlib import metadata

    try:
        return metadata.version("tinytales")
    except metadata.PackageNotFoundError:  # run from a source tree that was never pip-installed
        from .. import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tinytales {package_version()}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    pass


# One module per group of commands; each does `@app.command()` on import.
COMMAND_MODULES = [
    "generate",
    "info",
    "train",
    "data",
    "evaluate",
    "hf",
    "serve",
    "bench",
]

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")


def main() -> None:
    app()
