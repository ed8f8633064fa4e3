"""The fast paths of training and evaluation, and the one switch for every fast path (`FAST`).

Each fast path computes what a plain PyTorch expression computes, faster on CPU, and is tested against it
(tests/test_fast_paths.py); `FAST` chooses, process-wide, and `fast_paths(...)` changes it for a block
(tests and bench/ measure both sides):
- `attention`: causal training attention on CPU through `_CausalAttentionCPU` (else SDPA);
- `lm_loss`: the training loss without the (N, V) float32 logits (`chunked_cross_entropy`), else the plain
  `cross_entropy` of the logits;
- the decoding step (tinytales.decoding): the C step, the PyTorch step, or the model's plain forward.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .core import IGNORE_INDEX

LOSS_CHUNK_ROWS = 128  # rows of logits alive at once in the training loss (bench/: 64-128 fastest on CPU)


@dataclass
class FastPaths:
    cpu_attention: bool = True  # causal training attention on CPU through _CausalAttentionCPU
    loss_chunk_rows: int = LOSS_CHUNK_ROWS  # 0: the loss through the full float32 logits (slower, more memory)
    pytorch_step: bool = True  # decoding one token per row through the PyTorch step (False: the plain forward)
    c_step: bool = True  # ... through the C step where it is built (False: the PyTorch step)


FAST = FastPaths()


@contextmanager
def fast_paths(**settings) -> Iterator[FastPaths]:
    """Change FAST for the block, e.g. `with fast_paths(c_step=False): ...`; restored afterwards."""
    known = {f.name for f in fields(FastPaths)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown fast paths {unknown}; known: {sorted(known)}")
    saved = {name: getattr(FAST, name) for name in settings}
    for name, value in settings.items():
        setattr(FAST, name, value)
    try:
        yield FAST
    finally:
        for name, value in saved.items():
            setattr(FAST, name, value)


# ----------------------------------------------------------------------------- attention

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v for q (B, nh, T, hs), k and v (B, nkv, S, hs): causal when mask is None
    (and T > 1), else as the boolean mask allows; the CPU training kernel where it applies."""
    B, nh, T, _ = q.shape
    if (FAST.cpu_attention and mask is None and T > 1 and not dropout and k.size(1) == nh and k.size(2) == T
            and q.device.type == "cpu" and torch.is_grad_enabled()):
        return causal_attention_cpu(q, k, v)  # training on CPU: faster than SDPA's kernel there
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                          dropout_p=dropout, enable_gqa=k.size(1) != nh)  # (B, nh, T, hs)


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


# ----------------------------------------------------------------------------- the loss

def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of logits (..., V) in float32 against targets (...), IGNORE_INDEX not scored."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def summed_cross_entropy(x: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
                         chunk_rows: int) -> torch.Tensor:
    """Summed nats (float64) of head(x) (N, V) against targets (N,), chunk_rows rows of logits at a time."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.size(0), chunk_rows):
        logits = head(x[start:start + chunk_rows]).float()  # (n, V)
        total += F.cross_entropy(logits, targets[start:start + chunk_rows], ignore_index=IGNORE_INDEX,
                                 reduction="sum").double()
    return total


def lm_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
            head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(logits or None, mean loss) of hidden states x (B, T, C) through the output matrix weight (V, C):
    in chunks without the logits (`chunked_cross_entropy`), or with FAST.loss_chunk_rows = 0 through the
    full logits head(x), which are returned too."""
    if FAST.loss_chunk_rows:
        return None, chunked_cross_entropy(x.flatten(0, 1), weight, targets.reshape(-1), FAST.loss_chunk_rows)
    logits = head(x)
    return logits, cross_entropy(logits, targets)


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
        # x: (N, C) hidden states, weight: (V, C), targets: (N,) with IGNORE_INDEX = ignored
        valid = targets != IGNORE_INDEX
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
    """F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=IGNORE_INDEX), chunk_rows rows at a time.

    x (N, C), weight (V, C), targets (N,). With gradients it computes them on the way (see
    _ChunkedCrossEntropy); without, it only sums the chunks' losses.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(x, weight, targets, chunk_rows)
    total = summed_cross_entropy(x, lambda rows: F.linear(rows, weight), targets, chunk_rows)
    return (total / (targets != IGNORE_INDEX).sum()).float()
