"""Stories: reading them from any source, cleaning them, and training a tokenizer on them.

- Sources: `iter_documents` reads stories from a Hugging Face dataset (streamed), `.txt` files
  (stories separated by <|endoftext|>), `.jsonl` / `.json` and `.parquet` files, folders or globs.
  Malformed records are reported with file:line and skipped (or raise with strict=True).
  A record marked as a piece of a story that goes on is an `UnfinishedStory` (no end-of-story after it).
- Cleaning: `clean_story` repairs mojibake and normalises unicode and whitespace; `DataStats`
  counts what was kept, dropped and fixed.
- `train_tokenizer` trains a byte-level BPE on a source's cleaned stories.
(Token shards and batches of these stories: `tinytales.batches`.)
"""
from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .core import EOT, require
from .tokenizer import BPETokenizer, train_bpe

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
META_FILE = "meta.json"  # what marks a folder of token shards (tinytales.batches.prepare)
TOKENS_FORMAT = "tinytales-tokens"
MAX_WARNINGS = 20  # per read of a source; the counts in DataStats hold the rest


# ---------------------------------------------------------------------------------------------
# Cleaning


@dataclass
class DataStats:
    """What reading and cleaning did: stories kept, and dropped or fixed by reason."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    fixed: Counter = field(default_factory=Counter)

    @property
    def read(self) -> int:
        return self.kept + sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "dropped": dict(sorted(self.dropped.items())),
                "fixed": dict(sorted(self.fixed.items()))}

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items()))
        return f"{self.kept} kept, {sum(self.dropped.values())} dropped" + (f" ({dropped})" if dropped else "")


# "”" is E2 80 9D in UTF-8; read as Windows-1252 the 0x9D byte has no character and is often lost,
# leaving "â€" + an ASCII character (which can never be a UTF-8 continuation byte). ftfy cannot
# undo that loss, so put the byte back first; ” is the only common character ending in a lost byte.
_LOST_RIGHT_QUOTE = re.compile("\u00e2\u20ac(?=[\\x00-\\x7f]|$)")
_BYTE_ESCAPES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")  # UTF-8 written out as text: \xe2\x80\x99
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[^\S\n]+")  # runs of any whitespace but newlines
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_story(text: str, stats: DataStats | None = None) -> str | None:
    """A cleaned story, or None when it should be dropped (empty, or mojibake that cannot be repaired).

    Repairs mojibake with ftfy ("â€™" -> "’") and UTF-8 bytes written out as "\\xe2\\x80\\x99",
    normalises to NFC, turns \\r\\n into \\n, collapses runs of spaces/tabs, keeps at most one blank
    line and strips the ends. `stats` (a DataStats) counts kept, dropped and fixed stories by reason.
    """
    stats = stats if stats is not None else DataStats()
    if "\\x" in text:
        repaired = _BYTE_ESCAPES.sub(_decode_byte_escapes, text)
        if repaired != text:
            stats.fixed["byte escapes"] += 1
            text = repaired
        if any(not _escaped_bytes(m.group()).isascii() for m in _BYTE_ESCAPES.finditer(text)):
            stats.dropped["mojibake"] += 1
            return None
    if not text.isascii():  # mojibake and unicode forms only concern non-ASCII text
        import ftfy
        from ftfy.badness import is_bad

        normal = unicodedata.normalize("NFC", text)
        if normal != text:
            stats.fixed["unicode"] += 1
        repaired = ftfy.fix_text(_LOST_RIGHT_QUOTE.sub("\u00e2\u20ac\x9d", normal), uncurl_quotes=False)
        if repaired != normal:
            stats.fixed["mojibake"] += 1
        if is_bad(repaired):
            stats.dropped["mojibake"] += 1
            return None
        text = repaired
    tidy = _tidy_whitespace(text)
    if tidy != text:
        stats.fixed["whitespace"] += 1
    if not tidy:
        stats.dropped["empty"] += 1
        return None
    stats.kept += 1
    return tidy


def _tidy_whitespace(text: str) -> str:
    """CRLF -> LF, runs of spaces/tabs (any whitespace but newlines) -> one space, no spaces around
    newlines, at most one blank line, no control characters, stripped ends."""
    if (text.isascii() and text.replace("\n", " ").isprintable()
            and not any(s in text for s in ("  ", " \n", "\n ", "\n\n\n"))):
        return text.strip()  # the common case, without the (slow) regular expressions
    tidy = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    tidy = _SPACES.sub(" ", tidy).replace(" \n", "\n").replace("\n ", "\n")
    return _BLANK_LINES.sub("\n\n", tidy).strip()


def _escaped_bytes(escapes: str) -> bytes:
    return bytes.fromhex(escapes.replace("\\x", ""))


def _decode_byte_escapes(match: re.Match) -> str:
    raw = _escaped_bytes(match.group())
    if raw.isascii():  # a lone "\x20" may be meant literally; only repair runs that carry UTF-8
        return match.group()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return match.group()


# ---------------------------------------------------------------------------------------------
# Sources


class _Problems:
    """Malformed input: raise (strict) or warn, count and skip."""

    def __init__(self, strict: bool, stats: DataStats):
        self.strict, self.stats, self.warned = strict, stats, 0

    def report(self, where: str, reason: str, detail: str) -> None:
        if self.strict:
            raise ValueError(f"{where}: {detail}; fix it or pass strict=False / drop --strict")
        self.stats.dropped[reason] += 1
        self.warned += 1
        if self.warned <= MAX_WARNINGS:
            log.warning("%s: %s; skipped", where, detail)
        elif self.warned == MAX_WARNINGS + 1:
            log.warning("more malformed records follow; not shown (they are counted in the dropped figures)")


def is_hub_source(source) -> bool:
    """True for "hf:NAME" and for a bare "owner/name" that is not a local path."""
    source = str(source)
    if source.startswith("hf:"):
        return True
    if Path(source).exists() or glob.has_magic(source) or Path(source).suffix in SUFFIXES:
        return False
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None


def is_prepared(source) -> bool:
    """True when `source` is a folder written by `prepare`."""
    return not str(source).startswith("hf:") and (Path(source) / META_FILE).is_file()


def iter_documents(source, split: str = "train", text_field: str = "text", strict: bool = False,
                   stats: DataStats | None = None, clean: bool = True) -> Iterator[str]:
    """Stories of a data source, one string each, cleaned with `clean_story` unless clean=False.

    `source` is "hf:owner/name" (or a bare "owner/name") streamed from the Hugging Face hub with
    `datasets`, "hf:/local/folder" (the same streaming code on local jsonl/parquet files), a file
    (.txt stories separated by <|endoftext|>, .jsonl, .json list, .parquet), a folder (every such
    file in it, sorted) or a glob. JSON and parquet records take their text from `text_field`.

    Malformed records (bad JSON, missing or non-string field, invalid UTF-8) are logged with
    file:line, counted in `stats.dropped` and skipped; with strict=True they raise ValueError.

    Example: for story in iter_documents("stories.jsonl"): ...
    """
    stats = stats if stats is not None else DataStats()
    problems = _Problems(strict, stats)
    if is_hub_source(source):
        name = str(source).removeprefix("hf:")
        rows = enumerate(hub_dataset(name, split))
        texts = (text for _, text in _rows_to_texts(rows, f"hf:{name}", text_field, problems))
    else:
        texts = (text for path in source_files(source) for text in _read_file(path, text_field, problems))
    for text in texts:
        if clean:
            text = _clean_document(text, stats)
            if text is None:
                continue
        else:
            stats.kept += 1
        yield text


def _clean_document(text: str, stats: DataStats) -> str | None:
    """clean_story, keeping an UnfinishedStory marked as one."""
    cleaned = clean_story(text, stats)
    return UnfinishedStory(cleaned) if cleaned is not None and isinstance(text, UnfinishedStory) else cleaned


def source_files(source) -> list[Path]:
    """The story files a local source names: a file, every supported file in a folder, or a glob."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if is_prepared(path):
            raise ValueError(f"{path} holds prepared token shards, not text; pass the stories it was prepared "
                             f"from, or use it for training with `tinytales train --data {path}`")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise FileNotFoundError(f"no story files ({', '.join(SUFFIXES)}) in folder {path}")
        return files
    if path.is_file():
        files = [path]
    elif glob.has_magic(text):
        files = [Path(p) for p in sorted(glob.glob(os.path.expanduser(text), recursive=True)) if Path(p).is_file()]
        if not files:
            raise FileNotFoundError(f"no files match {text}")
    else:
        raise FileNotFoundError(f"no such file, folder or glob: {text}; pass a {'/'.join(SUFFIXES)} file, "
                                f"a folder, a glob or hf:owner/dataset")
    for file in files:
        if file.suffix not in SUFFIXES:
            raise ValueError(f"cannot read {file}: unsupported file type {file.suffix or '(none)'!r}; "
                             f"stories come as {', '.join(SUFFIXES)}")
    return files


def _read_file(path: Path, text_field: str, problems: _Problems) -> Iterator[str]:
    if path.suffix == ".txt":
        return _read_txt(path, problems)
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text_field, problems)
    if path.suffix == ".json":
        return _read_json(path, text_field, problems)
    return _read_parquet(path, text_field, problems)


def _decode(raw: bytes, where: str, problems: _Problems) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.report(where, "invalid UTF-8", f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
        return None


def _read_txt(path: Path, problems: _Problems) -> Iterator[str]:
    """Stories separated by <|endoftext|>, read line by line (files can be gigabytes)."""
    parts: list[str] = []
    broken = False  # the story being read had an undecodable line: drop all of it
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, f"{path}:{lineno}", problems)
            if line is None:
                broken = True
                continue
            *ends, rest = line.split(EOT)
            for end in ends:
                story = "".join(parts) + end
                if story.strip() and not broken:
                    yield story
                parts, broken = [], False
            parts.append(rest)
    story = "".join(parts)
    if story.strip() and not broken:
        yield story


class UnfinishedStory(str):
    """Text of a story that goes on after it (a fragment): no end-of-story token follows it in the token stream.

    Records marked `"kind": "head_only"` or `"middle"` (TinyStories fragments: a story's beginning or
    middle, cut off) are read as such; `"tail_only"` pieces and whole stories end their story.
    """


UNFINISHED_KINDS = ("head_only", "middle")


def _record_text(record, where: str, text_field: str, problems: _Problems) -> str | None:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        problems.report(where, "not a record",
                        f"expected an object with a {text_field!r} field, got {type(record).__name__}")
        return None
    if text_field not in record:
        problems.report(where, "missing field", f"no field {text_field!r} (fields: {', '.join(map(str, record))}); "
                                                f"choose the text field with --text-field")
        return None
    value = record[text_field]
    if not isinstance(value, str):
        problems.report(where, "not text", f"field {text_field!r} is {type(value).__name__}, not a string")
        return None
    return UnfinishedStory(value) if record.get("kind") in UNFINISHED_KINDS else value


def _read_jsonl(path: Path, text_field: str, problems: _Problems) -> Iterator[str]:
    with open(path, "rb") as f:
        yield from _json_lines(f, path, text_field, problems)


def _json_lines(lines: Iterable[bytes], path: Path, text_field: str, problems: _Problems) -> Iterator[str]:
    for lineno, raw in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        line = _decode(raw, where, problems)
        if line is None or not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.report(where, "bad JSON", f"bad JSON ({e.msg} at column {e.colno})")
            continue
        text = _record_text(record, where, text_field, problems)
        if text is not None:
            yield text


def _read_json(path: Path, text_field: str, problems: _Problems) -> Iterator[str]:
    """A JSON list of records or strings (one record alone is fine); JSON lines named .json too."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problems.report(f"{path}:{line}", "invalid UTF-8", f"invalid UTF-8 (byte 0x{data[e.start]:02x}); "
                                                           f"the whole file was skipped")
        return
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    try:
        if text[start:start + 1] != "[":
            record, end = decoder.raw_decode(text, start)
            if text[end:].strip():  # more values follow: JSON lines in a .json file
                yield from _json_lines(data.splitlines(keepends=True), path, text_field, problems)
                return
            item = _record_text(record, f"{path}:1", text_field, problems)
            if item is not None:
                yield item
            return
        # walk the list item by item so each problem can be given its line
        pos, line, counted = start + 1, 1, 0
        while True:
            pos = _skip_space(text, pos)
            if text.startswith("]", pos):
                return
            line += text.count("\n", counted, pos)
            counted = pos
            record, pos = decoder.raw_decode(text, pos)
            item = _record_text(record, f"{path}:{line}", text_field, problems)
            if item is not None:
                yield item
            pos = _skip_space(text, pos)
            if text.startswith(",", pos):
                pos += 1
            elif not text.startswith("]", pos):
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
    except json.JSONDecodeError as e:
        problems.report(f"{path}:{e.lineno}", "bad JSON",
                        f"bad JSON ({e.msg} at column {e.colno}); the rest of the file was skipped")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_parquet(path: Path, text_field: str, problems: _Problems) -> Iterator[str]:
    pa = require("pyarrow", "hub", f"reading {path}")
    pq = require("pyarrow.parquet", "hub", f"reading {path}")
    table = pq.ParquetFile(path)
    names = table.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"{path} has no column {text_field!r} (columns: {', '.join(names)}); "
                         f"choose one with --text-field")
    kind = table.schema_arrow.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: column {text_field!r} holds {kind}, not text; choose another with --text-field")
    row = 0
    for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                problems.report(f"{path}:row {row}", "not text", f"field {text_field!r} is null")
            else:
                yield value


def hub_dataset(name: str, split: str = "train"):
    """A streamed `datasets.IterableDataset`: a hub name ("roneneldan/TinyStories") or a local folder."""
    datasets = require("datasets", "hub", f"the Hugging Face dataset hf:{name}")
    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except ValueError as e:  # e.g. "Bad split: validation. Available splits: ['train']"
        raise ValueError(f"hf:{name}: {e}; pass a split the dataset has (--split)") from e
    except Exception as e:  # offline, unknown name, no data files: all plain Exceptions of several kinds
        raise FileNotFoundError(f"cannot open the Hugging Face dataset hf:{name} (split {split!r}): "
                                f"{type(e).__name__}: {e}; check the name and the connection, or pass local "
                                f"files (hf:/path/to/folder streams a local folder)") from e


def _rows_to_texts(rows: Iterable[tuple[int, dict]], name: str, text_field: str, problems: _Problems,
                   ) -> Iterator[tuple[int, str]]:
    """(row index, text) of dataset rows; a column missing from the first row is a usage error."""
    first = True
    for index, row in rows:
        if first and text_field not in row:
            raise ValueError(f"{name} has no column {text_field!r} (columns: {', '.join(row)}); "
                             f"choose one with --text-field")
        first = False
        text = _record_text(row, f"{name}:row {index + 1}", text_field, problems)
        if text is not None:
            yield index, text


# ---------------------------------------------------------------------------------------------
# Tokenizers

def train_tokenizer(source, vocab_size: int, out_dir: str | os.PathLike, max_documents: int | None = None,
                    text_field: str = "text", split: str = "train", strict: bool = False, stats=None,
                    min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE of `vocab_size` ids on the (cleaned) stories of a data source.

    `source` is anything `iter_documents` reads (file, folder, glob, hf:dataset);
    `max_documents` caps how many stories are used. Saves out_dir/tokenizer.json and returns the
    tokenizer; pass a `DataStats` as `stats` to learn how many stories were used.

    Example: train_tokenizer("stories.jsonl", 4096, "tokenizers/tiny4k")
    """
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be at least 1, got {max_documents}")
    stats = stats if stats is not None else DataStats()
    documents = iter_documents(source, split=split, text_field=text_field, strict=strict, stats=stats)
    tokenizer = train_bpe(itertools.islice(documents, max_documents), vocab_size, min_frequency=min_frequency)
    if stats.kept == 0:
        raise ValueError(f"no stories to train a tokenizer on in {source} ({stats.summary()}); "
                         f"check the path and --text-field")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    return tokenizer
