"""The fast decoding step: one new token per row through a KV cache, chosen once per cache by `stepper`.

Three ways compute the same logits as `GPT.forward` (tests/test_fast_paths.py checks them against each
other for every architecture option):
- the C step (`tinytales/_decode.c`, called through ctypes): built by `pip install` where a C compiler
  exists, for float32 weights and cache on the CPU; it reads the products' weights packed in tiles;
- the PyTorch step (`TorchStep`): forward's arithmetic as plain tensor calls on transposed weight copies,
  1.5-2x faster than the module path at batch 1, where the module path spends as long on Python as on
  arithmetic;
- the model's plain forward, for everything else (GPUs, 16-bit weights, models that are not a TinyTales GPT).
`kernels.FAST` (c_step, pytorch_step) chooses among them; the weight copies each step reads are made once
per state of the model's weights and kept beside the model (`_derived`), never inside it or the cache.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
import functools
import importlib.util
import weakref
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import FAST
from .model import GPT, RMSNorm, activate

NORMS = {"layernorm": 0, "rmsnorm": 1}
ACTIVATIONS = {"gelu": 0, "swiglu": 1, "relu2": 2}
_FLOAT_P = ctypes.POINTER(ctypes.c_float)


class _Layer(ctypes.Structure):
    _fields_ = [(name, _FLOAT_P) for name in (
        "norm1_w", "norm1_b", "qkv_w", "qkv_b", "q_norm_w", "q_norm_b", "k_norm_w", "k_norm_b", "proj_w", "proj_b",
        "norm2_w", "norm2_b", "fc_w", "fc_b", "gate_w", "gate_b", "down_w", "down_b")]


class _Model(ctypes.Structure):
    _fields_ = [*[(name, ctypes.c_int32) for name in (
        "n_layer", "n_head", "n_kv_head", "head_dim", "n_embd", "mlp_hidden", "vocab_size", "context_length",
        "norm", "activation", "rope", "qk_norm")],
        ("norm_eps", ctypes.c_float),
        *[(name, _FLOAT_P) for name in (
            "tok_emb", "pos_emb", "rope_cos", "rope_sin", "norm_f_w", "norm_f_b", "lm_head")],
        ("layers", ctypes.POINTER(_Layer))]


_library: ctypes.CDLL | None | bool = False  # False: not looked for yet; None: not built


def library() -> ctypes.CDLL | None:
    """The compiled step, or None when the extension was not built (no C compiler at install time)."""
    global _library
    if _library is False:
        _library = None
        spec = importlib.util.find_spec("tinytales._decode")
        if spec is not None and spec.origin:
            try:
                lib = ctypes.CDLL(spec.origin)
            except OSError:
                return None
            lib.tt_step.restype = ctypes.c_int
            lib.tt_step.argtypes = [ctypes.POINTER(_Model), ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32,
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
            lib.tt_work_floats_per_row.restype = ctypes.c_int64
            lib.tt_work_floats_per_row.argtypes = [ctypes.POINTER(_Model), ctypes.c_int32]
            _library = lib
    return _library


def available() -> bool:
    return library() is not None


TILE = 64  # output rows per tile of a packed weight (TILE in _decode.c)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight (out, in) as the C products read it: (tiles, in, TILE), rows padded with zeros to whole tiles.

    For each input the TILE weights of a tile's outputs are contiguous, so a product accumulates
    whole vectors and never ends in a horizontal sum: 1.5-2x faster than dot products over the
    (out, in) rows at batch 1 and 4x with 4 rows (beam search).
    """
    out, n_in = weight.shape
    tiles = -(-out // TILE)
    padded = torch.zeros(tiles * TILE, n_in, dtype=torch.float32)
    padded[:out] = weight.detach()
    return padded.view(tiles, TILE, n_in).transpose(1, 2).contiguous()  # (tiles, in, TILE)


class KernelWeights:
    """The model's weights as the C step reads them: the products' weights packed (`pack`), the rest as they are.

    Made once per state of the weights and kept beside the model (`_derived`); it holds every tensor
    whose pointer the C structures carry, so they stay alive. One more copy of the products' weights.
    """

    def __init__(self, model):
        c = self.config = model.config
        self.keep: list[torch.Tensor] = []

        def ptr(tensor: torch.Tensor | None, packed: bool = False):
            if tensor is None:
                return None
            tensor = pack(tensor) if packed else tensor.detach().contiguous()
            self.keep.append(tensor)
            return ctypes.cast(tensor.data_ptr(), _FLOAT_P)

        def norm(module) -> tuple:
            return ptr(module.weight), ptr(getattr(module, "bias", None))

        def linear(module) -> tuple:
            return (None, None) if module is None else (ptr(module.weight, packed=True), ptr(module.bias))

        layers = (_Layer * c.n_layer)()
        for layer, block in zip(layers, model.blocks):
            attn, mlp = block.attn, block.mlp
            layer.norm1_w, layer.norm1_b = norm(block.norm1)
            layer.qkv_w, layer.qkv_b = linear(attn.qkv)
            if attn.q_norm is not None:
                layer.q_norm_w, layer.q_norm_b = norm(attn.q_norm)
                layer.k_norm_w, layer.k_norm_b = norm(attn.k_norm)
            layer.proj_w, layer.proj_b = linear(attn.proj)
            layer.norm2_w, layer.norm2_b = norm(block.norm2)
            layer.fc_w, layer.fc_b = linear(mlp.fc)
            layer.gate_w, layer.gate_b = linear(mlp.gate)
            layer.down_w, layer.down_b = linear(mlp.proj)
        self.layers = layers
        rope = c.position == "rope"
        self.model = _Model(
            c.n_layer, c.n_head, c.n_kv_head, c.head_dim, c.n_embd, c.mlp_hidden, c.vocab_size, c.context_length,
            NORMS[c.norm], ACTIVATIONS[c.activation], int(rope), int(c.qk_norm), c.norm_eps,
            ptr(model.tok_emb.weight), ptr(model.pos_emb.weight if model.pos_emb is not None else None),
            ptr(model.rope_cos if rope else None), ptr(model.rope_sin if rope else None),
            *norm(model.norm_f), ptr(model.lm_head.weight, packed=True), layers)


def _weights_state(model) -> tuple:
    # a new tensor (load, .to(), .data = ...) has new memory; an in-place update bumps the version
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


# (model, kind) -> (state of its weights, what was derived from them); beside the model, not in it, so that
# copying or pickling a model never meets the C structures' pointers or the weight copies
_derived_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _derived(model, kind: type):
    """kind(model) (KernelWeights, TorchWeights), made again only when a weight has changed since it was made."""
    state = _weights_state(model)
    made = _derived_of.setdefault(model, {})
    cached = made.get(kind)
    if cached is None or cached[0] != state:
        cached = made[kind] = (state, kind(model))
    return cached[1]


class KernelStep:
    """The C step for one KV cache: the model's KernelWeights and this cache's scratch."""

    def __init__(self, model):
        self.weights = _derived(model, KernelWeights)
        self.work: torch.Tensor | None = None  # (B, floats per row), made at the first step
        self._slots: torch.Tensor | None = None  # the cache rows of a plain step: 0..B-1

    def __call__(self, idx: torch.Tensor, cache, rows: "CacheRows | None" = None) -> torch.Tensor:
        """Logits (B, 1, V) of one new token per row idx (B, 1); writes the keys and values at cache.length
        (then advances it), or with `rows` at each row's own position and cache row (continuous batching)."""
        lib, model = library(), self.weights.model
        check_step_input(self.weights.config, idx, cache, rows)  # the C code trusts every size it is given
        B, max_length = idx.size(0), cache.max_length
        if idx.dtype != torch.int64:
            idx = idx.long()  # the C step reads int64 ids
        if rows is None:
            positions, slots = self.plain_rows(B, cache.length)
        else:
            positions, slots = rows.positions, rows.slots
        if self.work is None or self.work.size(0) != B:
            self.work = torch.empty(B, lib.tt_work_floats_per_row(ctypes.byref(model), max_length))
        logits = torch.empty(B, 1, model.vocab_size, dtype=torch.float32)
        status = lib.tt_step(ctypes.byref(model), idx.data_ptr(), idx.stride(0), B, positions.data_ptr(),
                             slots.data_ptr(), cache.keys.size(1), cache.keys.data_ptr(), cache.values.data_ptr(),
                             max_length, logits.data_ptr(), self.work.data_ptr())
        if status != 0:
            raise ValueError(f"the C decoding step refused its input: token ids must be in [0, {model.vocab_size}),"
                             f" position {int(positions.max())} below the cache's {max_length} and the context, cache rows "
                             f"below {cache.keys.size(1)}")
        if rows is None:
            cache.length += 1
        return logits

    def plain_rows(self, B: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row at one position, row b in cache row b."""
        if self._slots is None or self._slots.size(0) != B:
            self._slots = torch.arange(B, dtype=torch.int32)
        return torch.full((B,), position, dtype=torch.int32), self._slots


@dataclass
class CacheRows:
    """Where each row of a batched step is: its position (B,) and its row of the KV cache (B,), int32.

    Continuous batching keeps a story per cache row, each at its own length; the batch of one step is the
    running stories in any order (`tinytales.batching`)."""

    positions: torch.Tensor
    slots: torch.Tensor

    @classmethod
    def of(cls, positions: list[int], slots: list[int]) -> "CacheRows":
        if len(set(slots)) != len(slots):
            raise ValueError(f"each row of a step needs its own cache row, got {slots}")
        return cls(torch.tensor(positions, dtype=torch.int32), torch.tensor(slots, dtype=torch.int32))


def check_step_input(config, idx: torch.Tensor, cache, rows: CacheRows | None = None) -> None:
    """ValueError unless idx is (B, 1) integer ids on the CPU and the cache is this model's float32 contiguous
    (n_layer, B, n_kv_head, max_length, head_dim) keys and values (with `rows`: any number of cache rows, and
    one int32 position and cache row per row of idx): the C step reads memory by these sizes."""
    def need(ok: bool, message: str):
        if not ok:
            raise ValueError(f"the C decoding step cannot take this input: {message}")

    need(isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.size(1) == 1 and idx.size(0) >= 1,
         f"ids must be (batch, 1), got {tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
    need(idx.device.type == "cpu" and idx.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8),
         f"ids must be integers on the CPU, got {idx.dtype} on {idx.device}")
    keys, values = getattr(cache, "keys", None), getattr(cache, "values", None)
    need(isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor), "the cache has no keys and values")
    cache_rows = idx.size(0) if rows is None else keys.size(1)
    shape = (config.n_layer, cache_rows, config.n_kv_head, cache.max_length, config.head_dim)
    need(tuple(keys.shape) == shape and tuple(values.shape) == shape,
         f"the cache is {tuple(keys.shape)} but {idx.size(0)} rows of ids need (n_layer, batch, n_kv_head, "
         f"max_length, head_dim) = {shape}; make it with model.new_cache({idx.size(0)})")
    need(keys.dtype == values.dtype == torch.float32 and keys.device.type == values.device.type == "cpu"
         and keys.is_contiguous() and values.is_contiguous(),
         f"the cache must be float32, contiguous and on the CPU, got {keys.dtype} on {keys.device}")
    if rows is not None:
        need(all(isinstance(t, torch.Tensor) and t.dtype == torch.int32 and t.shape == (idx.size(0),)
                 and t.is_contiguous() for t in (rows.positions, rows.slots)),
             "rows needs one int32 position and one cache row per row of ids (CacheRows.of)")


def usable(model, cache) -> bool:
    """Whether the C step can run this model and cache: built, float32 contiguous weights and cache on the CPU."""
    if not available():
        return False
    keys, values = cache.keys, cache.values
    return (keys.dtype == values.dtype == torch.float32 and keys.is_contiguous() and values.is_contiguous()
            and keys.device.type == "cpu" and _float32_on_cpu(model))


def _float32_on_cpu(model) -> bool:
    return all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


# ----------------------------------------------------------------------------- the PyTorch step

TRANSPOSED_WEIGHT_MAX_ROWS = 4  # up to this many rows (beam search: 4 beams) use the transposed copy
TRANSPOSED_WEIGHT_MIN_BYTES = 16 * 2**20  # more rows use it only from this matrix size on


def decode_product(x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None):
    """x (N, in) times the weight (out, in) + bias, through weight_t = weight.T (contiguous) for few rows.

    MKL's float32 matrix-vector product over the (out, in) weight is slow on CPU: 6.4 ms against 1.8 ms for
    the copy with GPT-2's 50K-vocabulary output matrix, 15-40 % on the layers' matrices, ~20 % on beam search
    with 4 beams (bench/, docs/performance.md). With 8 rows and small matrices the plain product is as fast.
    """
    if x.size(0) > TRANSPOSED_WEIGHT_MAX_ROWS and weight.numel() * 4 < TRANSPOSED_WEIGHT_MIN_BYTES:
        return F.linear(x, weight, bias)
    return x @ weight_t if bias is None else torch.addmm(bias, x, weight_t)


def bound_norm(norm: nn.Module):
    """The norm as a function of x alone (its parameters bound)."""
    weight = norm.weight.detach()
    if isinstance(norm, RMSNorm):
        return functools.partial(F.rms_norm, normalized_shape=(weight.size(0),), weight=weight, eps=norm.eps)
    bias = None if norm.bias is None else norm.bias.detach()
    return functools.partial(F.layer_norm, normalized_shape=norm.normalized_shape, weight=weight, bias=bias,
                             eps=norm.eps)


class TorchWeights:
    """What the PyTorch step reads, gathered once per state of the weights: per layer its norms bound to their
    parameters, the attention module (for its head layout and QK-norm) and the products bound to contiguous
    transposed copies of their weights (one more copy of the weights in memory while decoding)."""

    def __init__(self, model: GPT):
        def product(linear: nn.Linear | None):
            if linear is None:
                return None
            weight = linear.weight.detach()
            bias = None if linear.bias is None else linear.bias.detach()
            return functools.partial(decode_product, weight=weight, weight_t=weight.t().contiguous(), bias=bias)

        self.layers = [(bound_norm(block.norm1), product(block.attn.qkv), block.attn, product(block.attn.proj),
                        bound_norm(block.norm2), product(block.mlp.fc), product(block.mlp.gate),
                        product(block.mlp.proj), block.mlp.activation) for block in model.blocks]
        self.norm_f = bound_norm(model.norm_f)
        self.lm_head = product(model.lm_head)


class TorchStep:
    """forward's arithmetic for one new token per row as plain tensor calls, every product on the transposed
    weights."""

    def __init__(self, model: GPT):
        self.model = model
        self.weights = _derived(model, TorchWeights)

    def __call__(self, idx: torch.Tensor, cache, rows: CacheRows | None = None) -> torch.Tensor:
        """As KernelStep: one new token per row at cache.length, or with `rows` at each row's own place."""
        model, weights = self.model, self.weights
        B = idx.size(0)
        if rows is None:
            model.check_length(cache.length + 1)
            x, rope = model.embed(idx, cache.length)
        else:
            positions, slots = rows.positions.long(), rows.slots.long()
            model.check_length(int(positions.max()) + 1)
            x, rope = model.embed(idx, positions)
            seen = int(positions.max()) + 1  # keys each row may see: up to its own position (the mask)
            mask = (torch.arange(seen) <= positions[:, None])[:, None, None, :]  # (B, 1, 1, seen)
        x = x.view(B, -1)  # (B, C)
        for norm1, qkv, attn, proj, norm2, up, gate, down, activation in weights.layers:
            q, k, v = attn.heads(qkv(norm1(x))[:, None, :], rope)  # (B, heads, 1, hs)
            if rows is None:
                k, v = cache.store(attn.layer, k, v)
                y = F.scaled_dot_product_attention(q, k, v, enable_gqa=attn.n_kv_head != attn.n_head)
            else:
                cache.keys[attn.layer, slots, :, positions] = k[:, :, 0]
                cache.values[attn.layer, slots, :, positions] = v[:, :, 0]
                k, v = cache.keys[attn.layer, slots, :, :seen], cache.values[attn.layer, slots, :, :seen]
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=attn.n_kv_head != attn.n_head)
            x = x + proj(y.view(x.shape))  # y: (B, nh, 1, hs)
            x = x + down(activate(activation, norm2(x), up, gate))
        if rows is None:
            cache.length += 1
        return weights.lm_head(weights.norm_f(x))[:, None, :]


# ----------------------------------------------------------------------------- the choice

Step = Callable[[torch.Tensor, object], torch.Tensor]  # (idx (B, 1), cache) -> logits (B, 1, V)


def stepper(model, cache) -> Step | None:
    """How one new token per row is decoded through this cache: the C step, the PyTorch step, or None for the
    model's plain forward. Chosen once, when the cache is made (FAST says which fast paths may be used)."""
    if not (FAST.pytorch_step and isinstance(model, GPT) and cache is not None and _float32_on_cpu(model)):
        return None
    if FAST.c_step and usable(model, cache):
        return KernelStep(model)
    return TorchStep(model)


def decoding_path(model) -> str:
    """Which single-token step decodes this model, in words (`tinytales info` shows it)."""
    if not isinstance(model, GPT):
        return "the model's own forward (not a TinyTales GPT)"
    if not FAST.pytorch_step:
        return "the plain forward (the fast steps are off)"
    if not _float32_on_cpu(model):
        return "the plain forward (the fast steps run float32 weights on the CPU)"
    if not FAST.c_step:
        return "PyTorch step (the C step is off)"
    if not available():
        return "PyTorch step: the C step was not built (install a C compiler, then pip install -e . again)"
    return f"C step (tinytales/_decode.c), {torch.get_num_threads()} threads"
