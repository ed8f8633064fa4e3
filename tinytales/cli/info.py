"""`tinytales info`: what is inside a model."""
from __future__ import annotations

from typing import Optional

import typer

from . import app
from .common import TOKENIZER_HELP, console, load_for_cli, model_option, print_json, user_errors


def model_summary(loaded) -> dict:
    """What `tinytales info` shows: architecture, parameter counts, tokenizer and the model card."""
    from ..decoding import decoding_path

    model, tokenizer = loaded.model, loaded.tokenizer
    config = model.config
    architecture = config.to_dict()  # GPTConfig and TransformersConfig alike (tinytales.core.LanguageModel)
    parameters, without_embeddings = model.num_params(), model.num_params(embeddings=False)
    return {
        "path": str(loaded.path) if loaded.path else None,
        "architecture": architecture,
        "parameters": parameters,
        "parameters_without_embeddings": without_embeddings,
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "bos_id": tokenizer.bos_id},
        "decoding": decoding_path(model),
        "card": loaded.card or {},
    }


@app.command()
@user_errors
def info(
    model: str = model_option(),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Show a model's architecture, parameter counts, tokenizer and model card.

    Examples:

      tinytales info

      tinytales info -m runs/tiny/model --json
    """
    summary = model_summary(load_for_cli(model, tokenizer, "cpu"))
    if as_json:
        print_json(summary)
        return
    import json

    from rich.table import Table

    table = Table(title=f"model {summary['path'] or ''}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in summary["architecture"].items():
        table.add_row(key, str(value))
    table.add_section()
    table.add_row("parameters", f"{summary['parameters']:,}")
    if summary["parameters_without_embeddings"] is not None:
        table.add_row("without embeddings", f"{summary['parameters_without_embeddings']:,}")
    table.add_section()
    for key, value in summary["tokenizer"].items():
        table.add_row(f"tokenizer {key}", str(value))
    table.add_section()
    table.add_row("decoding", summary["decoding"])
    console.print(table)
    if summary["card"]:
        card = Table(title="model card (card.json)", show_header=False)
        card.add_column("", style="bold")
        card.add_column("")
        for key, value in summary["card"].items():
            card.add_row(key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        console.print(card)
    else:
        console.print("no model card (card.json is empty)")
