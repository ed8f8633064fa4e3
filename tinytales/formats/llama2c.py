"""llama2.c models (`.bin` exports) and tokenizers (`tokenizer.bin`) in the TinyTales engine.

karpathy's llama2.c writes a Llama model as one flat binary file; `run.c` reads it back. This
module reads the same files into a `tinytales.model.GPT` (RoPE, RMSNorm, SwiGLU, grouped-query
attention) so that the stories260K / stories15M models can be generated from, evaluated and
compared like any TinyTales model.

Formats (all little-endian), as written by llama2.c's `export.py`:
- version 0 ("legacy"): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  max_seq_len; a negative vocab_size means the classifier is not shared with the embedding), then
  float32 weights in run.c's order, including the RoPE tables (freq_cis) that we skip.
- version 1: 256-byte header (magic "ak42", version, the 7 int32, uint8 shared_classifier), then
  float32 norms first and the matrices after.
- version 2: like version 1 plus an int32 group_size in the header; norms are float32, the matrices
  Q8_0 (int8 values, then one float32 scale per group), dequantised here to float32.

Writing these files (versions 0 and 2, for run.c and runq.c) is `formats/llama2c_export.py`, which shares the
layout constants below; the two directions are two modules so that each reads in one sitting.
"""
from __future__ import annotations

import heapq
import re
import struct
from pathlib import Path

import numpy as np
import torch

from ..core import LoadedModel
from ..model import GPT, GPTConfig

MAGIC = 0x616B3432  # "ak42"
TOKENIZER_FILE = "tokenizer.bin"  # llama2.c's default name, beside the model
HEADER_BYTES = 256  # versions 1 and 2
HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
HEADER_V0 = struct.Struct("<7i")  # the sizes; a negative vocab_size: the classifier is not shared
HEADER_V2 = struct.Struct("<Ii7iBi")  # magic, version, the sizes, shared_classifier, group_size (version 2 only)
MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
NORMS = ("rms_att", "rms_ffn", "rms_final")  # versions 1 and 2 put these first, in float32
VERSION0_ORDER = ("tok_emb", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final")  # run.c's
# llama2.c's per-layer weights as the parameters of the engine's block i (wq, wk and wv are the rows of attn.qkv);
# llama2.c's w2(silu(w1 x) * w3 x) is the engine's proj(silu(gate x) * fc x)
LAYER_PARAMS = {"rms_att": "norm1.weight", "wo": "attn.proj.weight", "rms_ffn": "norm2.weight",
                "w1": "mlp.gate.weight", "w2": "mlp.proj.weight", "w3": "mlp.fc.weight"}


class _Reader:
    """A cursor over the file's bytes that reads float32 and Q8_0 tensors, failing clearly when short."""

    def __init__(self, data: bytes, offset: int, path: Path):
        self.data, self.offset, self.path = data, offset, path

    def _take(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.offset + size > len(self.data):
            raise ValueError(f"{self.path} is truncated: the header's sizes need more than its "
                             f"{len(self.data):,} bytes; re-export or re-download the model")
        array = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += size
        return array

    def float32(self, *shape: int) -> torch.Tensor:
        return torch.from_numpy(self._take("<f4", int(np.prod(shape))).reshape(shape).copy())

    def q80(self, shape: tuple[int, ...], group_size: int) -> torch.Tensor:
        count = int(np.prod(shape))
        values = torch.from_numpy(self._take("i1", count).astype(np.float32))
        scales = torch.from_numpy(self._take("<f4", count // group_size).copy())
        return (values.view(-1, group_size) * scales[:, None]).view(shape)  # each group of 32 shares a scale

    def skip_float32(self, count: int) -> None:
        self._take("<f4", count)

    def finish(self) -> None:
        extra = len(self.data) - self.offset
        if extra:
            raise ValueError(f"{self.path} has {extra:,} bytes more than its header's sizes describe; "
                             f"the file is not a llama2.c export of this format or is corrupt")


def _read_header(data: bytes, path: Path) -> tuple[int, dict, int]:
    """(version, sizes, offset of the first weight) from the file's header."""
    if len(data) < 28:
        raise ValueError(f"{path} is too short ({len(data)} bytes) to be a llama2.c model")
    (magic,) = struct.unpack_from("<I", data, 0)
    if magic != MAGIC:  # version 0 has no magic: the file starts with the sizes
        sizes = dict(zip(HEADER_FIELDS, HEADER_V0.unpack_from(data)))
        sizes["shared_classifier"] = sizes["vocab_size"] > 0
        sizes["vocab_size"] = abs(sizes["vocab_size"])
        version, offset = 0, 28
    else:
        if len(data) < HEADER_BYTES:
            raise ValueError(f"{path} is truncated inside its {HEADER_BYTES}-byte header")
        (version,) = struct.unpack_from("<i", data, 4)
        if version not in (1, 2):
            raise ValueError(f"{path} is llama2.c export version {version}; TinyTales reads versions 0, 1 "
                             f"and 2 (export with `python export.py --version 2 ...`)")
        _, _, *values, shared, group_size = HEADER_V2.unpack_from(data)  # version 1: group_size is padding
        sizes = dict(zip(HEADER_FIELDS, values), shared_classifier=bool(shared))
        if version == 2:
            sizes["group_size"] = group_size
        offset = HEADER_BYTES
    _check_sizes(sizes, version, path)
    return version, sizes, offset


def _check_sizes(s: dict, version: int, path: Path) -> None:
    def need(ok: bool, what: str):
        if not ok:
            hint = " (a version-0 file starts with dim; is this a llama2.c model at all?)" if version == 0 else ""
            raise ValueError(f"{path}: invalid llama2.c header: {what}{hint}")

    for name in HEADER_FIELDS:
        need(0 < s[name] < 1 << 24, f"{name} = {s[name]}")
    need(s["dim"] % s["n_heads"] == 0, f"dim {s['dim']} is not divisible by n_heads {s['n_heads']}")
    need(s["n_heads"] % s["n_kv_heads"] == 0, f"n_heads {s['n_heads']} is not a multiple of n_kv_heads {s['n_kv_heads']}")
    need((s["dim"] // s["n_heads"]) % 2 == 0, f"head size {s['dim'] // s['n_heads']} is odd (RoPE needs pairs)")
    if version == 2:
        group = s["group_size"]
        # every matrix has dim as one side, so groups never straddle two tensors
        need(group > 0 and s["dim"] % group == 0, f"group_size {group} does not divide dim {s['dim']}")


def expected_file_bytes(version: int, s: dict) -> int:
    """The size of a file with this header: the header, then every tensor the sizes imply."""
    L, dim, hidden, vocab = s["n_layers"], s["dim"], s["hidden_dim"], s["vocab_size"]
    head = dim // s["n_heads"]
    kv_dim = s["n_kv_heads"] * head
    per_layer = 2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim
    norms = 2 * L * dim + dim
    matrices = vocab * dim + L * per_layer + (0 if s["shared_classifier"] else vocab * dim)
    if version == 0:  # + freq_cis (real and imag) of max_seq_len positions
        return 28 + 4 * (norms + matrices + s["max_seq_len"] * head)
    if version == 1:
        return HEADER_BYTES + 4 * (norms + matrices)
    return HEADER_BYTES + 4 * norms + matrices + 4 * (matrices // s["group_size"])  # int8 values + scales


def _check_file_size(data: bytes, version: int, s: dict, path: Path) -> None:
    """The header's sizes must account for the file's bytes exactly, before anything is allocated."""
    expected = expected_file_bytes(version, s)
    if len(data) < expected:
        raise ValueError(f"{path} is truncated: the header's sizes need {expected:,} bytes but the file has "
                         f"{len(data):,}; re-export or re-download the model")
    if len(data) > expected:
        raise ValueError(f"{path} has {len(data) - expected:,} bytes more than its header's sizes describe; "
                         f"the file is not a llama2.c export of this format or is corrupt")


def _read_weights(data: bytes, path: Path) -> tuple[int, dict, dict[str, torch.Tensor]]:
    """Every weight in llama2.c's names: norms (L, dim), matrices (L, out, in), tok_emb, wcls."""
    version, s, offset = _read_header(data, path)
    _check_file_size(data, version, s, path)
    _gpt_config(s, path)  # sizes the engine accepts, checked before any tensor is made
    shapes = tensor_shapes(s)
    read = _Reader(data, offset, path)
    w: dict[str, torch.Tensor] = {}
    if version == 0:  # run.c's memory_map_weights order
        for name in VERSION0_ORDER:
            w[name] = read.float32(*shapes[name])
        read.skip_float32(s["max_seq_len"] * (s["dim"] // s["n_heads"]))  # freq_cis real and imag: (T, hs/2) each
        if not s["shared_classifier"]:
            w["wcls"] = read.float32(*shapes["wcls"])
    else:  # versions 1 and 2: norms (float32) first, then the matrices, one tensor per layer
        for name in NORMS:
            w[name] = read.float32(*shapes[name])
        if version == 1:
            matrix = read.float32
        else:
            def matrix(*shape):
                return read.q80(shape, s["group_size"])
        w["tok_emb"] = matrix(*shapes["tok_emb"])
        for name in MATRICES:
            w[name] = torch.stack([matrix(*shapes[name][1:]) for _ in range(s["n_layers"])])
        if not s["shared_classifier"]:
            w["wcls"] = matrix(*shapes["wcls"])
    read.finish()
    return version, s, w


def tensor_shapes(s: dict) -> dict[str, tuple[int, ...]]:
    """The shape of every llama2.c tensor for a header's sizes; per-layer ones (layers, ...), matrices (out, in)."""
    L, dim, hidden, vocab = s["n_layers"], s["dim"], s["hidden_dim"], s["vocab_size"]
    kv_dim = s["n_kv_heads"] * (dim // s["n_heads"])
    return {"tok_emb": (vocab, dim), "rms_att": (L, dim), "rms_ffn": (L, dim), "rms_final": (dim,),
            "wq": (L, dim, dim), "wk": (L, kv_dim, dim), "wv": (L, kv_dim, dim), "wo": (L, dim, dim),
            "w1": (L, hidden, dim), "w2": (L, dim, hidden), "w3": (L, hidden, dim), "wcls": (vocab, dim)}


def _gpt_config(s: dict, path: Path | None = None) -> GPTConfig:
    try:
        return GPTConfig(
            vocab_size=s["vocab_size"], context_length=s["max_seq_len"], n_layer=s["n_layers"],
            n_head=s["n_heads"], n_kv_head=s["n_kv_heads"], n_embd=s["dim"], mlp_hidden=s["hidden_dim"],
            bias=False, norm="rmsnorm", norm_eps=1e-5, activation="swiglu", position="rope",
            tie_embeddings=s["shared_classifier"],
        )
    except ValueError as e:
        raise ValueError(f"{path}: the llama2.c header's sizes are refused: {e}") from e


def _build_gpt(s: dict, w: dict[str, torch.Tensor]) -> GPT:
    config = _gpt_config(s)
    state = {"tok_emb.weight": w["tok_emb"], "norm_f.weight": w["rms_final"]}
    for i in range(config.n_layer):
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([w["wq"][i], w["wk"][i], w["wv"][i]])  # rows q, k, v
        for name, param in LAYER_PARAMS.items():
            state[f"blocks.{i}.{param}"] = w[name][i]
    if "wcls" in w:
        state["lm_head.weight"] = w["wcls"]
    model = GPT(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - ({"lm_head.weight"} if config.tie_embeddings else set())
    assert not missing and not unexpected, (missing, unexpected)  # the mapping above covers every weight
    return model


def find_tokenizer(model_path: Path, vocab_size: int) -> Path:
    """The tokenizer beside a model: tokenizer.bin or tok{vocab_size}.bin (llama2.c's names)."""
    candidates = [model_path.parent / TOKENIZER_FILE, model_path.parent / f"tok{vocab_size}.bin"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no llama2.c tokenizer for {model_path}: looked for "
                            f"{' and '.join(str(c) for c in candidates)}; pass its path with --tokenizer")


def load_llama2c(path, tokenizer_path=None, device="cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a llama2.c `.bin` model (export version 0, 1 or 2) and its tokenizer as a TinyTales model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"llama2.c model not found: {path}")
    version, sizes, weights = _read_weights(path.read_bytes(), path)
    model = _build_gpt(sizes, weights)
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else find_tokenizer(path, sizes["vocab_size"])
    tokenizer = Llama2cTokenizer.from_file(tokenizer_path)
    if tokenizer.vocab_size != sizes["vocab_size"]:
        raise ValueError(f"{tokenizer_path} has {tokenizer.vocab_size} tokens but {path} has a vocabulary of "
                         f"{sizes['vocab_size']}; pass the model's own tokenizer with --tokenizer")
    model.to(device=device, dtype=dtype).eval()
    card = {"name": path.stem, "source": "llama2.c", "export_version": version, "tokenizer": str(tokenizer_path),
            "weights": "Q8_0 dequantised to float" if version == 2 else "float32"}
    return LoadedModel(model, tokenizer, path, card)


class Llama2cTokenizer:
    """llama2.c's SentencePiece-style BPE read from `tokenizer.bin`, encoding exactly as run.c does.

    Ids 0, 1, 2 are <unk>, <s> (BOS) and </s>; ids 3..258 stand for the bytes 0x00..0xFF.
    llama2.c's TinyStories data puts BOS before every story and no EOS after it, and run.c ends a
    story when it samples BOS, so BOS is also the end-of-story token here: eot_id == bos_id == 1.
    In TinyTales' own exports (`llama2c_export`) ids 0 and 2 are ordinary tokens, so `skip_special` skips
    only the ones among 0, 1, 2 whose piece looks like a marker (`<unk>`, `\n<s>\n`, `<|endoftext|>`).
    """

    unk_id, bos_id, eos_id = 0, 1, 2
    eot_id = 1
    BYTE_OFFSET = 3

    def __init__(self, pieces: list[bytes], scores: list[float], path: Path | None = None):
        self.pieces, self.scores, self.path = pieces, scores, path
        self.ids: dict[bytes, int] = {}
        for i, piece in enumerate(pieces):
            self.ids.setdefault(piece, i)
        self.special_ids = {i for i in (self.unk_id, self.bos_id, self.eos_id)
                            if i < len(pieces) and re.fullmatch(rb"\s*<[^<>\s]+>\s*", pieces[i])}
        self.byte_values: dict[int, int] = {}  # id of a <0xXX> token -> its byte
        for i, piece in enumerate(pieces):
            match = re.fullmatch(rb"<0x([0-9A-Fa-f]{2})>", piece)
            if match:
                self.byte_values[i] = int(match.group(1), 16)

    @classmethod
    def from_file(cls, path) -> "Llama2cTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"llama2.c tokenizer not found: {path}")
        data = path.read_bytes()
        pieces, scores, offset = [], [], 4  # int32 max_token_length first (not needed)
        try:
            while offset < len(data):
                score, length = struct.unpack_from("<fi", data, offset)
                if length < 0 or offset + 8 + length > len(data):
                    raise struct.error(f"token {len(pieces)} claims {length} bytes")
                pieces.append(data[offset + 8: offset + 8 + length])
                scores.append(score)
                offset += 8 + length
        except struct.error as e:
            raise ValueError(f"{path} is not a llama2.c tokenizer.bin or is truncated ({e})") from e
        if len(pieces) < 259:
            raise ValueError(f"{path} has {len(pieces)} tokens; a llama2.c tokenizer has at least 259 "
                             f"(<unk>, <s>, </s> and 256 byte tokens)")
        return cls(pieces, scores, path)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        """run.c's encode: dummy-prefix space, one token per UTF-8 character (or its bytes), then
        repeatedly merge the adjacent pair whose merged piece has the highest score (leftmost on ties).

        A heap over the adjacent pairs gives the same merges as run.c's rescans, in O(n log n).
        """
        if not text:
            return []
        tokens = []
        for char in " " + text:
            piece = char.encode("utf-8")
            if piece in self.ids:
                tokens.append(self.ids[piece])
            else:
                tokens.extend(b + self.BYTE_OFFSET for b in piece)
        n = len(tokens)
        next_, prev, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        heap: list[tuple] = []

        def push(i: int) -> None:  # the pair starting at node i, if it merges into a known piece
            j = next_[i] if i >= 0 else n
            if i < 0 or j >= n:
                return
            merged = self.ids.get(self.pieces[tokens[i]] + self.pieces[tokens[j]])
            if merged is not None:
                heapq.heappush(heap, (-self.scores[merged], i, j, merged, tokens[i], tokens[j]))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, j, merged, left, right = heapq.heappop(heap)
            if not (alive[i] and alive[j] and next_[i] == j and tokens[i] == left and tokens[j] == right):
                continue  # stale: one side was merged into something else since
            tokens[i], alive[j] = merged, False
            next_[i] = next_[j]
            if next_[j] < n:
                prev[next_[j]] = i
            push(prev[i])
            push(i)
        return [t for t, keep in zip(tokens, alive) if keep]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of ids, as run.c prints it: the space after BOS is dropped, byte tokens become bytes."""
        out, prev = bytearray(), None
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.pieces):
                raise ValueError(f"token id {i} is outside the vocabulary of {len(self.pieces)}")
            piece = self.pieces[i]
            if prev == self.bos_id and piece.startswith(b" "):
                piece = piece[1:]  # SentencePiece's decoder strips the dummy-prefix space after BOS
            prev = i
            if i in self.byte_values:
                piece = bytes([self.byte_values[i]])
            elif skip_special and i in self.special_ids:
                continue
            out += piece
        return out.decode("utf-8", errors="replace")

    def save(self, directory):
        raise ValueError("llama2.c tokenizers are not saved into TinyTales model directories; keep the "
                         f"model's tokenizer.bin ({self.path}) beside the .bin model instead")
