"""`tinytales prepare` and `tinytales train-tokenizer`."""
from __future__ import annotations

import time
from typing import Optional

import typer

from . import app
from .common import console, print_json, user_errors


@app.command()
@user_errors
def prepare(
    source: str = typer.Argument(..., help="Stories: file, folder, glob (.txt/.jsonl/.json/.parquet) or hf:DATASET."),
    tokenizer: str = typer.Option(..., help="gpt2, a tokenizer.json, or a folder holding one (a model folder; "
                                            "bundled: the bundled model's)."),
    out: str = typer.Option(..., help="Folder for the token shards and meta.json."),
    text_field: str = typer.Option("text", help="Field / column that holds the story text."),
    split: str = typer.Option("train", help="Split of a Hugging Face dataset."),
    shard_tokens: int = typer.Option(100_000_000, help="Tokens per shard file."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed record instead of skipping it."),
    ingredients: float = typer.Option(0.0, help="Share of whole stories written after their ingredients "
                                                "(Words:/Features:/Story:), for generate --words/--features."),
    ingredients_seed: int = typer.Option(0, help="Draws other stories and other words for the ingredients "
                                                 "(a second pass over the same stories)."),
    as_json: bool = typer.Option(False, "--json", help="Print meta.json's figures as JSON."),
):
    """Clean and tokenize stories once into memory-mapped token shards for training.

    Examples:

      tinytales prepare stories.jsonl --tokenizer gpt2 --out data/stories-gpt2

      tinytales prepare hf:roneneldan/TinyStories --tokenizer runs/tok4k --out data/tinystories-4k

      tinytales prepare stories.jsonl --tokenizer runs/tok4k --ingredients 0.5 --out data/stories-ingredients
    """
    from ..batches import prepare as prepare_tokens

    meta = prepare_tokens(source, tokenizer, out, shard_tokens=shard_tokens, text_field=text_field, strict=strict,
                          split=split, progress=None if not as_json else False,
                          ingredients=ingredients, ingredients_seed=ingredients_seed)
    if as_json:
        print_json({"out": out, **meta})
        return
    from rich.table import Table

    cleaning = meta["cleaning"]
    table = Table(title=f"prepared {out}", show_header=False)
    table.add_row("documents", f"{meta['documents']:,}")
    for reason, count in cleaning["dropped"].items():
        table.add_row(f"dropped: {reason}", f"{count:,}")
    for reason, count in cleaning["fixed"].items():
        table.add_row(f"fixed: {reason}", f"{count:,}")
    if meta["ingredients"]:
        table.add_row("with ingredients", f"{meta['ingredients']:.0%} of whole stories")
    table.add_row("tokens", f"{meta['tokens']:,} in {len(meta['shards'])} shard(s), {meta['dtype']}")
    table.add_row("text MB", f"{meta['bytes'] / 1e6:.2f}")
    table.add_row("MB/s", f"{meta['mb_per_s']:.2f}")
    console.print(table)
    console.print(f"train on it: tinytales train --data {out} --tokenizer {out}")


@app.command("train-tokenizer")
@user_errors
def train_tokenizer(
    source: str = typer.Argument(..., help="Stories: file, folder, glob (.txt/.jsonl/.json/.parquet) or hf:DATASET."),
    vocab_size: int = typer.Option(4096, help="Number of token ids (>= 258)."),
    out: str = typer.Option(..., help="Folder for tokenizer.json."),
    max_documents: Optional[int] = typer.Option(None, help="Use at most this many stories (default: all)."),
    text_field: str = typer.Option("text", help="Field / column that holds the story text."),
    split: str = typer.Option("train", help="Split of a Hugging Face dataset."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed record instead of skipping it."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Train a byte-level BPE tokenizer on stories (saved as OUT/tokenizer.json).

    Example:

      tinytales train-tokenizer stories.jsonl --vocab-size 4096 --out runs/tok4k --max-documents 100000
    """
    from ..stories import DataStats, train_tokenizer as train

    stats = DataStats()
    start = time.perf_counter()
    tokenizer = train(source, vocab_size, out, max_documents=max_documents, text_field=text_field, split=split,
                      strict=strict, stats=stats)
    result = {"out": out, "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "documents": stats.kept,
              "cleaning": stats.to_dict(), "seconds": round(time.perf_counter() - start, 3)}
    if as_json:
        print_json(result)
        return
    console.print(f"trained a tokenizer of {tokenizer.vocab_size:,} tokens on {stats.kept:,} stories "
                  f"in {result['seconds']:.1f}s: {out}/tokenizer.json")
    console.print(f"use it: tinytales prepare {source} --tokenizer {out} --out data/prepared")
