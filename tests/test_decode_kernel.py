"""The C decoding step (tinytales/_decode.c) against the PyTorch step, for every architecture option."""
import pytest
import torch

from tinytales import decode_kernel
from tinytales.generate import GenerationConfig, generate
from tinytales.model import GPT, GPTConfig, _StepWeights

OPTIONS = [
    {},  # GPT-2: learned positions, LayerNorm, GELU, biases, tied embeddings
    {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False},  # Llama / the bundled model
    {"activation": "relu2", "qk_norm": True, "n_kv_head": 1, "tie_embeddings": False},
    {"position": "rope", "norm": "rmsnorm", "qk_norm": True, "n_kv_head": 2, "bias": True, "mlp_hidden": 72},
    {"bias": False, "norm": "layernorm", "activation": "swiglu", "n_kv_head": 2},
]


def random_model(options: dict, vocab: int = 300, context: int = 40) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, context_length=context, n_layer=2, n_head=4, n_embd=64, **options)).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than the init: norms, biases and gates all matter
            p.normal_(0.0, 0.2)
    return model


def stepped_logits(model: GPT, idx: torch.Tensor, prefill: int, c_step: bool) -> tuple[torch.Tensor, object]:
    GPT.c_step = c_step
    try:
        with torch.inference_mode():
            cache = model.new_cache(idx.size(0))
            model(idx[:, :prefill], cache=cache)
            steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(prefill, idx.size(1))]
    finally:
        GPT.c_step = True
    return torch.cat(steps, dim=1), cache


needs_kernel = pytest.mark.skipif(not decode_kernel.available(), reason="the C decoding step was not built")


def test_the_install_builds_the_c_step():
    # pip install compiles tinytales/_decode.c where a C compiler exists (CI has one); without it
    # TinyTales still works, through the PyTorch step
    assert decode_kernel.available(), "tinytales/_decode.c was not built: reinstall with a C compiler (pip install -e .)"


@needs_kernel
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("batch", [1, 3])
def test_c_step_equals_the_pytorch_step_and_the_full_forward(options, batch):
    model = random_model(options)
    idx = torch.randint(0, 300, (batch, 30))
    with torch.no_grad():
        full, _ = model(idx)
    c_logits, c_cache = stepped_logits(model, idx, 4, c_step=True)
    torch_logits, torch_cache = stepped_logits(model, idx, 4, c_step=False)
    assert isinstance(c_cache.step_weights, decode_kernel.KernelStep)
    assert isinstance(torch_cache.step_weights, _StepWeights)
    torch.testing.assert_close(c_logits, torch_logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(c_logits, full[:, 4:], atol=2e-5, rtol=1e-5)
    # the keys and values it wrote are the ones the PyTorch step wrote
    torch.testing.assert_close(c_cache.keys, torch_cache.keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_cache.values, torch_cache.values, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("options", OPTIONS[:2])
def test_every_method_tells_the_same_story_with_either_step(options, tiny_tokenizer):
    model = random_model(options, vocab=320, context=64)
    for config in (GenerationConfig(method="greedy", max_new_tokens=40),
                   GenerationConfig(method="beam", num_beams=4, num_samples=2, max_new_tokens=30),
                   GenerationConfig(method="sample", temperature=1.0, top_k=20, num_samples=3, seed=3,
                                    max_new_tokens=100)):  # 100 new tokens: past the context, the window slides
        stories = {}
        for c_step in (True, False):
            GPT.c_step = c_step
            try:
                stories[c_step] = [s.token_ids for s in generate(model, tiny_tokenizer, "Once upon a time", config)]
            finally:
                GPT.c_step = True
        assert stories[True] == stories[False], config.method


@needs_kernel
def test_c_step_follows_the_beam_search_reorder():
    model = random_model(OPTIONS[1])
    idx = torch.randint(0, 300, (3, 12))
    GPT.c_step = True
    with torch.inference_mode():
        cache = model.new_cache(3)
        model(idx[:, :8], cache=cache)
        model(idx[:, 8:9], cache=cache)  # the first step makes the kernel's weights
        assert isinstance(cache.step_weights, decode_kernel.KernelStep)
        index = torch.tensor([2, 0, 0])
        cache.reorder(index)
        continued, _ = model(idx[index, 9:10], cache=cache)
        expected, _ = model(idx[index, :10])
    torch.testing.assert_close(continued[:, -1], expected[:, -1], atol=2e-5, rtol=1e-5)


@needs_kernel
def test_c_step_reads_int32_token_ids_as_well():
    model = random_model({})
    with torch.inference_mode():
        cache = model.new_cache(2)
        model(torch.tensor([[1, 2], [3, 4]]), cache=cache)
        wide, _ = model(torch.tensor([[5], [6]]), cache=cache)
        cache.length -= 1
        narrow, _ = model(torch.tensor([[5], [6]], dtype=torch.int32), cache=cache)
    torch.testing.assert_close(narrow, wide)


@needs_kernel
def test_c_step_refuses_bad_token_ids_with_an_error():
    model = random_model({})
    with torch.inference_mode():
        cache = model.new_cache(1)
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 300\)"):
            model(torch.tensor([[300]]), cache=cache)
        assert cache.length == 3  # nothing happened
        logits, _ = model(torch.tensor([[4]]), cache=cache)
    assert torch.isfinite(logits).all()


def test_the_pytorch_step_runs_where_the_c_step_cannot(monkeypatch):
    model = random_model(OPTIONS[1])
    idx = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
    monkeypatch.setattr(decode_kernel, "_library", None)  # as if no C compiler was there at install time
    assert not decode_kernel.available()
    stepped, cache = stepped_logits(model, idx, 4, c_step=True)
    assert isinstance(cache.step_weights, _StepWeights)
    torch.testing.assert_close(stepped, full[:, 4:], atol=2e-5, rtol=1e-5)


def test_a_16_bit_model_decodes_through_the_pytorch_step():
    model = random_model(OPTIONS[1]).to(torch.bfloat16)
    with torch.inference_mode():
        cache = model.new_cache(1)
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        assert not decode_kernel.usable(model, cache)


@needs_kernel
def test_a_model_that_decoded_can_still_be_copied_and_its_packed_weights_follow_training():
    import copy

    model = random_model({})
    idx = torch.randint(0, 300, (1, 8))
    first, _ = stepped_logits(model, idx, 4, c_step=True)
    twin = copy.deepcopy(model)  # the packed weights live beside the model, not in it
    with torch.no_grad():
        twin.blocks[0].mlp.fc.weight.mul_(2.0)  # an in-place update: the twin's packed copy is made again
    again, _ = stepped_logits(model, idx, 4, c_step=True)
    changed, _ = stepped_logits(twin, idx, 4, c_step=True)
    expected, _ = stepped_logits(twin, idx, 4, c_step=False)
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(changed, expected, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(changed, first)
