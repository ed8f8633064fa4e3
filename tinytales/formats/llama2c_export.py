"""Llama-style TinyTales models as llama2.c files: run.c's float32 `.bin` (export version 0) or runq.c's Q8_0
(version 2), with a `tokenizer.bin` beside it. The reader of these files is `formats/llama2c.py`; this module
shares its layout constants and writes what llama2.c's `export.py` writes.

What run.c computes, so what a model must be to export (anything else is refused, naming what does not fit):
RoPE with theta 10000 on consecutive pairs (2i, 2i+1) within each head (the engine's own pairing: the q and k rows
are written as they are), RMSNorm with eps 1e-5, a SwiGLU MLP, no biases, no QK-norm. Grouped-query attention
(n_kv_heads) and an untied classifier (a negative vocab_size in the header) are llama2.c's too.

Token ids. run.c starts every text with id 1 (BOS) and stops when it samples 1, so the end-of-story token becomes
id 1. The 256 byte tokens take ids 3..258, llama2.c's byte-fallback ids, so that run.c's encoder falls back to the
right token for a character that is not a token of its own. The other tokens follow in their order; the last two of
them take the free ids 0 and 2. The rows of the embedding and of the classifier are permuted the same way; rows the
model has beyond its tokenizer's tokens (which TinyTales never samples, and run.c would) are left out.

tokenizer.bin. Each piece is the token's raw bytes (the byte-level BPE's "Ġ" is a space); byte 0 is written
"<0x00>", which run.c decodes to that byte, as its pieces are C strings. A token's score is minus its id, so that
run.c's encoder, which merges the pair of highest score, merges in the BPE's order. What run.c prints differs from
TinyTales' text in these cases (its `decode` and `safe_printf`):
- a piece of a single byte is printed only when it is printable ASCII or whitespace: a character whose UTF-8 bytes
  the model emits as tokens of one byte each loses those bytes. Pieces of two bytes or more, whole characters or
  parts of one, are printed raw, so consecutive pieces join into the right characters;
- after BOS it drops a leading space of the first piece (SentencePiece's rule);
- a prompt (`-i`) gets a leading space (SentencePiece's dummy prefix) that TinyTales does not add: run.c reads
  " Once upon a time" where TinyTales reads "Once upon a time". Its merges by score then give the BPE's tokens of
  " " + prompt (measured: 100 of 100 validation stories). A story from an empty prompt (`-i ""`) is exact.
"""
from __future__ import annotations

import struct
from pathlib import Path

import torch

from ..core import LoadedModel, atomic_file
from ..model import GPT, GPTConfig
from .llama2c import (HEADER_BYTES, HEADER_V0, HEADER_V2, LAYER_PARAMS, MAGIC, MATRICES, NORMS, TOKENIZER_FILE,
                      VERSION0_ORDER, Llama2cTokenizer, expected_file_bytes, tensor_shapes)

QUANTIZATIONS = ("q8_0",)
LLAMA2C_EOT = 1  # run.c's BOS: it starts and separates stories
# what run.c hard-codes (RoPE theta 10000 and RMSNorm eps 1e-5 in its source)
RUN_C_COMPUTES = {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False, "qk_norm": False,
                  "rope_theta": 10000.0, "norm_eps": 1e-5}


def check_runs_in_llama2c(config: GPTConfig) -> None:
    """A ValueError naming every option of the model that llama2.c's run.c does not compute."""
    wrong = [f"{name}={getattr(config, name)!r}" for name, value in RUN_C_COMPUTES.items()
             if getattr(config, name) != value]
    if wrong:
        raise ValueError(f"cannot export to llama2.c: run.c computes RoPE (theta 10000), RMSNorm (eps 1e-5) and "
                         f"SwiGLU without biases or qk_norm, but this model has {', '.join(wrong)}; export it with "
                         f"--format hf instead, or train a model with those options")


def llama2c_vocabulary(tokenizer, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """(pieces, scores, order) of tokenizer.bin, by llama2.c id; `order[j]` is the model's id of llama2.c's id j.
    One id per token of the tokenizer: a model's `vocab_size` may be larger (rows never sampled)."""
    if isinstance(tokenizer, Llama2cTokenizer):  # a llama2.c model exported again: its ids and pieces as they are
        if tokenizer.vocab_size != vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {vocab_size}; pass "
                             f"the model's own tokenizer.bin")
        return list(tokenizer.pieces), list(tokenizer.scores), list(range(vocab_size))
    if not hasattr(tokenizer, "token_bytes"):
        raise ValueError(f"cannot export to llama2.c: the model's tokenizer ({type(tokenizer).__name__}) does not "
                         f"give the bytes of its tokens; byte-level BPE tokenizers (TinyTales' own, GPT-2's) do")
    ours = tokenizer.token_bytes()
    if len(ours) > vocab_size:
        raise ValueError(f"the tokenizer has {len(ours)} tokens but the model only {vocab_size}; pass its own "
                         f"tokenizer")
    eot = tokenizer.eot_id
    byte_ids: dict[int, int] = {}
    for i, piece in enumerate(ours):
        if len(piece) == 1 and i != eot:
            byte_ids.setdefault(piece[0], i)
        elif piece.startswith(b"<0x") or b"\0" in piece:
            raise ValueError(f"cannot export to llama2.c: token {i} ({piece!r}) would print as something else in "
                             f"run.c (it reads pieces as C strings and <0xHH> as one byte)")
    missing = [b for b in range(256) if b not in byte_ids]
    if missing or len(ours) < 259:
        raise ValueError(f"cannot export to llama2.c: its vocabulary needs a token for each of the 256 bytes and at "
                         f"least 259 tokens, but this one has {len(ours)} tokens and none for {len(missing)} bytes")
    by_byte = [byte_ids[b] for b in range(256)]
    rest = sorted(set(range(len(ours))) - {eot, *by_byte})
    order = [rest[-2], eot, rest[-1], *by_byte, *rest[:-2]]
    pieces = [b"<0x00>" if ours[i] == b"\0" else ours[i] for i in order]
    return pieces, [-float(i) for i in order], order


def llama2c_weights(model: GPT, order: list[int]) -> dict[str, torch.Tensor]:
    """Every weight in llama2.c's names and shapes (`tensor_shapes`), the vocabulary's rows in llama2.c's id order."""
    c = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    q, kv = c.n_embd, c.n_kv_head * c.head_dim

    def layers(param: str, rows: slice = slice(None)) -> torch.Tensor:  # (layers, ...)
        return torch.stack([state[f"blocks.{i}.{param}"][rows] for i in range(c.n_layer)])

    w = {name: layers(param) for name, param in LAYER_PARAMS.items()}
    w["wq"], w["wk"], w["wv"] = (layers("attn.qkv.weight", rows)  # the qkv rows: q heads, then k, then v
                                 for rows in (slice(0, q), slice(q, q + kv), slice(q + kv, None)))
    rows = torch.tensor(order)
    w["tok_emb"], w["rms_final"] = state["tok_emb.weight"][rows], state["norm_f.weight"]
    if not c.tie_embeddings:
        w["wcls"] = state["lm_head.weight"][rows]
    return w


def _sizes(config: GPTConfig, vocab_size: int) -> dict:
    return {"dim": config.n_embd, "hidden_dim": config.mlp_hidden, "n_layers": config.n_layer,
            "n_heads": config.n_head, "n_kv_heads": config.n_kv_head, "vocab_size": vocab_size,
            "max_seq_len": config.context_length, "shared_classifier": config.tie_embeddings}


def _float32(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().astype("<f4").tobytes()


def quantize_q80(t: torch.Tensor, group_size: int) -> bytes:
    """export.py's Q8_0 of one tensor: for each group of `group_size` values, scale = max |w| / 127 and the int8
    round(w / scale); all the int8 values, then all the float32 scales."""
    groups = t.reshape(-1, group_size)
    scale = groups.abs().amax(dim=1) / 127.0  # (groups,)
    values = torch.round(groups / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None])  # a group of zeros: 0
    return values.to(torch.int8).numpy().tobytes() + _float32(scale)


def q80_group_size(dim: int, hidden_dim: int, preferred: int = 64) -> int:
    """export.py's group size (64), halved until it divides dim and hidden_dim: runq.c quantizes the inputs of
    every matrix (dim or hidden_dim values) in whole groups."""
    group = preferred
    while dim % group or hidden_dim % group:
        group //= 2
    return group


def _write_version0(f, s: dict, w: dict[str, torch.Tensor], model: GPT) -> None:
    vocab = s["vocab_size"] if s["shared_classifier"] else -s["vocab_size"]
    f.write(HEADER_V0.pack(*(s[k] for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads")), vocab,
                           s["max_seq_len"]))
    for name in VERSION0_ORDER:
        f.write(_float32(w[name]))
    f.write(_float32(model.rope_cos.cpu()) + _float32(model.rope_sin.cpu()))  # freq_cis real, imag: run.c skips them
    if not s["shared_classifier"]:
        f.write(_float32(w["wcls"]))


def _write_version2(f, s: dict, w: dict[str, torch.Tensor], group_size: int) -> None:
    sizes = (s[k] for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"))
    f.write(HEADER_V2.pack(MAGIC, 2, *sizes, s["shared_classifier"], group_size).ljust(HEADER_BYTES, b"\0"))
    for name in NORMS:
        f.write(_float32(w[name]))
    matrices = [w["tok_emb"], *(w[name][i] for name in MATRICES for i in range(s["n_layers"]))]
    for matrix in matrices + ([] if s["shared_classifier"] else [w["wcls"]]):
        f.write(quantize_q80(matrix, group_size))


def tokenizer_file_bytes(pieces: list[bytes], scores: list[float]) -> bytes:
    """tokenizer.bin: int32 max_token_length, then for each id float32 score, int32 length, the piece's bytes."""
    parts = [struct.pack("<i", max(len(p) for p in pieces))]
    parts += [struct.pack("<fi", score, len(piece)) + piece for piece, score in zip(pieces, scores)]
    return b"".join(parts)


def _check_out(out: Path, tokenizer_bytes: bytes, overwrite: bool) -> Path:
    """The tokenizer's path beside `out`; a ValueError for an `out` that is not a .bin file, or (unless overwrite)
    that exists, or beside a tokenizer.bin of other bytes (one of the same bytes is shared: a float32 and a Q8_0
    export of one model can sit in one folder)."""
    if out.suffix != ".bin" or out.name == TOKENIZER_FILE or out.is_dir():
        raise ValueError(f"--out {out} must be the model's .bin file, not named {TOKENIZER_FILE} (which is written "
                         f"beside it), e.g. --out exported/model.bin")
    tokenizer_path = out.parent / TOKENIZER_FILE
    if not overwrite and out.exists():
        raise ValueError(f"{out} already exists; choose another --out, or pass --force to replace it")
    if not overwrite and tokenizer_path.is_file() and tokenizer_path.read_bytes() != tokenizer_bytes:
        raise ValueError(f"{tokenizer_path} already exists and is another model's tokenizer; choose another folder "
                         f"for --out, or pass --force to replace it")
    return tokenizer_path


def export_llama2c(model, out, quantize: str | None = None, tokenizer=None, group_size: int = 64,
                   overwrite: bool = False) -> dict:
    """Write `out` (a .bin file) for llama2.c's run.c (float32, version 0) or, with quantize="q8_0", for runq.c
    (version 2, Q8_0 in groups of `group_size`), and tokenizer.bin beside it; returns what was written.

    `model`: a LoadedModel, or a GPT with its `tokenizer`. Each file is written whole or not at all (`atomic_file`);
    an existing model file, or a tokenizer.bin of other bytes, is replaced only with `overwrite` (the CLI's --force).
    """
    if isinstance(model, LoadedModel):
        model, tokenizer = model.model, tokenizer or model.tokenizer
    elif tokenizer is None:
        raise ValueError("export_llama2c(model) needs the model's tokenizer: export_llama2c(model, out, tokenizer=tok)")
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"--quantize must be {' or '.join(QUANTIZATIONS)} (or left out for float32), got {quantize!r}")
    if not isinstance(model, GPT):
        raise ValueError(f"cannot export a {type(model).__name__} to llama2.c: only TinyTales models do")
    check_runs_in_llama2c(model.config)
    out = Path(out)
    pieces, scores, order = llama2c_vocabulary(tokenizer, model.config.vocab_size)
    tokenizer_bytes = tokenizer_file_bytes(pieces, scores)
    tokenizer_path = _check_out(out, tokenizer_bytes, overwrite)
    s, w = _sizes(model.config, len(order)), llama2c_weights(model, order)
    assert all(w[name].shape == shape for name, shape in tensor_shapes(s).items() if name in w)
    version = 2 if quantize else 0
    if quantize:
        s["group_size"] = group_size = q80_group_size(s["dim"], s["hidden_dim"], group_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as f, atomic_file(tokenizer_path) as t:  # both written, then both renamed
        if quantize:
            _write_version2(f, s, w, group_size)
        else:
            _write_version0(f, s, w, model)
        assert f.tell() == expected_file_bytes(version, s)  # the reader's account of the layout
        t.write(tokenizer_bytes)
    return {"model": str(out), "tokenizer": str(tokenizer_path), "version": version,
            "weights": "Q8_0" if quantize else "float32", "group_size": group_size if quantize else None,
            "bytes": out.stat().st_size, "tokenizer_bytes": tokenizer_path.stat().st_size,
            "vocab_size": s["vocab_size"], "eot_id": LLAMA2C_EOT, "parameters": model.num_params()}
