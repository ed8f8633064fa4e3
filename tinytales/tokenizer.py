"""Byte-level BPE tokenizers (GPT-2's or one trained on the stories), via Hugging Face `tokenizers`.

Every tokenizer in TinyTales offers the same small surface: `encode`, `encode_batch`, `decode`,
`vocab_size`, `eot_id` (the end-of-story token) and `bos_id` (a token put before every text,
or None), and `save(directory)`.

`train_bpe(texts, vocab_size)` trains one; `tokenizer_hash(tokenizer)` identifies a tokenizer so prepared
token shards can be checked against it. (What a user names as a tokenizer is resolved by
`tinytales.formats.resolve_tokenizer`; training one on a data source is `tinytales.stories.train_tokenizer`.)
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from .core import EOT, MissingDependency, require

TOKENIZER_FILE = "tokenizer.json"


class BPETokenizer:
    """A byte-level BPE: decode(encode(text)) == text for any unicode text."""

    bos_id = None

    def __init__(self, backend):
        self.backend = backend
        eot = backend.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"tokenizer has no {EOT} token; train it with `tinytales train-tokenizer`")
        self.eot_id = eot

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of text; "<|endoftext|>" in the text becomes the end-of-story token."""
        return self.backend.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts at once (in parallel, without computing character offsets)."""
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(texts)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, directory: str | os.PathLike) -> Path:
        return save_backend(self.backend, directory)

    def token_bytes(self) -> list[bytes]:
        """The raw bytes of every token, by id: a byte-level token's characters mapped back through GPT-2's
        byte-to-unicode table ("Ġthe" -> b" the"), a special token as its UTF-8 text ("<|endoftext|>")."""
        special = {i: t.content for i, t in self.backend.get_added_tokens_decoder().items()}
        table = {char: byte for byte, char in _bytes_to_unicode().items()}
        pieces = []
        for i in range(self.vocab_size):
            token = special.get(i) or self.backend.id_to_token(i)
            if i in special:
                pieces.append(token.encode("utf-8"))
            elif token is not None and all(char in table for char in token):
                pieces.append(bytes(table[char] for char in token))
            else:
                raise ValueError(f"token {i} ({token!r}) is not a byte-level BPE token; only byte-level BPE "
                                 f"tokenizers (TinyTales' own, GPT-2's) have the raw bytes of every token")
        return pieces

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "BPETokenizer":
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exceptions with terse text
            raise ValueError(f"cannot read tokenizer file {path}: {e}; is it a Hugging Face tokenizer.json?") from e


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: the character that stands for each byte in byte-level BPE tokens (printable bytes stand for
    themselves, the others for the characters from U+0100 on, in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def save_backend(backend, directory) -> Path:
    """Write a `tokenizers` backend as directory/tokenizer.json atomically (a temporary file renamed into place)."""
    path = Path(directory) / TOKENIZER_FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    backend.save(str(tmp))
    os.replace(tmp, path)
    return path


def _byte_level(model):
    from tokenizers import Tokenizer, decoders, pre_tokenizers

    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def gpt2_tokenizer(directory: str | os.PathLike | None = None) -> BPETokenizer:
    """GPT-2's tokenizer (50,257 ids, <|endoftext|> = 50256) from vocab.json + merges.txt.

    Looks in `directory`, then $TINYTALES_GPT2_DIR, then the Hugging Face cache/hub ("gpt2").
    """
    from tokenizers import AddedToken
    from tokenizers.models import BPE

    candidates = [directory, os.environ.get("TINYTALES_GPT2_DIR")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "vocab.json").exists():
            folder = Path(candidate)
            break
    else:
        folder = _gpt2_from_hub(directory)
    model = BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer = _byte_level(model)
    tokenizer.add_special_tokens([AddedToken(EOT, special=True)])
    return BPETokenizer(tokenizer)


def _gpt2_from_hub(directory) -> Path:
    where = f"{directory} has no vocab.json; " if directory else ""
    fix = f"{where}GPT-2 tokenizer files not found: set $TINYTALES_GPT2_DIR to a folder with vocab.json and merges.txt"
    try:
        hub = require("huggingface_hub", "hub", "downloading them")
    except MissingDependency as e:
        raise FileNotFoundError(f"{fix}, or let the Hugging Face hub provide them: {e}") from e
    try:
        vocab = hub.hf_hub_download("gpt2", "vocab.json")
        hub.hf_hub_download("gpt2", "merges.txt")
        return Path(vocab).parent
    except Exception as e:
        raise FileNotFoundError(f"{fix}, or go online so the Hugging Face hub can provide them ({e})") from e


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE with <|endoftext|> as its only special token (the story separator)."""
    from tokenizers import pre_tokenizers, trainers
    from tokenizers.models import BPE

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must be at least 258 (256 bytes + {EOT} + merges), got {vocab_size}")
    tokenizer = _byte_level(BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tokenizer)


def load_tokenizer(directory: str | os.PathLike) -> BPETokenizer:
    """The tokenizer saved in a model directory."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: a model directory needs its tokenizer.json")
    return BPETokenizer.from_file(path)


def tokenizer_hash(tokenizer) -> str:
    """A sha256 that changes whenever the tokenizer would encode differently.

    For BPE tokenizers it hashes the full tokenizer JSON (vocabulary, merges, special tokens); for
    others, their type, sizes and the encoding of a probe text.
    """
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "to_str"):
        description = backend.to_str()
    else:
        probe = "Once upon a time, Lily said: \"Don't worry!\" 123 é 日本 🐱\n\nThe end."
        description = repr((type(tokenizer).__name__, tokenizer.vocab_size, tokenizer.eot_id,
                            getattr(tokenizer, "bos_id", None), tokenizer.encode(probe)))
    return hashlib.sha256(description.encode("utf-8")).hexdigest()


def story_start_id(tokenizer) -> int:
    """The token every story starts after, in training, generation and evaluation alike: BOS when the tokenizer
    has one (llama2.c), else the end-of-story token that precedes every story in an <|endoftext|>-separated
    stream (GPT-2 style).

    So a prompt is read as the beginning of a story, as every training story was (measured: the rest of a
    validation story after its first sentence costs 0.7301 bits per byte after this token against 0.7311
    without, docs/experiments.md), and in evaluation a story's first word is a target for every tokenizer.
    """
    return tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eot_id
