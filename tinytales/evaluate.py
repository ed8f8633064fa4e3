"""Loss, perplexity and bits per byte of a model on a set of stories.

Bits per byte is the number to compare models with different tokenizers (GPT-2's 50K vocabulary,
a 4K BPE, llama2.c's 512 tokens): it divides the information the model needs for a text by the
text's size, which does not depend on how the text was cut into tokens.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from .batches import pad_pairs
from .core import IGNORE_INDEX
from .kernels import summed_cross_entropy
from .tokenizer import story_start_id

LOGIT_ROWS = 1024  # scored positions per lm_head call: bounds memory with a 50K vocabulary


@dataclass
class EvalResult:
    loss: float  # mean nats per target token
    perplexity: float  # exp(loss)
    bits_per_byte: float  # total bits / UTF-8 bytes of the stories' text
    tokens: int  # target tokens scored (end-of-story tokens included)
    bytes: int  # UTF-8 bytes of the stories' text (special tokens excluded)
    documents: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def sliding_windows(n_inputs: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (begin, end, first_scored) over input positions 0..n_inputs-1.

    Window k reads inputs [begin, end) with begin = k * stride and end <= begin + context, and scores
    the targets of positions [first_scored, end): the ones no earlier window scored. So every target is
    scored exactly once, with at least context - stride tokens of left context after the first window
    (Hugging Face's "perplexity of fixed-length models" recipe). stride == context gives independent chunks.
    """
    windows, begin, scored_until = [], 0, 0
    while scored_until < n_inputs:
        end = min(begin + context, n_inputs)
        windows.append((begin, end, scored_until))
        scored_until, begin = end, begin + stride
    return windows


def iter_texts(source, split: str = "validation", text_field: str = "text") -> Iterator[str]:
    """The stories of a data source, cleaned as for training (`split` picks a hub dataset's split)."""
    from .stories import iter_documents

    return iter_documents(source, split=split, text_field=text_field)


def evaluate(model, tokenizer, source, max_documents: int | None = None, stride: int | None = None,
             batch_size: int = 16, text_field: str = "text", progress: bool = True,
             split: str = "validation") -> EvalResult:
    """Loss, perplexity and bits per byte of `model` on the stories of `source` (a file or dataset; `split`:
    a hub dataset's split, `text_field`: the field or column of the story).

    Each JSONL record (or <|endoftext|>-separated piece of a text file) is one story. Its tokens are
    a start token (`story_start_id`), the text, the end-of-story token; every token after the start is a
    target, the final end-of-story included (knowing when a story ends is part of the model).
    Bits per byte = the nats of all targets / ln 2 / the UTF-8 bytes of the story texts. Special tokens
    (the end-of-story) contribute their nats but no bytes: the byte count is that of the text alone, so
    the same text gives a comparable number whatever the tokenizer.
    Stories longer than the context are scored with a sliding window (`stride`, default half the context).
    """
    return evaluate_texts(model, tokenizer, iter_texts(source, split=split, text_field=text_field),
                          max_documents=max_documents,
                          stride=stride, batch_size=batch_size, progress=progress, source_name=str(source))


@torch.inference_mode()
def evaluate_texts(model, tokenizer, texts: Iterable[str], max_documents: int | None = None,
                   stride: int | None = None, batch_size: int = 16, progress: bool = False,
                   source_name: str = "the texts") -> EvalResult:
    """`evaluate` on an iterable of story texts (empty ones are skipped)."""
    context = model.config.context_length
    stride = context // 2 if stride is None else stride
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and the model's context ({context}), got {stride}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be at least 1, got {max_documents}")
    model.eval()
    started = time.perf_counter()
    nats, tokens, n_bytes, documents = 0.0, 0, 0, 0
    with _progress_bar(progress, max_documents) as advance:
        for chunk in _chunks(_non_empty(texts, max_documents), size=64 * batch_size):
            windows = []  # (inputs, targets) of every window of every story in the chunk
            for ids in tokenizer.encode_batch(chunk):
                ids = [story_start_id(tokenizer), *ids, tokenizer.eot_id]
                for begin, end, first_scored in sliding_windows(len(ids) - 1, context, stride):
                    targets = ids[begin + 1:end + 1]
                    unscored = first_scored - begin
                    windows.append((ids[begin:end], [IGNORE_INDEX] * unscored + targets[unscored:]))
            chunk_nats, chunk_tokens = _score_windows(model, windows, batch_size,
                                                      lambda done: advance(len(chunk) * done))
            nats += chunk_nats
            tokens += chunk_tokens
            n_bytes += sum(len(text.encode("utf-8")) for text in chunk)
            documents += len(chunk)
    if documents == 0:
        raise ValueError(f"no stories found in {source_name}; expected JSONL records with a text field "
                         f"or <|endoftext|>-separated text")
    loss = nats / tokens
    return EvalResult(loss=loss, perplexity=math.exp(loss), bits_per_byte=nats / math.log(2) / n_bytes,
                      tokens=tokens, bytes=n_bytes, documents=documents, seconds=time.perf_counter() - started)


def _score_windows(model, windows: list[tuple[list[int], list[int]]], batch_size: int,
                   on_batch=lambda share: None) -> tuple[float, int]:
    """Summed nats and number of scored targets over windows, batched by similar length.

    on_batch(share) is told the share of the windows each batch completed (for the progress bar).
    """
    device = next(model.parameters()).device
    windows = sorted(windows, key=lambda w: len(w[0]))  # similar lengths together: little padding
    nats, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size]
        inputs, targets, _ = pad_pairs(batch, pad_id=0)  # right padding: causal attention never looks at it
        inputs, targets = inputs.to(device), targets.to(device)
        hidden = model.hidden_states(inputs)  # (B, T, C)
        scored = targets != IGNORE_INDEX  # (B, T)
        hidden, targets = hidden[scored], targets[scored]  # (K, C), (K,)
        nats += summed_cross_entropy(hidden, model.lm_head, targets, LOGIT_ROWS).item()
        count += len(targets)
        on_batch(len(batch) / len(windows))
    return nats, count


def _non_empty(texts: Iterable[str], limit: int | None) -> Iterator[str]:
    n = 0
    for text in texts:
        if limit is not None and n >= limit:
            return
        if text and text.strip():
            n += 1
            yield text


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextmanager
def _progress_bar(enabled: bool, total: int | None):
    """Yields advance(n): a rich progress bar on stderr (stdout stays clean for --json), or nothing."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f} stories"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("evaluating stories", total=total)
        yield lambda n: progress.advance(task, n)
