"""`tinytales eval` (loss, perplexity, bits per byte) and `tinytales compare` (side-by-side table)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import app
from ..defaults import describe_methods
from .common import DEVICE_HELP, MODEL_CHOICES, TOKENIZER_HELP, console, model_option, print_json, user_errors

TEXT_FIELD_HELP = "Field / column that holds the story text (JSON, parquet, hub datasets)."
SPLIT_HELP = "Split of a Hugging Face dataset (hf:NAME)."


@app.command("eval")
@user_errors
def eval_command(
    data: str = typer.Option(..., help="Stories to score: a file, folder or glob (.txt/.jsonl/.json/.parquet), or "
                                       "hf:DATASET (e.g. hf:roneneldan/TinyStories)."),
    model: str = model_option(),
    max_documents: Optional[int] = typer.Option(None, help="Score only the first N stories (default: all)."),
    stride: Optional[int] = typer.Option(None, help="Sliding-window stride for long stories (default: half the context)."),
    batch_size: int = typer.Option(16, help="Windows per forward pass."),
    text_field: str = typer.Option("text", help=TEXT_FIELD_HELP),
    split: str = typer.Option("validation", help=SPLIT_HELP),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
):
    """Score a model on held-out stories: loss, perplexity and bits per byte.

    Bits per byte compares models whatever their tokenizer.

    Examples:

      tinytales eval --data my_stories.jsonl

      tinytales eval -m runs/tiny/model --data hf:roneneldan/TinyStories --max-documents 500 --json
    """
    from ..evaluate import evaluate
    from .common import load_for_cli

    loaded = load_for_cli(model, tokenizer, device)
    result = evaluate(loaded.model, loaded.tokenizer, data, max_documents=max_documents, stride=stride,
                      batch_size=batch_size, text_field=text_field, split=split,
                      progress=not as_json and sys.stderr.isatty())
    if as_json:
        print_json({"model": str(loaded.path) if loaded.path else None, "data": data, **result.to_dict()})
        return
    from rich.table import Table

    table = Table(title=f"{loaded.path.name if loaded.path else 'bundled model'} on {data}")
    for column in ("loss", "perplexity", "bits/byte", "tokens", "bytes", "stories", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(f"{result.loss:.4f}", f"{result.perplexity:.3f}", f"{result.bits_per_byte:.4f}",
                  f"{result.tokens:,}", f"{result.bytes:,}", f"{result.documents:,}", f"{result.seconds:.1f}")
    console.print(table)


@app.command()
@user_errors
def compare(
    model: List[str] = model_option(f"A model to compare (repeat the option): {MODEL_CHOICES}.", many=True),
    prompt: List[str] = typer.Option(["Once upon a time"], "--prompt", help="A story opening (repeat)."),
    method: Optional[List[str]] = typer.Option(None, "--method", help=f"A decoding method (repeat): "
                                               f"{describe_methods()} (default: all of them)."),
    eval_data: Optional[str] = typer.Option(None, help="Also score each model's bits per byte on these stories "
                                                       "(as eval --data; default: none)."),
    max_documents: Optional[int] = typer.Option(None, help="Stories of --eval-data to score (default: all)."),
    text_field: str = typer.Option("text", help=TEXT_FIELD_HELP),
    split: str = typer.Option("validation", help=SPLIT_HELP),
    max_new_tokens: int = typer.Option(200, help="Tokens generated per story at most."),
    seed: int = typer.Option(0, help="Random seed of every sampled story."),
    vocab: Optional[Path] = typer.Option(None, help="Children's vocabulary, a word per line (default: the bundled "
                                                    "list)."),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    out: Optional[Path] = typer.Option(None, help="Also write the Markdown (or, with --json, the JSON) to this file "
                                                  "(default: print only)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of Markdown."),
):
    """Compare models and decoding methods side by side: a story per model x prompt x method, with
    length, endings, repetition, distinct-2 and words outside a children's vocabulary.

    Example:

      tinytales compare -m bundled -m runs/tiny/model --prompt "Once upon a time" --method greedy --method top-p --eval-data valid.jsonl --max-documents 200 --out table.md
    """
    from ..compare import METHODS, VOCAB_PATH, compare as run_compare
    from ..core import resolve_device

    result = run_compare(list(model), list(prompt), list(method) if method else list(METHODS), eval_source=eval_data,
                         max_new_tokens=max_new_tokens, seed=seed, max_documents=max_documents,
                         vocab_path=vocab or VOCAB_PATH, device=resolve_device(device),
                         progress=not as_json and sys.stderr.isatty(), text_field=text_field, split=split)
    _show(result.to_dict(), result.to_markdown, out, as_json)


@app.command()
@user_errors
def grade(
    judge_url: str = typer.Option(..., help="OpenAI-compatible chat endpoint, e.g. https://api.openai.com/v1 or "
                                            "http://localhost:11434/v1 (ollama)."),
    judge_model: str = typer.Option(..., help="The judge's model name (gpt-4o-mini, llama3, ...)."),
    judge_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key (if any)."),
    stories: Optional[Path] = typer.Option(None, help="Stories to grade: the output of `tinytales compare --json` "
                                                      "(default: none, write them with --prompt)."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help=f"Or: write stories with this model "
                                              f"(repeat): {MODEL_CHOICES} (default: bundled)."),
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", help="Story openings for --model (repeat; "
                                                                     "default: none)."),
    method: List[str] = typer.Option(["top-p"], "--method", help=f"Decoding methods for --model (repeat): "
                                                                 f"{describe_methods()}."),
    max_new_tokens: int = typer.Option(300, help="Tokens per written story at most."),
    seed: int = typer.Option(0, help="Random seed of the written stories."),
    out: Optional[Path] = typer.Option(None, help="Also write the Markdown (or, with --json, the JSON) here "
                                                  "(default: print only)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of Markdown."),
):
    """Grade stories with an LLM judge, as the TinyStories paper does: grammar, creativity, consistency with
    the beginning and plot (1-10 each) and the judge's guess of the reader's age.

    Examples:

      tinytales compare --prompt "Once upon a time" --method greedy --method top-p --json > stories.json
      tinytales grade --stories stories.json --judge-url https://api.openai.com/v1 --judge-model gpt-4o-mini

      tinytales grade --prompt "The little dragon" --prompt "Lily had a kite" --judge-url http://localhost:11434/v1 --judge-model llama3
    """
    from ..compare import compare as run_compare
    from ..grade import Judge, grade_stories, stories_from_compare
    from .common import fail

    judge = Judge(judge_url, judge_model, key_env=judge_key_env)
    if stories is not None:
        if model or prompt:
            raise ValueError("give either --stories or --model/--prompt, not both")
        items = stories_from_compare(stories)
    else:
        if not prompt:
            raise ValueError("nothing to grade: pass --stories FILE (from tinytales compare --json) or --prompt")
        written = run_compare(list(model) if model else [None], list(prompt), list(method),
                              max_new_tokens=max_new_tokens, seed=seed)
        items = [{"prompt": o.prompt, "text": o.text, "model": o.model, "method": o.method} for o in written.outputs]
    try:
        report = grade_stories(items, judge, progress=not as_json and sys.stderr.isatty())
    except RuntimeError as e:
        fail(str(e))
    _show(report.to_dict(), report.to_markdown, out, as_json)


def _show(data: dict, markdown, out: Optional[Path], as_json: bool) -> None:
    """Print a result as JSON or Markdown (`markdown()` makes it), and write the same text to `out` if given."""
    import json

    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n" if as_json else markdown()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    if as_json:
        print_json(data)
    else:
        from rich.markdown import Markdown

        console.print(Markdown(text))
