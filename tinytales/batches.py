"""Token batches of stories: token shards prepared once, and the loaders that cut batches for training.

- Token shards: `prepare` tokenizes a source once into memory-mappable `tokens-NNNNN.bin` files
  plus `meta.json` (optionally with a share of stories written after their ingredients);
  `load_tokens` gives a 1-D token array of any source.
- Batches: `PackedBatches`, `PaddedBatches`, `StreamingBatches` (picked by `make_batches`) yield
  `Batch(inputs, targets, attention_mask)` forever; `state_dict()` = {"epoch", "batch"} (or
  {"epoch", "documents", "leftover"} when streaming) fixes the next batch, for exact resume.
(Reading and cleaning the stories: `tinytales.stories`.)

Longer than 500 lines because the three loaders share their resumable-state contract and the shard format.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .core import IGNORE_INDEX, atomic_directory, write_json
from .ingredients import add_ingredients
from .formats import resolve_tokenizer
from .stories import (META_FILE, TOKENS_FORMAT, DataStats, UnfinishedStory, _clean_document, _Problems, _rows_to_texts, hub_dataset,
                      is_hub_source, is_prepared, iter_documents)
from .tokenizer import tokenizer_hash

SHARD_PATTERN = "tokens-{:05d}.bin"


# ---------------------------------------------------------------------------------------------
# Tokens: prepared shards and in-memory arrays


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _document_ids(ids: list[int], tokenizer, ends: bool = True) -> list[int]:
    """A story's ids as they go into the stream: [bos] + ids + [eot] (bos only if distinct from eot; no eot
    after a piece of a story that goes on, an `UnfinishedStory`)."""
    bos = getattr(tokenizer, "bos_id", None)
    prefix = [bos] if bos is not None and bos != tokenizer.eot_id else []
    return prefix + ids + ([tokenizer.eot_id] if ends else [])


def _encoded_chunks(texts: Iterable[str], tokenizer, chunk_documents: int = 512,
                    ) -> Iterator[tuple[list[list[int]], int]]:
    """(ids of each story in a chunk, UTF-8 bytes of the chunk); encode_batch is much faster per story."""
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, chunk_documents)):
        encoded = tokenizer.encode_batch(chunk)
        yield ([_document_ids(ids, tokenizer, ends=not isinstance(text, UnfinishedStory))
                for text, ids in zip(chunk, encoded)], sum(len(t.encode("utf-8")) for t in chunk))


@contextmanager
def _progress(enabled: bool, description: str):
    """A rich spinner with stories, MB and MB/s; yields update(documents, nbytes)."""
    if not enabled:
        yield lambda documents, nbytes: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    columns = [SpinnerColumn(), TextColumn(description), TextColumn("{task.fields[documents]:,} stories"),
               TextColumn("{task.fields[mb]:.1f} MB"), TextColumn("{task.fields[rate]:.2f} MB/s"),
               TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None, documents=0, mb=0.0, rate=0.0)

        def update(documents: int, nbytes: int) -> None:
            rate = nbytes / 1e6 / max(time.perf_counter() - start, 1e-9)
            bar.update(task, documents=documents, mb=nbytes / 1e6, rate=rate)

        yield update


def prepare(source, tokenizer, out_dir, shard_tokens: int = 100_000_000, text_field: str = "text",
            strict: bool = False, split: str = "train", progress: bool | None = None, ingredients: float = 0.0,
            ingredients_seed: int = 0) -> dict:
    """Tokenize a source once into out_dir/tokens-00000.bin, ... plus meta.json; returns the meta.

    Stories are cleaned, encoded in chunks with `encode_batch` and concatenated, each followed by
    eot_id; shards hold `shard_tokens` tokens (np.uint16 when the vocabulary fits, else uint32).
    meta.json records the dtype, the counts of tokens, documents and bytes, the tokenizer's vocab
    size, eot id and hash (so loading with another tokenizer fails), cleaning stats and MB/s.
    The folder is written to a temporary name and renamed into place. `tokenizer` may be a spec
    ("gpt2", a tokenizer.json, a model folder). `ingredients` is the share of whole stories written after
    their ingredients ("Words: ...", "Features: ...", "Story:"; see tinytales.ingredients), for models that
    take `generate --words/--features`; `ingredients_seed` draws another set of stories and words.

    Example: prepare("hf:roneneldan/TinyStories", "gpt2", "data/tinystories-gpt2")
    """
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be at least 1, got {shard_tokens}")
    if not 0 <= ingredients <= 1:
        raise ValueError(f"the share of stories with ingredients must be in [0, 1], got {ingredients}")
    tokenizer = resolve_tokenizer(tokenizer)
    out = Path(out_dir)
    if out.exists() and not is_prepared(out) and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not a prepared token folder; choose another --out (it would "
                         f"be replaced)")
    dtype = token_dtype(tokenizer.vocab_size)
    stats = DataStats()
    shards: list[dict] = []
    total, documents, nbytes = 0, 0, 0
    start = time.perf_counter()
    texts = iter_documents(source, split=split, text_field=text_field, strict=strict, stats=stats)
    if ingredients:
        texts = (text if isinstance(text, UnfinishedStory) else add_ingredients(text, ingredients, ingredients_seed)
                 for text in texts)
    with atomic_directory(out) as tmp, _progress(sys.stderr.isatty() if progress is None else progress,
                                                  "preparing") as update:
        handle = None
        try:
            for encoded, chunk_bytes in _encoded_chunks(texts, tokenizer):
                tokens = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype)
                documents, nbytes = documents + len(encoded), nbytes + chunk_bytes
                total += len(tokens)
                while len(tokens):  # fill the open shard; a story may continue in the next one
                    if handle is None:
                        shards.append({"file": SHARD_PATTERN.format(len(shards)), "tokens": 0})
                        handle = open(tmp / shards[-1]["file"], "wb")
                    take = min(shard_tokens - shards[-1]["tokens"], len(tokens))
                    tokens[:take].tofile(handle)
                    shards[-1]["tokens"] += take
                    tokens = tokens[take:]
                    if shards[-1]["tokens"] == shard_tokens:
                        handle.close()
                        handle = None
                update(documents, nbytes)
        finally:
            if handle is not None:
                handle.close()
        if documents == 0:
            raise ValueError(f"no stories found in {source} ({stats.summary()}); check the source and --text-field")
        seconds = time.perf_counter() - start
        meta = {
            "format": TOKENS_FORMAT, "format_version": 1, "source": str(source), "split": split,
            "text_field": text_field, "dtype": dtype.name, "tokens": total, "documents": documents,
            "bytes": nbytes, "shards": shards, "ingredients": ingredients,
            **({"ingredients_seed": ingredients_seed} if ingredients_seed else {}),
            "tokenizer": {"vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
                          "bos_id": getattr(tokenizer, "bos_id", None), "hash": tokenizer_hash(tokenizer)},
            "cleaning": stats.to_dict(), "seconds": round(seconds, 3),
            "mb_per_s": round(nbytes / 1e6 / max(seconds, 1e-9), 3),
        }
        write_json(tmp / META_FILE, meta)
        try:  # keep the tokenizer beside its tokens: `--tokenizer DIR` then names both
            tokenizer.save(tmp)
        except (ValueError, AttributeError, NotImplementedError):
            pass
    return meta


def read_meta(directory) -> dict:
    """meta.json of a prepared folder."""
    meta = json.loads((Path(directory) / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != TOKENS_FORMAT:
        raise ValueError(f"{directory}/{META_FILE} is not a TinyTales token folder (format {meta.get('format')!r}); "
                         f"write one with `tinytales prepare`")
    return meta


class ShardedTokens:
    """Several memory-mapped shards seen as one 1-D array (int, slice and integer-array indexing)."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])  # shard i covers starts[i]:starts[i+1]
        self.dtype = shards[0].dtype
        self.shape = (int(self.starts[-1]),)
        self.ndim = 1

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self[np.arange(*key.indices(len(self)))]
        index = np.asarray(key)
        flat = np.where(index < 0, index + len(self), index).ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token index out of range for {len(self)} tokens")
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        if shard.size and shard.min() == shard.max():  # the usual case: all in one shard, one gather
            out = self.shards[shard[0]][flat - self.starts[shard[0]]]
            return out.reshape(index.shape) if index.ndim else out[0]
        out = np.empty(flat.shape, dtype=self.dtype)
        for i in np.unique(shard):
            picked = shard == i
            out[picked] = self.shards[i][flat[picked] - self.starts[i]]
        return out.reshape(index.shape) if index.ndim else out[0]

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate(self.shards)
        return whole if dtype is None else whole.astype(dtype)


def load_tokens(source, tokenizer, text_field: str = "text", strict: bool = False, split: str = "train",
                progress: bool | None = None):
    """All tokens of a source as one 1-D array, each story followed by eot_id.

    A prepared folder is memory-mapped (one np.memmap, or a `ShardedTokens` over several shards)
    after checking it was made with this tokenizer; any other source is read, cleaned and
    tokenized in memory (a progress bar shows on a terminal).

    Example: tokens = load_tokens("data/tinystories-gpt2", gpt2_tokenizer())
    """
    if is_prepared(source):
        meta = read_meta(source)
        check_tokenizer(meta, tokenizer, source)
        shards = [np.memmap(Path(source) / s["file"], dtype=meta["dtype"], mode="r", shape=(s["tokens"],))
                  for s in meta["shards"]]
        for shard, info in zip(shards, meta["shards"]):  # one pass over the mapped file: ids the model can embed
            top = int(shard.max()) if len(shard) else 0
            if top >= tokenizer.vocab_size:
                raise ValueError(f"{Path(source) / info['file']} holds token id {top}, beyond the tokenizer's "
                                 f"vocabulary of {tokenizer.vocab_size}; the shard is corrupt: run `tinytales "
                                 f"prepare` again")
        return shards[0] if len(shards) == 1 else ShardedTokens(shards)
    stats = DataStats()
    texts = iter_documents(source, split=split, text_field=text_field, strict=strict, stats=stats)
    dtype = token_dtype(tokenizer.vocab_size)
    pieces, documents, nbytes = [], 0, 0
    with _progress(sys.stderr.isatty() if progress is None else progress, "tokenizing") as update:
        for encoded, chunk_bytes in _encoded_chunks(texts, tokenizer):
            pieces.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype))
            documents, nbytes = documents + len(encoded), nbytes + chunk_bytes
            update(documents, nbytes)
    if not documents:
        raise ValueError(f"no stories found in {source} ({stats.summary()}); check the source and --text-field")
    return np.concatenate(pieces)


def check_tokenizer(meta: dict, tokenizer, where) -> None:
    """Refuse a prepared folder whose tokens came from another tokenizer."""
    saved = meta["tokenizer"]
    if saved["hash"] != tokenizer_hash(tokenizer):
        raise ValueError(f"{where} was prepared with a different tokenizer (vocab {saved['vocab_size']}, "
                         f"eot {saved['eot_id']}, hash {saved['hash'][:12]}) than the one in use (vocab "
                         f"{tokenizer.vocab_size}, eot {tokenizer.eot_id}, hash {tokenizer_hash(tokenizer)[:12]}); "
                         f"use the tokenizer it was prepared with (--tokenizer {where}) or run `tinytales prepare` "
                         f"again with this one")


# ---------------------------------------------------------------------------------------------
# Batches


class Batch(NamedTuple):
    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE_INDEX where not scored
    attention_mask: torch.Tensor | None  # (B, T) bool, True for real tokens; None when packed


def _check_common(batch_size: int, length: int, rank: int, world_size: int) -> None:
    if batch_size < 1 or length < 1:
        raise ValueError(f"batch_size and seq_len must be at least 1, got {batch_size} and {length}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1} for world_size {world_size}, got {rank}")


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of n items in an epoch: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class _EpochBatches:
    """Iteration protocol shared by the in-memory loaders: the state {"epoch", "batch"} fixes the next batch."""

    batches_per_epoch: int

    def __init__(self, seed: int, rank: int, world_size: int, batch_size: int):
        self.seed, self.rank, self.world_size, self.batch_size = seed, rank, world_size, batch_size
        self.epoch, self.batch = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def _items(self, epoch: int, index: int, count: int) -> np.ndarray:
        """Item ids of this rank's batch `index`: batch b of every epoch goes to rank b % world_size."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(self.seed, epoch, count))
        first = (index * self.world_size + self.rank) * self.batch_size
        return self._order[1][first:first + self.batch_size]

    def state_dict(self) -> dict:
        """Where the next batch comes from: {"epoch", "batch"} (JSON-serialisable)."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the loader that produced `state` stopped."""
        if not {"epoch", "batch"} <= set(state):
            raise ValueError(f"data state {state} was saved by another kind of loader (streamed?); resume with "
                             f"the same data source and mode")
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch < self.batches_per_epoch:
            raise ValueError(f"data state {state} does not fit this data ({self.batches_per_epoch} batches per "
                             f"epoch); resume with the same data, batch size, sequence length and process count")
        self.epoch, self.batch = epoch, batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self._make(self.epoch, self.batch)
            self.batch += 1
            if self.batch == self.batches_per_epoch:  # advance before yielding: the state names the next batch
                self.epoch, self.batch = self.epoch + 1, 0
            yield batch

    def _make(self, epoch: int, index: int) -> Batch:
        raise NotImplementedError


class PackedBatches(_EpochBatches):
    """Fixed-length windows of seq_len + 1 tokens cut from the token stream, shuffled per epoch.

    Windows start every seq_len tokens (each token is a target once per epoch); the order is a
    permutation seeded by (seed, epoch); rank r of world_size takes every world_size-th batch, so
    all ranks get the same number. Iteration never ends; `epoch` counts finished passes.
    """

    def __init__(self, tokens, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        _check_common(batch_size, seq_len, rank, world_size)
        super().__init__(seed, rank, world_size, batch_size)
        self.tokens, self.seq_len = tokens, seq_len
        self.num_windows = max(0, (len(tokens) - 1) // seq_len)
        self.batches_per_epoch = self.num_windows // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"too little data: {len(tokens):,} tokens make {self.num_windows} sequences of "
                             f"{seq_len} tokens, fewer than batch_size {batch_size} x {world_size} process(es); "
                             f"use more stories or a smaller --batch-size / context length")
        self._offsets = np.arange(seq_len + 1)

    def _make(self, epoch: int, index: int) -> Batch:
        starts = self._items(epoch, index, self.num_windows) * self.seq_len  # (B,)
        windows = self.tokens[starts[:, None] + self._offsets]  # (B, T+1), one gather from the memmap
        windows = torch.from_numpy(np.asarray(windows, dtype=np.int64))
        return Batch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), None)


class PaddedBatches(_EpochBatches):
    """Whole stories, shuffled per epoch and padded per batch to the longest one.

    `documents` are token ids of each story, each ending with eot (make_batches does that).
    Stories longer than max_len + 1 tokens are split into pieces of max_len + 1 (stride max_len,
    so every token is a target once). Padding is on the right with `pad_id`; the attention mask
    marks real tokens and targets are IGNORE_INDEX on padding.
    """

    def __init__(self, documents, batch_size: int, max_len: int, seed: int = 0, pad_id: int = 0, rank: int = 0,
                 world_size: int = 1):
        _check_common(batch_size, max_len, rank, world_size)
        super().__init__(seed, rank, world_size, batch_size)
        self.max_len, self.pad_id = max_len, pad_id
        self.examples = [np.asarray(doc[i:i + max_len + 1], dtype=np.int64)
                         for doc in documents for i in range(0, max(len(doc) - 1, 1), max_len)]
        self.examples = [e for e in self.examples if len(e) >= 2]
        self.batches_per_epoch = len(self.examples) // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"too little data: {len(self.examples)} stories (or pieces), fewer than batch_size "
                             f"{batch_size} x {world_size} process(es); use more stories or a smaller --batch-size")

    def _make(self, epoch: int, index: int) -> Batch:
        return collate([self.examples[i] for i in self._items(epoch, index, len(self.examples))], self.pad_id)


def collate(examples: list, pad_id: int) -> Batch:
    """Right-pad token sequences to the longest: inputs = ids[:-1], targets = ids[1:] (IGNORE_INDEX on padding)."""
    inputs, targets, mask = pad_pairs([(ids[:-1], ids[1:]) for ids in examples], pad_id)
    return Batch(inputs, targets, mask)


def pad_pairs(pairs: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets) id sequences right-padded to the longest: inputs with pad_id, targets with
    IGNORE_INDEX, and the mask of real inputs; each (B, T). Causal attention never looks at right padding."""
    T = max(len(x) for x, _ in pairs)
    inputs = torch.full((len(pairs), T), pad_id, dtype=torch.long)  # (B, T)
    targets = torch.full((len(pairs), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(pairs), T), dtype=torch.bool)  # (B, T)
    for row, (x, y) in enumerate(pairs):
        inputs[row, :len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
        targets[row, :len(y)] = torch.as_tensor(np.asarray(y, dtype=np.int64))
        mask[row, :len(x)] = True
    return inputs, targets, mask


class StreamingBatches:
    """Packed batches built on the fly from a streamed (hub) dataset; for data too big to prepare.

    Each epoch re-opens the stream, gives this rank its part (`split_dataset_by_node`), shuffles
    it with a buffer seeded by (seed, epoch), cleans and tokenizes stories and cuts windows of
    seq_len + 1 tokens (stride seq_len). The state {"epoch", "documents" (rows consumed this
    epoch), "leftover" (tokens not yet batched)} fixes the next batch: resuming skips that many
    rows. The length of an epoch is unknown: batches_per_epoch is None.
    """

    batches_per_epoch = None

    def __init__(self, source, tokenizer, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, text_field: str = "text", shuffle_buffer: int = 10_000, split: str = "train",
                 strict: bool = False):
        _check_common(batch_size, seq_len, rank, world_size)
        self.name = str(source).removeprefix("hf:")
        self.tokenizer, self.batch_size, self.seq_len, self.seed = tokenizer, batch_size, seq_len, seed
        self.rank, self.world_size, self.text_field = rank, world_size, text_field
        self.shuffle_buffer, self.split, self.strict = shuffle_buffer, split, strict
        self.stats = DataStats()
        self._state = {"epoch": 0, "documents": 0, "leftover": []}

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    def state_dict(self) -> dict:
        """Where the next batch comes from: {"epoch", "documents", "leftover"} (JSON-serialisable)."""
        return {**self._state, "leftover": list(self._state["leftover"])}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the loader that produced `state` stopped (skips consumed rows)."""
        missing = {"epoch", "documents", "leftover"} - set(state)
        if missing:
            raise ValueError(f"data state {state} lacks {sorted(missing)}: it was saved by another kind of loader; "
                             f"resume with the same data source")
        self._state = {"epoch": int(state["epoch"]), "documents": int(state["documents"]),
                       "leftover": [int(t) for t in state["leftover"]]}

    def _stream(self, epoch: int):
        from datasets.distributed import split_dataset_by_node

        dataset = hub_dataset(self.name, self.split)
        if self.world_size > 1:
            dataset = split_dataset_by_node(dataset, rank=self.rank, world_size=self.world_size)
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        return dataset.shuffle(seed=seed, buffer_size=self.shuffle_buffer)

    def _documents(self, epoch: int, skip: int) -> Iterator[tuple[int, list[int]]]:
        """(rows consumed so far this epoch, ids) of each kept story after the first `skip` rows."""
        problems = _Problems(self.strict, self.stats)
        rows = itertools.islice(enumerate(self._stream(epoch)), skip, None)
        texts = _rows_to_texts(rows, f"hf:{self.name}", self.text_field, problems)
        cleaned = ((index + 1, _clean_document(text, self.stats)) for index, text in texts)
        kept = ((consumed, text) for consumed, text in cleaned if text is not None)
        while chunk := list(itertools.islice(kept, 256)):
            encoded = self.tokenizer.encode_batch([text for _, text in chunk])
            for (consumed, text), ids in zip(chunk, encoded):
                yield consumed, _document_ids(ids, self.tokenizer, ends=not isinstance(text, UnfinishedStory))

    def _epoch_batches(self, epoch: int, skip: int, leftover: list[int]) -> Iterator[tuple[Batch, dict]]:
        """(batch, state to resume right after it) until this epoch's stream runs out."""
        need = self.batch_size * self.seq_len + 1  # B windows of T+1 tokens with stride T
        index = np.arange(self.batch_size)[:, None] * self.seq_len + np.arange(self.seq_len + 1)  # (B, T+1)
        buffer = list(leftover)
        for consumed, ids in self._documents(epoch, skip):
            buffer.extend(ids)
            while len(buffer) >= need:
                windows = torch.from_numpy(np.asarray(buffer[:need], dtype=np.int64)[index])  # (B, T+1)
                buffer = buffer[need - 1:]  # the last target is the next window's first input
                batch = Batch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), None)
                yield batch, {"epoch": epoch, "documents": consumed, "leftover": list(buffer)}

    def __iter__(self) -> Iterator[Batch]:
        while True:
            epoch = self._state["epoch"]
            batches = self._epoch_batches(epoch, self._state["documents"], self._state["leftover"])
            current = next(batches, None)
            if current is None and not (self._state["documents"] or self._state["leftover"]):
                raise ValueError(f"hf:{self.name} holds too few tokens for one batch of {self.batch_size} x "
                                 f"{self.seq_len} in this process ({self.stats.summary()}); use a smaller "
                                 f"--batch-size or context length")
            while current is not None:
                # read one batch ahead, so the last batch of an epoch already reports the next epoch
                following = next(batches, None)
                batch, state = current
                self._state = state if following is not None else {"epoch": epoch + 1, "documents": 0, "leftover": []}
                yield batch
                current = following
            if self._state["epoch"] == epoch:  # resumed at the very end of an epoch
                self._state = {"epoch": epoch + 1, "documents": 0, "leftover": []}


def make_batches(source, tokenizer, mode: str = "packed", batch_size: int = 16, seq_len: int = 256,
                 seed: int = 0, rank: int = 0, world_size: int = 1, text_field: str = "text",
                 strict: bool = False, split: str = "train"):
    """The right loader for a source: hub datasets stream (`StreamingBatches`); prepared folders and
    local files are loaded with `load_tokens` into `PackedBatches`, or split into stories for
    `PaddedBatches` (mode="padded", padding with eot_id).

    Example: batches = make_batches("stories.jsonl", tokenizer, batch_size=8, seq_len=128, seed=1)
    """
    if mode not in ("packed", "padded"):
        raise ValueError(f"mode must be 'packed' or 'padded', got {mode!r}")
    if is_hub_source(source):
        if mode == "padded":
            raise ValueError(f"{source} is streamed, and streamed stories are packed: use --mode packed, or "
                             f"download the stories to a file and use padded batches on it")
        return StreamingBatches(source, tokenizer, batch_size, seq_len, seed=seed, rank=rank, world_size=world_size,
                                text_field=text_field, split=split, strict=strict)
    if mode == "packed":
        tokens = load_tokens(source, tokenizer, text_field=text_field, strict=strict, split=split)
        return PackedBatches(tokens, batch_size, seq_len, seed=seed, rank=rank, world_size=world_size)
    if is_prepared(source):
        tokens = np.asarray(load_tokens(source, tokenizer))
        documents = np.split(tokens, np.flatnonzero(tokens == tokenizer.eot_id) + 1)  # each ends with eot
    else:
        texts = iter_documents(source, split=split, text_field=text_field, strict=strict)
        documents = [ids for encoded, _ in _encoded_chunks(texts, tokenizer) for ids in encoded]
    return PaddedBatches(documents, batch_size, seq_len, seed=seed, pad_id=tokenizer.eot_id, rank=rank,
                         world_size=world_size)
