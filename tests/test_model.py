import pytest
import torch

from tinytales.model import GPT, GPTConfig


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="activation"):
        GPTConfig(activation="tanh")
    with pytest.raises(ValueError, match="unknown keys"):
        GPTConfig.from_dict({"n_embed": 3})


@pytest.mark.parametrize("options", [
    {},
    {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False, "n_kv_head": 1},
    {"activation": "relu2", "qk_norm": True},
])
def test_kv_cache_matches_full_forward(options):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=32, n_layer=2, n_head=2, n_embd=16, **options)).eval()
    idx = torch.randint(0, 50, (2, 12))
    full, _ = model(idx)
    cache = model.new_cache(2)
    first, _ = model(idx[:, :5], cache=cache)
    steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    cached = torch.cat([first, *steps], dim=1)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_causal_future_tokens_do_not_change_past_logits(tiny_model):
    idx = torch.randint(0, 300, (1, 20))
    changed = idx.clone()
    changed[0, 15:] = 7
    a, _ = tiny_model(idx)
    b, _ = tiny_model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15])


def test_weight_tying_and_parameter_counts(tiny_model, tiny_config):
    assert tiny_model.lm_head.weight is tiny_model.tok_emb.weight
    with_emb = tiny_model.num_params()
    without = tiny_model.num_params(embeddings=False)
    emb = tiny_config.vocab_size * tiny_config.n_embd + tiny_config.context_length * tiny_config.n_embd
    assert with_emb - without == emb


def test_padding_mask_ignores_padded_keys(tiny_model):
    idx = torch.randint(0, 300, (1, 10))
    padded = torch.cat([idx, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], dim=1).bool()
    a, _ = tiny_model(idx)
    b, _ = tiny_model(padded, attention_mask=mask)
    torch.testing.assert_close(a, b[:, :10], atol=1e-5, rtol=1e-5)


def test_loss_ignores_padding_targets(tiny_model):
    idx = torch.randint(0, 300, (2, 10))
    targets = idx.clone()
    _, loss_all = tiny_model(idx, targets)
    targets[:, 5:] = -100
    _, loss_half = tiny_model(idx, targets)
    assert loss_all.item() != pytest.approx(loss_half.item())
    logits, _ = tiny_model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :5].reshape(-1, logits.size(-1)), idx[:, :5].reshape(-1))
    assert loss_half.item() == pytest.approx(expected.item(), rel=1e-5)


def test_context_overflow_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="longer than the model's context"):
        tiny_model(torch.zeros(1, 65, dtype=torch.long))


def test_tune_allocator_sets_glibc_thresholds_once():
    import platform

    from tinytales.allocator import tune_allocator

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is expected
    assert tune_allocator() is expected  # idempotent


def test_kv_cache_reorder_continues_the_reordered_rows():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=32, n_layer=2, n_head=2, n_embd=16, position="rope")).eval()
    idx = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        cache = model.new_cache(3)
        model(idx[:, :8], cache=cache)
        for order in ([2, 0, 0], [0, 1, 2], [1, 0, 2]):  # duplicates, identity (nothing moves), a swap
            index = torch.tensor(order)
            idx = idx[index]
            cache.reorder(index)
            continued, _ = model(idx[:, 8:9], cache=cache)
            cache.length -= 1  # feed the same position again after the next reorder
            full, _ = model(idx)
            torch.testing.assert_close(continued[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_equals_index_select_for_any_beam_index():
    import random

    rng = random.Random(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=8, n_layer=2, n_head=2, n_embd=16))
    for _ in range(300):  # duplicates, chains and cycles of moves (e.g. [1, 0]: a swap)
        batch = rng.randint(1, 6)
        cache = model.new_cache(batch)
        cache.length = rng.randint(0, 8)
        cache.keys.normal_(), cache.values.normal_()
        index = torch.tensor([rng.randrange(batch) for _ in range(batch)])
        filled = cache.length
        expected = [store.index_select(1, index)[:, :, :, :filled].clone() for store in (cache.keys, cache.values)]
        cache.reorder(index)
        assert torch.equal(cache.keys[:, :, :, :filled], expected[0]), index
        assert torch.equal(cache.values[:, :, :, :filled], expected[1]), index


BAD_SIZES = [  # (model settings, what the one-line error says); tests/test_hardening.py feeds them to the CLI too
    ({"mlp_hidden": -5}, "mlp_hidden must be a positive integer, got -5"),
    ({"norm_eps": "x"}, "norm_eps must be a number, got 'x'"),
    ({"n_layer": True}, "n_layer must be a positive integer, got True"),
    ({"n_embd": 65536, "vocab_size": 1_000_000}, "n_embd = 65,536 is above the limit"),
    ({"context_length": 2**31 - 1}, "context_length = 2,147,483,647 is above the limit"),
]


@pytest.mark.parametrize("settings, message", BAD_SIZES + [
    ({"position": "rope", "context_length": 65536, "n_embd": 4096, "n_head": 1}, "RoPE tables"),
    ({"n_layer": 256, "n_embd": 8192, "n_head": 64}, "parameters, above the limit"),
    ({"bias": "yes"}, "bias must be true or false"),
])
def test_config_refuses_bad_or_huge_sizes_on_one_line(settings, message):
    with pytest.raises(ValueError) as info:
        GPTConfig(**settings)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("options", [{}, {"position": "rope", "activation": "swiglu", "n_kv_head": 1,
                                          "tie_embeddings": False}])
def test_estimated_params_match_the_model(options):
    config = GPTConfig(vocab_size=50, context_length=16, n_layer=2, n_head=2, n_embd=16, bias=False, **options)
    model = GPT(config)
    matrices = sum(p.numel() for p in model.parameters() if p.dim() >= 2)  # norms and biases are small
    assert config.estimated_params() == matrices
