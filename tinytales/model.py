"""A small GPT in plain PyTorch: config, attention, MLP, block, model, KV cache.

The default architecture is GPT-2's (learned positions, pre-LayerNorm, GELU MLP, tied
embeddings). Options switch on the Llama-style parts (RoPE, RMSNorm, SwiGLU or ReLU²,
grouped-query attention, QK-norm) so that llama2.c models run in the same engine.
"""
from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import decode_kernel

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "swiglu", "relu2")
POSITIONS = ("learned", "rope")


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

        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
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


TRANSPOSED_WEIGHT_MAX_ROWS = 4  # up to this many rows (beam search: 4 beams) use the transposed copy
TRANSPOSED_WEIGHT_MIN_BYTES = 16 * 2**20  # more rows use it only from this matrix size on


class Linear(nn.Linear):
    """nn.Linear that decodes faster on CPU: without gradients, up to 4 rows (more with a large matrix)
    are multiplied by a cached contiguous (in, out) copy of the float32 weight.

    MKL's float32 matrix-vector product over the (out, in) weight is slow on CPU: 6.4 ms against
    1.8 ms for the copy with GPT-2's 50K-vocabulary output matrix, 15-40 % on the layers' matrices,
    ~20 % on beam search with 4 beams (bench/, docs/performance.md). With 8 rows and small matrices
    the plain product is as fast.
    The copy is rebuilt whenever the weight changes (a new tensor or an in-place update) and costs
    one more copy of the weights in memory while decoding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() or x.device.type != "cpu" or self.weight.dtype != torch.float32
                or x.dtype != torch.float32):
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.size(-1))
        return decode_product(rows, self.weight, self.transposed_weight(), self.bias).view(*x.shape[:-1], -1)

    def transposed_weight(self) -> torch.Tensor:
        """The cached contiguous (in, out) copy of the weight, rebuilt when the weight has changed."""
        weight = self.weight
        cached = self.__dict__.get("_weight_t")
        if cached is None or not _same_version(cached[0], cached[1], weight):
            # hold the source tensor so that its memory cannot be reused by another weight meanwhile
            cached = (weight.detach(), weight._version, weight.detach().t().contiguous())  # (in, out)
            self.__dict__["_weight_t"] = cached
        return cached[2]


def decode_product(x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None):
    """x (N, in) times the weight (out, in) + bias, through weight_t = weight.T (contiguous) for few rows."""
    if x.size(0) > TRANSPOSED_WEIGHT_MAX_ROWS and weight.numel() * 4 < TRANSPOSED_WEIGHT_MIN_BYTES:
        return F.linear(x, weight, bias)
    return x @ weight_t if bias is None else torch.addmm(bias, x, weight_t)


def _same_version(source: torch.Tensor, version: int, weight: torch.Tensor) -> bool:
    # a new tensor (load, .to(), .data = ...) has new memory; an in-place update bumps the version
    return source.data_ptr() == weight.data_ptr() and version == weight._version and source.shape == weight.shape


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
        self.step_weights = None  # GPT.step's gathered weights, made at the first step

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
    cpu_causal_path = True  # False: CPU training goes through SDPA as well (bench/ measures both)

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        qkv_dim = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.qkv = Linear(config.n_embd, qkv_dim, bias=config.bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        if config.qk_norm:
            self.q_norm = make_norm(config, config.head_dim)
            self.k_norm = make_norm(config, config.head_dim)
        else:
            self.q_norm = self.k_norm = None

    def _heads(self, qkv: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        q, k, v = self._heads(self.qkv(x), rope)
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.store(self.layer, k, v)  # (B, nkv, past + T, hs)
        mask = _attention_mask(T, past, key_padding_mask, x.device)
        dropout = self.dropout if self.training else 0.0
        if (self.cpu_causal_path and mask is None and past == 0 and T > 1 and not dropout
                and self.n_kv_head == self.n_head and x.device.type == "cpu" and torch.is_grad_enabled()):
            y = causal_attention_cpu(q, k, v)  # training on CPU: faster than SDPA's kernel there
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, dropout_p=dropout,
                enable_gqa=self.n_kv_head != self.n_head,
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return dropout_if_training(self.proj(y), self.dropout, self.training)


ATTENTION_CHUNK_BYTES = 2 * 2**20  # float32 scores per chunk of (sequence, head) rows: stays in cache


class _CausalAttentionCPU(torch.autograd.Function):
    """Causal softmax(q k^T / sqrt(hs)) v and its gradients, a few (sequence, head) rows at a time.

    On CPU, SDPA's flash kernel runs the backward pass of these small heads at ~17 GFLOP/s
    (bench/: 27 ms per layer for 16 x 4 heads x 256 positions x 64 in bf16). Here each chunk is
    batched matmuls in the inputs' dtype (bf16 under autocast) with the scale and mask in their
    epilogue, and softmax and its backward accumulating in float32, the arithmetic of SDPA's math
    path up to bf16 rounding, with the chunk's scores (~2 MB) kept in cache. The
    probabilities are kept for backward in the inputs' dtype (B x nh x T x T: 8 MB per layer
    for 16 x 4 x 256 x 256 in bf16), which is what makes backward plain matmuls.
    """

    @staticmethod
    def forward(ctx, q, k, v):
        B, H, T, D = q.shape
        q, k, v = q.reshape(B * H, T, D), k.reshape(B * H, T, D), v.reshape(B * H, T, D)
        bias = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)  # causal mask
        rows = max(1, ATTENTION_CHUNK_BYTES // (T * T * 4))
        out = torch.empty_like(q)
        probs = torch.empty(B * H, T, T, dtype=q.dtype, device=q.device)
        for start in range(0, B * H, rows):
            r = slice(start, start + rows)
            # scale and mask in the product's epilogue; softmax accumulates in float32 for bf16 inputs
            scores = torch.baddbmm(bias, q[r], k[r].transpose(1, 2), alpha=D ** -0.5)  # (n, T, T)
            probs[r] = scores.softmax(-1)
            torch.bmm(probs[r], v[r], out=out[r])
        ctx.save_for_backward(q, k, v, probs)
        ctx.rows, ctx.shape = rows, (B, H, T, D)
        return out.view(B, H, T, D)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs = ctx.saved_tensors
        BH, T, D = q.shape
        grad_out = grad_out.reshape(BH, T, D).to(q.dtype)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for start in range(0, BH, ctx.rows):
            r = slice(start, start + ctx.rows)
            p = probs[r]
            torch.bmm(p.transpose(1, 2), grad_out[r], out=grad_v[r])
            grad_p = torch.bmm(grad_out[r], v[r].transpose(1, 2))  # (n, T, T)
            # softmax backward, p * (dp - sum(dp * p)), fused (float32 inside for bf16)
            grad_s = torch._softmax_backward_data(grad_p, p, -1, p.dtype)
            # the scores' 1/sqrt(hs) in the products' epilogue (beta=0: the output's old values are ignored)
            torch.baddbmm(grad_q[r], grad_s, k[r], beta=0, alpha=D ** -0.5, out=grad_q[r])
            torch.baddbmm(grad_k[r], grad_s.transpose(1, 2), q[r], beta=0, alpha=D ** -0.5, out=grad_k[r])
        return grad_q.view(ctx.shape), grad_k.view(ctx.shape), grad_v.view(ctx.shape)


def causal_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of q, k, v (B, nh, T, hs), equal to F.scaled_dot_product_attention(..., is_causal=True)."""
    with torch.autocast(q.device.type, enabled=False):  # q, k, v already carry the autocast dtype
        return _CausalAttentionCPU.apply(q, k, v)


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
        self.fc = Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.gate = Linear(config.n_embd, config.mlp_hidden, bias=config.bias) if config.activation == "swiglu" else None
        self.proj = Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x):
        return dropout_if_training(self.proj(activate(self.activation, x, self.fc, self.gate)), self.dropout,
                                   self.training)


def activate(activation: str, x: torch.Tensor, up, gate) -> torch.Tensor:
    """The MLP's hidden layer from its up (fc) and gate projections (callables: a Linear, or GPT.step's products)."""
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


class _StepWeights:
    """What GPT.step reads, gathered once: per layer its norms bound to their parameters, the attention
    module (for its head layout and QK-norm) and the products bound to the transposed weights."""

    def __init__(self, model: "GPT"):
        def product(linear: Linear | None):
            if linear is None:
                return None
            bias = None if linear.bias is None else linear.bias.detach()
            return functools.partial(decode_product, weight=linear.weight.detach(),
                                     weight_t=linear.transposed_weight(), bias=bias)

        self.layers = [(bound_norm(block.norm1), product(block.attn.qkv), block.attn, product(block.attn.proj),
                        bound_norm(block.norm2), product(block.mlp.fc), product(block.mlp.gate),
                        product(block.mlp.proj), block.mlp.activation) for block in model.blocks]
        self.norm_f = bound_norm(model.norm_f)
        self.lm_head = product(model.lm_head)


def bound_norm(norm: nn.Module):
    """The norm as a function of x alone (its parameters bound), for GPT.step."""
    weight = norm.weight.detach()
    if isinstance(norm, RMSNorm):
        return functools.partial(F.rms_norm, normalized_shape=(weight.size(0),), weight=weight, eps=norm.eps)
    bias = None if norm.bias is None else norm.bias.detach()
    return functools.partial(F.layer_norm, normalized_shape=norm.normalized_shape, weight=weight, bias=bias,
                             eps=norm.eps)


LOSS_CHUNK_ROWS = 128  # rows of logits alive at once in the training loss (bench/: 64-128 fastest on CPU)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross entropy of x @ weight.T without the (N, V) float32 logits and log-probabilities.

    The plain path (lm_head, .float(), cross_entropy) keeps about 10 bytes per logit alive (2 GB for
    8 x 512 tokens and a 50K vocabulary) and streams them through memory several times. Here each chunk of rows gets
    its logits (in the autocast dtype), float32 softmax, loss (-log of the target's probability) and
    gradient (softmax - one-hot) / n at once; only that gradient is kept, in the logits' dtype, and
    backward is two matmuls.
    Same arithmetic as autocast + F.cross_entropy: bf16 matmuls, float32 softmax.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows):
        # x: (N, C) hidden states, weight: (V, C), targets: (N,) with -100 = ignored
        valid = targets != -100
        count = valid.sum()
        scale = 1.0 / count.clamp(min=1).to(torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_logits = None  # (N, V) d loss / d logits, filled chunk by chunk
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = F.linear(x[rows], weight)  # (n, V), bf16 under autocast
            if grad_logits is None:
                grad_logits = torch.empty(x.size(0), weight.size(0), dtype=logits.dtype, device=x.device)
            safe_targets = targets[rows].clamp(min=0)[:, None]  # (n, 1)
            grad = logits.softmax(-1, dtype=torch.float32)  # (n, V): one pass instead of log_softmax + exp
            # -log p(target); p is clamped to the smallest normal float, so one token's loss is at most 87.3
            nll = -grad.gather(1, safe_targets).squeeze(1).clamp_(min=torch.finfo(torch.float32).tiny).log_()  # (n,)
            total += torch.where(valid[rows], nll, 0.0).sum()
            grad.scatter_add_(1, safe_targets, torch.full_like(nll[:, None], -1.0))
            grad.mul_((valid[rows].float() * scale)[:, None])
            grad_logits[rows] = grad
        ctx.save_for_backward(x, weight, grad_logits)
        return torch.where(count > 0, total * scale, torch.nan)  # nan for no valid target, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, grad_logits = ctx.saved_tensors
        # the same (cast) matmuls autograd runs after the plain loss; grad_output is a scalar
        grad_x = grad_logits.mm(weight.to(grad_logits.dtype)).mul_(grad_output).to(x.dtype)  # (N, C)
        grad_weight = grad_logits.t().mm(x.to(grad_logits.dtype)).mul_(grad_output).to(weight.dtype)  # (V, C)
        return grad_x, grad_weight, None, None


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_rows: int = LOSS_CHUNK_ROWS) -> torch.Tensor:
    """F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=-100), chunk_rows rows at a time.

    x (N, C), weight (V, C), targets (N,). With gradients it computes them on the way (see
    _ChunkedCrossEntropy); without, it only sums the chunks' losses.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(x, weight, targets, chunk_rows)
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    for start in range(0, x.size(0), chunk_rows):
        logits = F.linear(x[start:start + chunk_rows], weight).float()  # (n, V)
        total += F.cross_entropy(logits, targets[start:start + chunk_rows], ignore_index=-100, reduction="sum")
    return total / (targets != -100).sum()


class GPT(nn.Module):
    loss_chunk_rows = LOSS_CHUNK_ROWS  # 0: the loss goes through full float32 logits (slower, more memory)
    c_step = True  # False: `step` runs as PyTorch tensor calls even where the C step (decode_kernel) is built

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.context_length, config.n_embd) if config.position == "learned" else None
        self.dropout = config.dropout
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
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
        self._check_length(start + T)
        x, rope = self._embed(idx, start)
        x = dropout_if_training(x, self.dropout, self.training)
        for block in self.blocks:
            x = block(x, rope, cache, attention_mask)
        if cache is not None:
            cache.length += T
        return self.norm_f(x)

    def _check_length(self, length: int) -> None:
        if length > self.config.context_length:
            raise ValueError(
                f"sequence of {length} tokens is longer than the model's context of {self.config.context_length}")

    def _embed(self, idx: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token (+ position) embeddings of idx (B, T) at positions start.., and the RoPE rotation (T, hs/2)."""
        T = idx.size(-1)
        x = F.embedding(idx, self.tok_emb.weight)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[start:start + T]
        rope = None
        if self.config.position == "rope":
            rope = torch.complex(self.rope_cos[start:start + T].float(), self.rope_sin[start:start + T].float())
        return x, rope

    def can_step(self, idx: torch.Tensor, cache: KVCache | None, attention_mask=None) -> bool:
        """Whether forward takes the single-token decoding path (`step`) for these inputs."""
        return (cache is not None and idx.size(1) == 1 and attention_mask is None and not torch.is_grad_enabled()
                and idx.device.type == "cpu" and self.lm_head.weight.dtype == torch.float32)

    def step(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, 1, V) of one new token per row, idx (B, 1), through the cache: forward's arithmetic as
        plain tensor calls, every product on the transposed weights (`Linear.transposed_weight`).

        forward takes this path by itself when decoding on CPU (`can_step`). At batch 1 the module path
        spends as long on Python (module calls, attribute lookups, checks) as on arithmetic; this one is
        about 1.5-2x faster (bench/, docs/performance.md). The weights it reads are gathered at the
        cache's first step and kept with the cache, which is only valid for the weights that filled it.
        tests/test_model.py checks that both paths agree for every architecture option.
        """
        start = cache.length
        self._check_length(start + 1)
        weights = cache.step_weights
        if weights is None:
            weights = cache.step_weights = self._step_weights(cache)
        if isinstance(weights, decode_kernel.KernelStep):
            logits = weights.step(idx, cache)  # the C step (tinytales/_decode.c)
            cache.length += 1
            return logits
        x, rope = self._embed(idx, start)
        x = x.view(idx.size(0), -1)  # (B, C)
        for norm1, qkv, attn, proj, norm2, up, gate, down, activation in weights.layers:
            q, k, v = attn._heads(qkv(norm1(x))[:, None, :], rope)  # (B, heads, 1, hs)
            k, v = cache.store(attn.layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=attn.n_kv_head != attn.n_head)  # (B, nh, 1, hs)
            x = x + proj(y.view(x.shape))
            x = x + down(activate(activation, norm2(x), up, gate))
        cache.length += 1
        return weights.lm_head(weights.norm_f(x))[:, None, :]

    def _step_weights(self, cache: KVCache):
        """What `step` reads, gathered once per cache: the C step's weights where it can run, else _StepWeights."""
        if self.c_step and decode_kernel.usable(self, cache):
            return decode_kernel.KernelStep(self)
        return _StepWeights(self)

    def forward(self, idx, targets=None, cache: KVCache | None = None, attention_mask=None, last_only=False):
        """Logits (B, T, V), or (B, 1, V) with last_only; with targets (B, T) the mean loss instead.

        With targets the logits are None: the loss is computed chunk by chunk from the hidden states
        (`chunked_cross_entropy`) and the (B, T, V) logits never exist; `loss_chunk_rows = 0` restores
        the plain path that returns them too. Targets equal to -100 (padding) are ignored by the loss.
        One new token per row with a cache, on CPU without gradients, goes through `step`.
        """
        if targets is None and self.can_step(idx, cache, attention_mask):
            return self.step(idx, cache), None
        x = self.hidden_states(idx, cache, attention_mask)
        if targets is not None:
            if self.loss_chunk_rows:
                return None, chunked_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1),
                                                   self.loss_chunk_rows)
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
            return logits, loss
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
