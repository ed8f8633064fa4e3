"""A small GPT in plain PyTorch, the reference: config, attention, MLP, block, model, KV cache.

The default architecture is GPT-2's (learned positions, pre-LayerNorm, GELU MLP, tied
embeddings). Options switch on the Llama-style parts (RoPE, RMSNorm, SwiGLU or ReLU²,
grouped-query attention, QK-norm) so that llama2.c models run in the same engine.

One forward path. The fast paths live elsewhere, each checked against this one: the training attention
and loss kernels in `tinytales.kernels` (`attention`, `lm_loss`), the single-token decoding steps
(C and PyTorch) in `tinytales.decoding`, which the generation engine chooses once per cache.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import attention, lm_loss

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "swiglu", "relu2")
POSITIONS = ("learned", "rope")


# Bounds far above any TinyTales model (GPT-2 XL: 1600 wide, 48 layers, 50,257 tokens, 1,024 positions) that keep a
# corrupt or hostile config from allocating tens of GB before its weights are even read.
LIMITS = {"vocab_size": 1 << 20, "context_length": 1 << 16, "n_layer": 256, "n_head": 1024, "n_kv_head": 1024,
          "n_embd": 16384, "mlp_hidden": 1 << 17}
MAX_ROPE_FLOATS = 1 << 26  # context_length x head_dim: 256 MB of cos + sin tables in float32
MAX_PARAMS = 1 << 31  # 2.1 billion parameters, 8 GB in float32


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    context_length: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    n_kv_head: int | None = None  # None: same as n_head (no grouped-query attention)
    mlp_hidden: int | None = None  # None: 4 * n_embd (gelu, relu2) or 8/3 * n_embd (swiglu)
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"
    position: str = "learned"
    rope_theta: float = 10000.0
    qk_norm: bool = False
    tie_embeddings: bool = True

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(f"invalid model config: {message}")

        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)  # true is not 1 layer

        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd", "n_kv_head", "mlp_hidden"):
            value = getattr(self, name)
            if value is None and name in ("n_kv_head", "mlp_hidden"):
                continue
            need(integer(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")
            need(value <= LIMITS[name], f"{name} = {value:,} is above the limit of {LIMITS[name]:,}; "
                 f"the config is corrupt or not a TinyTales model")
        for name in ("dropout", "norm_eps", "rope_theta"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                 f"{name} must be a number, got {value!r}")
        need(self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}")
        need(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
        for name in ("bias", "qk_norm", "tie_embeddings"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        need(self.n_embd % self.n_head == 0,
             f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        need(self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0,
             f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}")
        need(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        need(self.position in POSITIONS, f"position must be one of {POSITIONS}, got {self.position!r}")
        need(self.position != "rope" or self.head_dim % 2 == 0, "RoPE needs an even head size")
        if self.mlp_hidden is None:
            self.mlp_hidden = 4 * self.n_embd if self.activation != "swiglu" else _swiglu_hidden(self.n_embd)
        if self.position == "rope":  # cos and sin tables: context_length x head_dim / 2 floats each
            need(self.context_length * self.head_dim <= MAX_ROPE_FLOATS,
                 f"context_length {self.context_length:,} x head size {self.head_dim} needs RoPE tables of "
                 f"{self.context_length * self.head_dim:,} floats, above the limit of {MAX_ROPE_FLOATS:,}")
        params = self.estimated_params()
        need(params <= MAX_PARAMS, f"these sizes make {params:,} parameters, above the limit of {MAX_PARAMS:,} "
             f"(~{4 * MAX_PARAMS / 2**30:.0f} GB in float32); the config is corrupt or far too large")

    def estimated_params(self) -> int:
        """The parameter count these sizes imply, computed without building the model."""
        d, hs, kv = self.n_embd, self.head_dim, self.n_kv_head or self.n_head
        attention = d * (d + 2 * kv * hs) + d * d
        mlp = (3 if self.activation == "swiglu" else 2) * d * (self.mlp_hidden or 4 * d)
        head = 0 if self.tie_embeddings else self.vocab_size * d
        positions = self.context_length * d if self.position == "learned" else 0
        return self.n_layer * (attention + mlp) + self.vocab_size * d + head + positions

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"invalid model config: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def _swiglu_hidden(n_embd: int) -> int:
    hidden = int(8 * n_embd / 3)
    return 32 * math.ceil(hidden / 32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hs/2) for rotating consecutive pairs (2i, 2i+1), as llama2.c does."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (hs/2,)
    angles = torch.outer(torch.arange(length).float(), freqs)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[2i], x[2i+1]) of x (B, T, heads, hs) by rotation = cos + i sin (T, hs/2), complex64.

    One complex product (real * cos - imag * sin, real * sin + imag * cos) for all heads at once.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, T, heads, hs/2)
    return torch.view_as_real(pairs * rotation[:, None, :]).flatten(-2).type_as(x)


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding.

    `length` is the number of positions already filled; the model appends at that offset.
    Beam search reorders the batch dimension with `reorder`.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_length: int, device=None, dtype=None):
        shape = (config.n_layer, batch_size, config.n_kv_head, max_length, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_length = max_length

    @property
    def batch_size(self) -> int:
        return self.keys.size(1)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nkv, T, hs) at the current offset; return all keys/values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_length:
            raise ValueError(f"KV cache is full: {end} positions needed, {self.max_length} allocated")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def row(self, index: int, length: int = 0) -> "KVCache":
        """Row `index` as a cache of one row filled up to `length`, sharing this cache's memory (continuous
        batching reads a story's prompt into its row with the plain forward)."""
        view = KVCache.__new__(KVCache)
        view.keys, view.values = self.keys[:, index:index + 1], self.values[:, index:index + 1]
        view.length, view.max_length = length, self.max_length
        return view

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Row b takes row batch_index[b]'s keys and values; only rows that change and filled positions are copied.

        Row by row with copy_ (a strided memcpy), each row overwritten only after the rows copied from it
        (a row on a cycle of moves is read from a copy): advanced indexing of the same rows took 3-4x
        longer (132-170 against 43 us with 4 beams, 3 rows moved, 110 positions).
        """
        pending = {row: source for row, source in enumerate(batch_index.tolist()) if source != row}
        filled = self.length
        stores = (self.keys, self.values)  # each (layers, B, nkv, max_length, hs)
        readers = Counter(source for source in pending.values())  # pending moves that read each row
        saved: dict[int, list[torch.Tensor]] = {}  # rows read from a copy (cycles of moves)
        while pending:
            row = next((r for r in pending if not readers[r]), None)
            if row is None:  # every pending row is still read by another move: a cycle; copy one of them aside
                row = next(iter(pending))
                saved[row] = [store[:, row, :, :filled].clone() for store in stores]
                readers[row] = 0
            source = pending.pop(row)
            for k, store in enumerate(stores):
                store[:, row, :, :filled].copy_(saved[source][k] if source in saved else store[:, source, :, :filled])
            readers[source] -= 1


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        qkv_dim = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.qkv = nn.Linear(config.n_embd, qkv_dim, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        if config.qk_norm:
            self.q_norm = make_norm(config, config.head_dim)
            self.k_norm = make_norm(config, config.head_dim)
        else:
            self.q_norm = self.k_norm = None

    def heads(self, qkv: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, nh, T, hs), k and v (B, nkv, T, hs) from the qkv projection (B, T, (nh + 2 nkv) hs)."""
        B, T, _ = qkv.shape
        nh, nkv = self.n_head, self.n_kv_head
        heads = qkv.view(B, T, nh + 2 * nkv, self.head_dim)  # (B, T, heads, hs): q heads, k heads, v heads
        qk, v = heads[:, :, :nh + nkv], heads[:, :, nh + nkv:]
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :, :nh]), self.k_norm(qk[:, :, nh:])), dim=2)
        if rope is not None:
            qk = apply_rope(qk, rope)  # queries and keys in one product
        return qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, rope=None, cache: KVCache | None = None, key_padding_mask=None):
        B, T, C = x.size()
        q, k, v = self.heads(self.qkv(x), rope)
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.store(self.layer, k, v)  # (B, nkv, past + T, hs)
        mask = _attention_mask(T, past, key_padding_mask, x.device)
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return dropout_if_training(self.proj(y), self.dropout, self.training)


def _attention_mask(T: int, past: int, key_padding_mask, device):
    """None when plain causal attention (or a single new query) is enough; else a boolean mask."""
    if key_padding_mask is None and (past == 0 or T == 1):
        return None
    allowed = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)  # (T, past+T)
    if key_padding_mask is not None:
        # key_padding_mask: (B, past+T), True for real tokens
        allowed = allowed[None, None] & key_padding_mask[:, None, None, :].bool()  # (B, 1, T, past+T)
        allowed = allowed | ~allowed.any(-1, keepdim=True)  # rows of pure padding attend anywhere (no NaN)
    return allowed


def dropout_if_training(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(x, p, training=True) if p and training else x  # no call at all when decoding


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.activation = config.activation
        self.fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias) if config.activation == "swiglu" else None
        self.proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x):
        return dropout_if_training(self.proj(activate(self.activation, x, self.fc, self.gate)), self.dropout,
                                   self.training)


def activate(activation: str, x: torch.Tensor, up, gate) -> torch.Tensor:
    """The MLP's hidden layer from its up (fc) and gate projections (callables: an nn.Linear, or the PyTorch step's products)."""
    if activation == "swiglu":
        return F.silu(gate(x)) * up(x)
    if activation == "relu2":
        return F.relu(up(x)).square()
    return F.gelu(up(x), approximate="tanh")


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache=None, key_padding_mask=None):
        x = x + self.attn(self.norm1(x), rope, cache, key_padding_mask)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.context_length, config.n_embd) if config.position == "learned" else None
        self.dropout = config.dropout
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if config.position == "rope":
            cos, sin = rope_tables(config.head_dim, config.context_length, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, embeddings: bool = True) -> int:
        """Parameters counted once (tied weights once); without embeddings drops token/position tables."""
        total = sum(p.numel() for p in self.parameters())
        if not embeddings:
            total -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                total -= self.pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    def hidden_states(self, idx, cache: KVCache | None = None, attention_mask=None):
        """Final normalised hidden states (B, T, C) for token ids idx (B, T)."""
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        self.check_length(start + T)
        x, rope = self.embed(idx, start)
        x = dropout_if_training(x, self.dropout, self.training)
        for block in self.blocks:
            x = block(x, rope, cache, attention_mask)
        if cache is not None:
            cache.length += T
        return self.norm_f(x)

    def check_length(self, length: int) -> None:
        if length > self.config.context_length:
            raise ValueError(
                f"sequence of {length} tokens is longer than the model's context of {self.config.context_length}")

    def embed(self, idx: torch.Tensor, start: "int | torch.Tensor") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token (+ position) embeddings of idx (B, T) at positions start.., and the RoPE rotation (T, hs/2).

        `start` may also be one position per row (B,) for one token per row (T = 1): the rotation is then
        (B, 1, hs/2), one per row (decoding stories of different lengths together)."""
        T = idx.size(-1)
        x = F.embedding(idx, self.tok_emb.weight)  # (B, T, C)
        at = slice(start, start + T) if isinstance(start, int) else start  # (T,) positions, or (B,) with T = 1
        if self.pos_emb is not None:
            x = x + (self.pos_emb.weight[at] if isinstance(start, int) else self.pos_emb.weight[at][:, None])
        rope = None
        if self.config.position == "rope":
            rope = torch.complex(self.rope_cos[at].float(), self.rope_sin[at].float())
            if not isinstance(start, int):
                rope = rope[:, None, :]  # (B, 1, hs/2): apply_rope broadcasts it over the heads of each row
        return x, rope

    def forward(self, idx, targets=None, cache: KVCache | None = None, attention_mask=None, last_only=False):
        """Logits (B, T, V), or (B, 1, V) with last_only; with targets (B, T) the mean loss instead.

        With targets the logits are None: `kernels.lm_loss` computes the loss chunk by chunk from the hidden
        states and the (B, T, V) logits never exist (`fast_paths(loss_chunk_rows=0)` restores the plain
        path that returns them too). Targets equal to IGNORE_INDEX (padding) are ignored by the loss.
        """
        x = self.hidden_states(idx, cache, attention_mask)
        if targets is not None:
            return lm_loss(x, self.lm_head.weight, targets, self.lm_head)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x), None

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype=None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.config, batch_size, max_length or self.config.context_length, p.device, dtype or p.dtype)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices (>= 2-D), none on biases and norm weights."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
