"""Every fast path against the plain computation it replaces (tinytales.kernels, tinytales.decoding):
the CPU training attention and the chunked loss against SDPA and F.cross_entropy, and the single-token
decoding steps (C and PyTorch) against the model's forward, for every architecture option."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import tinytales.kernels as kernels
from tinytales import decoding
from tinytales.decoding import KernelStep, TorchStep, stepper
from tinytales.generate import GenerationConfig, generate
from tinytales.kernels import chunked_cross_entropy, fast_paths
from tinytales.model import GPT, GPTConfig

OPTIONS = [
    {},  # GPT-2: learned positions, LayerNorm, GELU, biases, tied embeddings
    {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False},  # Llama / the bundled model
    {"activation": "relu2", "qk_norm": True, "n_kv_head": 1, "tie_embeddings": False},
    {"position": "rope", "norm": "rmsnorm", "qk_norm": True, "n_kv_head": 2, "bias": True, "mlp_hidden": 72},
    {"bias": False, "norm": "layernorm", "activation": "swiglu", "n_kv_head": 2},
]

needs_kernel = pytest.mark.skipif(not decoding.available(), reason="the C decoding step was not built")


def random_model(options: dict, vocab: int = 300, context: int = 40) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, context_length=context, n_layer=2, n_head=4, n_embd=64, **options)).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than the init: norms, biases and gates all matter
            p.normal_(0.0, 0.2)
    return model


def stepped_logits(model: GPT, idx: torch.Tensor, prefill: int, c_step: bool = True):
    """Logits of tokens prefill.. of idx, one at a time through the step `stepper` picks; and the cache, the step."""
    with fast_paths(c_step=c_step), torch.inference_mode():
        cache = model.new_cache(idx.size(0))
        model(idx[:, :prefill], cache=cache)
        step = stepper(model, cache)
        steps = [step(idx[:, t:t + 1], cache) for t in range(prefill, idx.size(1))]
    return torch.cat(steps, dim=1), cache, step


# ----------------------------------------------------------------------------- training attention

@pytest.mark.parametrize("chunk_bytes", [1, 2 * 2**20])
def test_cpu_causal_attention_matches_sdpa_and_its_gradients_are_exact(monkeypatch, chunk_bytes):
    monkeypatch.setattr(kernels, "ATTENTION_CHUNK_BYTES", chunk_bytes)  # 1: one (sequence, head) per chunk
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = kernels.causal_attention_cpu(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert torch.autograd.gradcheck(kernels.causal_attention_cpu, (q, k, v))


def _loss_and_grads(model, idx, precision):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_attention_path_equals_sdpa(monkeypatch, precision):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, context_length=32, n_layer=2, n_head=2, n_embd=32, position="rope"))
    idx = torch.randint(0, 64, (3, 33))
    calls = []
    original = kernels.causal_attention_cpu
    monkeypatch.setattr(kernels, "causal_attention_cpu", lambda *a: calls.append(1) or original(*a))
    fast_loss, fast_grads = _loss_and_grads(model, idx, precision)
    assert len(calls) == 2  # one per layer: the fast path really ran
    with fast_paths(cpu_attention=False):
        sdpa_loss, sdpa_grads = _loss_and_grads(model, idx, precision)
    assert len(calls) == 2
    tol = {"fp32": 1e-5, "bf16": 2e-2}[precision]
    torch.testing.assert_close(fast_loss, sdpa_loss, atol=tol, rtol=tol)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, sdpa_grads[name], atol=tol * grad.abs().max().item(), rtol=tol, msg=name)


# ----------------------------------------------------------------------------- the chunked loss

@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_cross_entropy_matches_the_plain_loss_and_gradients(autocast):
    torch.manual_seed(0)
    x = torch.randn(70, 16, requires_grad=True)
    weight = (torch.randn(200, 16) * 0.5).requires_grad_()
    targets = torch.randint(0, 200, (70,))
    targets[::5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain = F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=-100)
    (plain * 1.5).backward()
    plain_grads = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        chunked = chunked_cross_entropy(x, weight, targets, chunk_rows=16)  # 70 rows: a ragged last chunk
    (chunked * 1.5).backward()
    tolerance = {"atol": 1e-3, "rtol": 2e-2} if autocast else {"atol": 1e-6, "rtol": 1e-5}
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    torch.testing.assert_close(x.grad, plain_grads[0], **tolerance)
    torch.testing.assert_close(weight.grad, plain_grads[1], **tolerance)
    with torch.no_grad():  # evaluation: the loss alone, no gradients kept
        assert chunked_cross_entropy(x, weight, targets, 16).item() == pytest.approx(plain.item(), rel=1e-3)


def test_chunked_cross_entropy_of_only_ignored_targets_is_nan_like_the_plain_loss():
    x, weight = torch.randn(4, 8, requires_grad=True), torch.randn(10, 8)
    targets = torch.full((4,), -100)
    assert torch.isnan(chunked_cross_entropy(x, weight, targets, 2))
    assert torch.isnan(F.cross_entropy(F.linear(x, weight), targets))


def test_chunked_loss_stays_finite_when_the_target_probability_underflows():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    weight = torch.tensor([[500.0, 0.0], [0.0, 500.0], [-500.0, 0.0]])  # p(target) = exp(-1000): 0 in float32
    loss = chunked_cross_entropy(x, weight, torch.tensor([2, 0]), 1)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny), rel=1e-5)  # both capped: 87.34
    assert torch.isfinite(x.grad).all()


def test_model_loss_is_the_same_with_and_without_chunks(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 20))
    targets = idx.roll(-1, 1)
    logits, chunked = model(idx, targets)
    assert logits is None  # the full logits never exist on this path
    chunked.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with fast_paths(loss_chunk_rows=0):
        logits, plain = model(idx, targets)
    assert logits.shape == (2, 20, tiny_config.vocab_size)
    plain.backward()
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    for chunk_grad, p in zip(grads, model.parameters()):
        torch.testing.assert_close(chunk_grad, p.grad, atol=1e-6, rtol=1e-5)


def test_fast_paths_are_restored_and_unknown_ones_refused():
    with fast_paths(c_step=False, loss_chunk_rows=0):
        assert not kernels.FAST.c_step and kernels.FAST.loss_chunk_rows == 0
    assert kernels.FAST.c_step and kernels.FAST.loss_chunk_rows == kernels.LOSS_CHUNK_ROWS
    with pytest.raises(ValueError, match="unknown fast paths"):
        with fast_paths(turbo=True):
            pass


# ----------------------------------------------------------------------------- the decoding steps

@pytest.mark.parametrize("options", OPTIONS[:3])
@pytest.mark.parametrize("batch", [1, 6])  # 6 rows: the small products go through F.linear
@pytest.mark.parametrize("c_step", [True, False])  # the C step where it is built, and the PyTorch one
def test_single_token_step_equals_the_module_path(options, batch, c_step):
    model = random_model(options, vocab=50, context=32)
    idx = torch.randint(0, 50, (batch, 12))
    full, _ = model(idx)  # gradients on: the module path
    steps, cache, step = stepped_logits(model, idx, 5, c_step=c_step)
    assert isinstance(step, KernelStep if c_step and decoding.available() else TorchStep) and cache.length == 12
    torch.testing.assert_close(steps, full[:, 5:].detach(), atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="longer than the model's context|position 32 below"):
        cache.length = 32
        with torch.no_grad():
            step(idx[:, :1], cache)


def test_the_engine_chooses_the_step_once_and_falls_back_to_the_forward():
    model = random_model(OPTIONS[1])
    cache = model.new_cache(1)
    assert isinstance(stepper(model, cache), KernelStep if decoding.available() else TorchStep)
    with fast_paths(pytorch_step=False):
        assert stepper(model, cache) is None  # the plain forward
        assert "plain forward" in decoding.decoding_path(model)
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert stepper(half, half.new_cache(1)) is None  # 16-bit weights: the forward
    assert not decoding.usable(half, half.new_cache(1))


@needs_kernel
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("batch", [1, 3])
def test_c_step_equals_the_pytorch_step_and_the_full_forward(options, batch):
    model = random_model(options)
    idx = torch.randint(0, 300, (batch, 30))
    with torch.no_grad():
        full, _ = model(idx)
    c_logits, c_cache, c_step = stepped_logits(model, idx, 4, c_step=True)
    torch_logits, torch_cache, torch_step = stepped_logits(model, idx, 4, c_step=False)
    assert isinstance(c_step, KernelStep) and isinstance(torch_step, TorchStep)
    torch.testing.assert_close(c_logits, torch_logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(c_logits, full[:, 4:], atol=2e-5, rtol=1e-5)
    # the keys and values it wrote are the ones the PyTorch step wrote
    torch.testing.assert_close(c_cache.keys, torch_cache.keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_cache.values, torch_cache.values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", OPTIONS[:2])
def test_every_method_tells_the_same_story_with_every_step(options, tiny_tokenizer):
    model = random_model(options, vocab=320, context=64)
    for config in (GenerationConfig(method="greedy", max_new_tokens=40),
                   GenerationConfig(method="beam", num_beams=4, num_samples=2, max_new_tokens=30),
                   GenerationConfig(method="sample", temperature=1.0, top_k=20, num_samples=3, seed=3,
                                    max_new_tokens=100)):  # 100 new tokens: past the context, the window slides
        stories = {}
        for path in ({"c_step": True}, {"c_step": False}, {"pytorch_step": False}):
            with fast_paths(**path):
                stories[str(path)] = [s.token_ids for s in generate(model, tiny_tokenizer, "Once upon a time", config)]
        assert len({str(s) for s in stories.values()}) == 1, config.method


@pytest.mark.parametrize("c_step", [True, False])
def test_steps_follow_the_beam_search_reorder(c_step):
    model = random_model(OPTIONS[1])
    idx = torch.randint(0, 300, (3, 12))
    with fast_paths(c_step=c_step), torch.inference_mode():
        cache = model.new_cache(3)
        model(idx[:, :8], cache=cache)
        step = stepper(model, cache)
        step(idx[:, 8:9], cache)
        index = torch.tensor([2, 0, 0])
        cache.reorder(index)
        continued = step(idx[index, 9:10], cache)
        expected, _ = model(idx[index, :10])
    torch.testing.assert_close(continued[:, -1], expected[:, -1], atol=2e-5, rtol=1e-5)


@needs_kernel
def test_c_step_reads_int32_token_ids_as_well():
    model = random_model({})
    with torch.inference_mode():
        cache = model.new_cache(2)
        model(torch.tensor([[1, 2], [3, 4]]), cache=cache)
        step = stepper(model, cache)
        wide = step(torch.tensor([[5], [6]]), cache)
        cache.length -= 1
        narrow = step(torch.tensor([[5], [6]], dtype=torch.int32), cache)
    torch.testing.assert_close(narrow, wide)


@needs_kernel
def test_c_step_refuses_bad_token_ids_with_an_error():
    model = random_model({})
    with torch.inference_mode():
        cache = model.new_cache(1)
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        step = stepper(model, cache)
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 300\)"):
            step(torch.tensor([[300]]), cache)
        assert cache.length == 3  # nothing happened
        logits = step(torch.tensor([[4]]), cache)
    assert torch.isfinite(logits).all()


def test_the_pytorch_step_runs_where_the_c_step_cannot(monkeypatch):
    model = random_model(OPTIONS[1])
    idx = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
    monkeypatch.setattr(decoding, "_library", None)  # as if no C compiler was there at install time
    assert not decoding.available()
    stepped, _, step = stepped_logits(model, idx, 4, c_step=True)
    assert isinstance(step, TorchStep)
    torch.testing.assert_close(stepped, full[:, 4:], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("c_step", [True, False])
def test_a_model_that_decoded_can_still_be_copied_and_its_weight_copies_follow_training(c_step):
    model = random_model({})
    idx = torch.randint(0, 300, (1, 8))
    first, _, _ = stepped_logits(model, idx, 4, c_step=c_step)
    twin = copy.deepcopy(model)  # the step's weight copies live beside the model, not in it
    with torch.no_grad():
        twin.blocks[0].mlp.fc.weight.mul_(2.0)  # an in-place update (an optimizer step): the copies are made again
    again, _, _ = stepped_logits(model, idx, 4, c_step=c_step)
    changed, _, _ = stepped_logits(twin, idx, 4, c_step=c_step)
    with torch.no_grad():
        expected, _ = twin(idx)
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(changed, expected[:, 4:], atol=2e-5, rtol=1e-5)
    assert not torch.allclose(changed, first)
    twin.load_state_dict(model.state_dict())  # new weights copied in
    reloaded, _, _ = stepped_logits(twin, idx, 4, c_step=c_step)
    torch.testing.assert_close(reloaded, first)


def test_the_install_builds_the_c_step():
    # pip install compiles tinytales/_decode.c where a C compiler exists (CI has one); without it
    # TinyTales still works, through the PyTorch step
    assert decoding.available(), "tinytales/_decode.c was not built: reinstall with a C compiler (pip install -e .)"


@needs_kernel
@pytest.mark.parametrize("case, message", [
    ("more_rows", "1 rows"),
    ("other_model", "make it with model.new_cache"),
    ("float64", "must be float32"),
    ("not_contiguous", "contiguous"),
    ("three_tokens", "ids must be (batch, 1)"),
])
def test_c_step_refuses_a_cache_that_does_not_fit_the_ids_or_the_model(case, message):
    """A cache for 1 row given 256 rows of ids segfaulted in C; every mismatch is a ValueError before C runs."""
    model = random_model({})
    with torch.inference_mode():
        cache = model.new_cache(1)
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        step = KernelStep(model)
        idx = torch.tensor([[4]])
        if case == "more_rows":
            idx = torch.randint(0, 300, (256, 1))
            message = f"{idx.size(0)} rows"
        elif case == "other_model":
            cache = GPT(GPTConfig(vocab_size=300, context_length=40, n_layer=1, n_head=4, n_embd=64)).new_cache(1)
        elif case == "float64":
            cache.keys, cache.values = cache.keys.double(), cache.values.double()
        elif case == "not_contiguous":
            cache.keys = cache.keys.transpose(3, 4).contiguous().transpose(3, 4)
        else:
            idx = torch.tensor([[4, 5, 6]])
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            step(idx, cache)
