import itertools
import math
import warnings

import pytest
import torch
import torch.nn as nn

from tinytales.generate import (
    GenerationConfig,
    IncrementalDecoder,
    Story,
    apply_repetition_penalty,
    ban_repeated_ngrams,
    encode_prompt,
    generate,
    min_p_filter,
    prompt_token_limit,
    sample_from,
    stream,
    stream_events,
    top_k_candidates,
    top_p_filter,
)
from tinytales.model import GPT, GPTConfig

PROMPT = "Once upon a time, there was a little girl named Lily."


# ----------------------------------------------------------------------------- helpers

class RecordingModel(nn.Module):
    """Wraps a model (not a GPT itself: the engine must not care) and records each step's raw logits (B, V)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.steps = inner, inner.config, []

    def new_cache(self, batch_size, max_length=None):
        return self.inner.new_cache(batch_size, max_length)

    def forward(self, idx, cache=None, last_only=False):
        logits, loss = self.inner(idx, cache=cache, last_only=last_only)
        self.steps.append(logits[:, -1].float().clone())
        return logits, loss


class FakeCache:
    def __init__(self):
        self.length = 0

    def reorder(self, index):
        pass


class ChainModel:
    """A fake language model: the next token is always successor[last token]; it checks the context rule."""

    def __init__(self, successor: dict, vocab_size: int, context_length: int):
        self.successor = successor
        self.config = GPTConfig(vocab_size=vocab_size, context_length=context_length, n_layer=1, n_head=1, n_embd=4)
        self.calls, self.fed = 0, []

    def new_cache(self, batch_size, max_length=None):
        return FakeCache()

    def __call__(self, idx, cache=None, last_only=False):
        self.calls += 1
        self.fed.append(idx.size(1))
        seen = (cache.length if cache is not None else 0) + idx.size(1)
        assert seen <= self.config.context_length, f"the model was fed {seen} positions"
        if cache is not None:
            cache.length = seen
        logits = torch.full((idx.size(0), 1, self.config.vocab_size), -10.0)
        for row, token in enumerate(idx[:, -1].tolist()):
            logits[row, 0, self.successor[token]] = 10.0
        return logits, None


class UniformModel(ChainModel):
    """Every token equally likely."""

    def __call__(self, idx, cache=None, last_only=False):
        self.calls += 1
        if cache is not None:
            cache.length += idx.size(1)
        return torch.zeros(idx.size(0), 1, self.config.vocab_size), None


class LetterTokenizer:
    """Letters a..(vocab-2) are ids 0..; the last id is the end of story."""

    bos_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size, self.eot_id = vocab_size, vocab_size - 1

    def encode(self, text):
        return [ord(c) - ord("a") for c in text if c != " "]

    def decode(self, ids, skip_special=False):
        return "".join("" if i == self.eot_id else chr(ord("a") + i) for i in ids)


class BosTokenizer:
    """A tokenizer that puts a bos token before every text (like llama2.c's)."""

    def __init__(self, inner, bos_id: int):
        self.inner, self.bos_id, self.eot_id, self.vocab_size = inner, bos_id, inner.eot_id, inner.vocab_size

    def encode(self, text):
        return self.inner.encode(text)

    def decode(self, ids, skip_special=False):
        return self.inner.decode(ids, skip_special)


def full_ids(tokenizer, prompt, story):
    ids, _ = encode_prompt(tokenizer, prompt, 10**6)
    return ids + story.token_ids


def repeated_ngrams(ids, n, start):
    """n-grams ending at or after position `start` that already occurred earlier."""
    found = []
    for end in range(max(start, n - 1), len(ids)):
        gram = tuple(ids[end - n + 1:end + 1])
        earlier = {tuple(ids[i:i + n]) for i in range(0, end - n + 1)}
        if gram in earlier:
            found.append(gram)
    return found


# ----------------------------------------------------------------------------- settings and prompts

@pytest.mark.parametrize("field, value, allowed", [
    ("method", "nucleus", "greedy, beam, sample"),
    ("temperature", -0.1, ">= 0"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "(0, 1]"),
    ("top_k", -1, ">= 0"),
    ("min_p", 1.0, "[0, 1)"),
    ("repetition_penalty", 0.0, "> 0"),
    ("no_repeat_ngram_size", -2, ">= 0"),
    ("num_beams", 0, ">= 1"),
    ("max_new_tokens", 0, ">= 1"),
    ("num_samples", 0, "in [1, 256]"),
    ("temperature", float("nan"), "a number"),
    ("top_k", 2.5, "an integer"),
])
def test_config_rejects_bad_values_naming_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as error:
        GenerationConfig(**{field: value})
    message = str(error.value)
    assert field in message and allowed in message and repr(value).strip("'") in message


def test_config_rejects_impossible_combinations():
    with pytest.raises(ValueError, match=r"num_samples \(5\) must be <= num_beams \(2\)"):
        GenerationConfig(method="beam", num_beams=2, num_samples=5)
    with pytest.raises(ValueError, match="greedy decoding tells one story"):
        GenerationConfig(method="sample", temperature=0, num_samples=3)
    assert GenerationConfig(method="sample", temperature=0).greedy


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_empty_prompt_is_an_error_with_an_example(tiny_model, tiny_tokenizer, prompt):
    with pytest.raises(ValueError, match="prompt is empty.*e.g. \"Once upon a time"):
        generate(tiny_model, tiny_tokenizer, prompt, GenerationConfig(max_new_tokens=2))


def test_huge_prompt_is_an_error(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="20,001 characters, more than the limit of 20,000"):
        generate(tiny_model, tiny_tokenizer, "a" * 20_001, GenerationConfig(max_new_tokens=2))


def test_long_prompt_keeps_its_last_tokens_with_a_warning(tiny_model, tiny_tokenizer):
    prompt = " ".join(f"Tom saw {i} cats." for i in range(40))
    ids = tiny_tokenizer.encode(prompt)
    assert len(ids) > 64
    start = tiny_tokenizer.eot_id  # the story-start token (no BOS): what every training story follows
    # room for 10 new tokens in a context of 64: the story-start token and the prompt's last 53 tokens
    with pytest.warns(UserWarning, match="kept its last 53 tokens"):
        kept, truncated = encode_prompt(tiny_tokenizer, prompt, 64, max_new_tokens=10)
    assert truncated and kept == [start] + ids[-53:]
    # never less than half the context, however many new tokens are wanted
    assert prompt_token_limit(64, 50) == 32
    with pytest.warns(UserWarning):
        kept, _ = encode_prompt(tiny_tokenizer, prompt, 64, max_new_tokens=50)
    assert kept == [start] + ids[-31:]
    # bos stays first
    with pytest.warns(UserWarning):
        kept, _ = encode_prompt(BosTokenizer(tiny_tokenizer, bos_id=299), prompt, 64, max_new_tokens=10)
    assert kept == [299] + ids[-53:]
    # a short prompt is untouched, and does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encode_prompt(tiny_tokenizer, "Tom", 64, 10) == ([start] + tiny_tokenizer.encode("Tom"), False)
    with pytest.warns(UserWarning):
        story = generate(tiny_model, tiny_tokenizer, prompt, GenerationConfig(method="greedy", max_new_tokens=10))[0]
    assert story.truncated and story.prompt_tokens == 54


# ----------------------------------------------------------------------------- greedy, cache, context

def test_greedy_is_the_argmax_path_computed_without_cache(tiny_model, tiny_tokenizer):
    story = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="greedy", max_new_tokens=15))[0]
    ids = tiny_tokenizer.encode(PROMPT)
    expected = []
    with torch.no_grad():
        for _ in range(15):
            logits, _ = tiny_model(torch.tensor([ids + expected]))
            token = int(logits[0, -1, :tiny_tokenizer.vocab_size].argmax())  # ids beyond the tokenizer never
            expected.append(token)
            if token == tiny_tokenizer.eot_id:
                break
    assert story.token_ids == expected
    assert story.text == tiny_tokenizer.decode([t for t in expected if t != tiny_tokenizer.eot_id])


@pytest.mark.parametrize("config", [
    GenerationConfig(method="greedy", max_new_tokens=100),  # 100 > context 64: the window slides
    GenerationConfig(method="sample", max_new_tokens=100, seed=3, top_k=20, num_samples=2),
    GenerationConfig(method="beam", max_new_tokens=30, num_beams=3, num_samples=2, no_repeat_ngram_size=2),
    GenerationConfig(method="greedy", max_new_tokens=20, repetition_penalty=1.5),
])
def test_kv_cache_gives_the_same_stories_as_recomputing(tiny_model, tiny_tokenizer, config):
    cached = generate(tiny_model, tiny_tokenizer, PROMPT, config)
    config.use_cache = False
    recomputed = generate(tiny_model, tiny_tokenizer, PROMPT, config)
    assert [s.token_ids for s in cached] == [s.token_ids for s in recomputed]


def test_window_slides_and_never_exceeds_the_context(tiny_tokenizer):
    # a cycle that never ends the story: a -> b -> c -> a
    model = ChainModel({0: 1, 1: 2, 2: 0, 3: 0}, vocab_size=4, context_length=8)
    tokenizer = LetterTokenizer(4)
    for use_cache in (True, False):
        model.fed = []
        story = generate(model, tokenizer, "abc", GenerationConfig(method="greedy", max_new_tokens=30,
                                                                   use_cache=use_cache))[0]
        assert story.new_tokens == 30 and not story.finished
        assert story.text == ("abc" * 11)[:30]
        # the story-start token + the prompt, one token at a time until 8 positions, then the last half (4) again
        if use_cache:
            assert model.fed[:7] == [4, 1, 1, 1, 1, 4, 1]
        else:  # the whole window every time: it grows to 8, falls back to 4
            assert model.fed[:7] == [4, 5, 6, 7, 8, 4, 5]
    beam = GenerationConfig(method="beam", max_new_tokens=30, num_beams=2, early_stopping=False)
    beams = generate(model, tokenizer, "abc", beam)
    assert beams[0].text == ("abc" * 11)[:30]


def test_real_model_runs_past_its_context(tiny_model, tiny_tokenizer):
    # the GPT raises if it is ever fed more than 64 positions
    story = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="greedy", max_new_tokens=150))[0]
    assert story.new_tokens == 150 or story.finished


def test_story_ends_at_end_of_story_token():
    tokenizer = LetterTokenizer(6)  # a b c d e, eot = 5
    model = ChainModel({0: 1, 1: 2, 2: 5, 3: 4, 4: 0, 5: 5}, vocab_size=6, context_length=32)
    for config in (GenerationConfig(method="greedy"), GenerationConfig(seed=0, num_samples=3)):
        model.calls = 0
        stories = generate(model, tokenizer, "d", config)
        for story in stories:
            assert story.token_ids == [4, 0, 1, 2, 5] and story.finished
            assert story.text == "eabc" and story.new_tokens == 5
        assert model.calls == 5  # it stopped at the end of the story, not at max_new_tokens (200)
    beam = generate(model, tokenizer, "d", GenerationConfig(method="beam", num_beams=2, early_stopping=False,
                                                            max_new_tokens=20))[0]
    assert beam.token_ids == [4, 0, 1, 2, 5] and beam.finished
    cut = generate(model, tokenizer, "d", GenerationConfig(method="greedy", max_new_tokens=2))[0]
    assert cut.token_ids == [4, 0] and not cut.finished and cut.text == "ea"


def test_sampled_rows_end_independently():
    tokenizer = LetterTokenizer(4)
    model = UniformModel({}, vocab_size=4, context_length=64)
    stories = generate(model, tokenizer, "a", GenerationConfig(seed=0, num_samples=8, max_new_tokens=40))
    for story in stories:
        eot = tokenizer.eot_id
        assert eot not in story.token_ids[:-1]
        assert story.finished == (story.token_ids[-1] == eot)
        assert story.text == tokenizer.decode(story.token_ids[:-1] if story.finished else story.token_ids)
    assert len({s.new_tokens for s in stories}) > 1
    assert model.calls == max(s.new_tokens for s in stories) < 40  # it stopped when the last row ended


# ----------------------------------------------------------------------------- beam search

def sequence_logprob(model, prompt_ids, new_ids, vocab_limit):
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt_ids + new_ids]))
    logprobs = logits[0, :, :vocab_limit].float().log_softmax(-1)
    return sum(float(logprobs[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(new_ids))


def test_beam_with_one_beam_is_greedy(tiny_model, tiny_tokenizer):
    greedy = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="greedy", max_new_tokens=25))[0]
    beam = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="beam", num_beams=1,
                                                                         max_new_tokens=25))[0]
    assert beam.token_ids == greedy.token_ids


def test_beam_score_is_at_least_greedys_logprob(tiny_model, tiny_tokenizer):
    greedy = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="greedy", max_new_tokens=12))[0]
    beam = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="beam", num_beams=4,
                                                                         length_penalty=0, max_new_tokens=12))[0]
    prompt_ids = encode_prompt(tiny_tokenizer, PROMPT, 64)[0]
    greedy_logprob = sequence_logprob(tiny_model, prompt_ids, greedy.token_ids, tiny_tokenizer.vocab_size)
    assert beam.score == pytest.approx(sequence_logprob(tiny_model, prompt_ids, beam.token_ids,
                                                        tiny_tokenizer.vocab_size), abs=1e-4)
    assert beam.score >= greedy_logprob - 1e-5


@pytest.mark.parametrize("tokenizer_vocab, seed, scale", [
    (5, 1, 3.0),  # d is the end of story: the best story is short
    (6, 2, 1.0),  # the end of story (id 5) is outside the model's 5 ids: every story has 3 tokens
])
def test_wide_beam_finds_the_most_likely_story(tokenizer_vocab, seed, scale):
    """With num_beams = V^(steps-1) beam search is exhaustive: it must find the exact optimum."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=5, context_length=16, n_layer=1, n_head=1, n_embd=16)).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(scale)
    tokenizer = BosTokenizer(LetterTokenizer(tokenizer_vocab), bos_id=4)  # a story-start id the model has
    eot, prompt, steps = tokenizer.eot_id, "ab", 3
    prompt_ids = encode_prompt(tokenizer, prompt, 16)[0]
    candidates = []  # every story of up to 3 tokens: ended by eot, or cut at 3
    for length in range(1, steps + 1):
        for ids in itertools.product(range(5), repeat=length):
            if eot in ids[:-1] or (length < steps and ids[-1] != eot):
                continue
            candidates.append(list(ids))
    best = max(candidates, key=lambda ids: sequence_logprob(model, prompt_ids, ids, 5))
    config = GenerationConfig(method="beam", num_beams=25, length_penalty=0, max_new_tokens=steps)
    beam = generate(model, tokenizer, prompt, config)[0]
    assert beam.token_ids == best
    assert beam.score == pytest.approx(sequence_logprob(model, prompt_ids, best, 5), abs=1e-4)
    greedy = generate(model, tokenizer, prompt, GenerationConfig(method="greedy", max_new_tokens=steps))[0]
    assert greedy.token_ids != best  # the case is a real test: greedy misses the optimum
    assert beam.score > sequence_logprob(model, prompt_ids, greedy.token_ids, 5)


def test_beam_search_copes_with_fewer_continuations_than_beams():
    tokenizer = LetterTokenizer(3)  # a, b, eot = 2: at most 2 live continuations per beam
    model = ChainModel({0: 1, 1: 0, 2: 2}, vocab_size=3, context_length=16)
    # no token may repeat: after "a" only "b" and the end are possible, then only the end
    config = GenerationConfig(method="beam", num_beams=4, num_samples=2, no_repeat_ngram_size=1, max_new_tokens=10)
    stories = generate(model, tokenizer, "a", config)
    assert [s.token_ids for s in stories] == [[1, 2], [2]]
    assert all(s.finished for s in stories) and stories[0].text == "b"


def test_beam_returns_the_best_hypotheses_in_order(tiny_model, tiny_tokenizer):
    config = GenerationConfig(method="beam", num_beams=4, num_samples=3, max_new_tokens=10)
    stories = generate(tiny_model, tiny_tokenizer, PROMPT, config)
    assert len(stories) == 3
    assert [s.score for s in stories] == sorted((s.score for s in stories), reverse=True)
    assert len({tuple(s.token_ids) for s in stories}) == 3


# ----------------------------------------------------------------------------- sampling and filters

def test_top_k_candidates_are_the_k_best_best_first():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 1.0, 3.0]])
    values, ids = top_k_candidates(logits, 2)
    assert ids.tolist() == [[1, 3], [4, 2]] and values.tolist() == [[5.0, 4.0], [3.0, 2.0]]
    assert top_k_candidates(logits, 0) == (logits, None) and top_k_candidates(logits, 5) == (logits, None)


def test_sampling_with_top_k_and_top_p_draws_only_from_the_filtered_tokens_in_proportion():
    from tinytales.generate import GenerationConfig, pick_tokens

    probs = torch.tensor([0.02, 0.40, 0.03, 0.25, 0.20, 0.10])  # top-2: ids 1, 3; top-4: + 4, 5
    logits = probs.log().repeat(20_000, 1)
    generator = torch.Generator().manual_seed(0)
    drawn = pick_tokens(logits, GenerationConfig(method="sample", top_k=2, top_p=1.0), generator)
    counts = torch.bincount(drawn, minlength=6) / len(drawn)
    torch.testing.assert_close(counts, torch.tensor([0, 0.40, 0, 0.25, 0, 0]) / 0.65, atol=0.015, rtol=0)
    # top-k 4 (renormalised: .42, .26, .21, .11), then top-p 0.8 keeps the first three (.42 + .26 < 0.8)
    drawn = pick_tokens(logits, GenerationConfig(method="sample", top_k=4, top_p=0.8), generator)
    kept = probs[[1, 3, 4]] / probs[[1, 3, 4]].sum()
    counts = torch.bincount(drawn, minlength=6) / len(drawn)
    torch.testing.assert_close(counts[[1, 3, 4]], kept, atol=0.015, rtol=0)
    assert counts[[0, 2, 5]].sum() == 0
    # temperature 0.5 squares the probabilities; top-k 2 keeps ids 1 and 3: 0.16 : 0.0625
    drawn = pick_tokens(logits, GenerationConfig(method="sample", top_k=2, top_p=1.0, temperature=0.5), generator)
    counts = torch.bincount(drawn, minlength=6) / len(drawn)
    torch.testing.assert_close(counts[[1, 3]], torch.tensor([0.16, 0.0625]) / 0.2225, atol=0.015, rtol=0)


def test_top_p_filter_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    assert top_p_filter(logits, 0.75).isfinite().tolist() == [[False, True, False, True]]  # 0.5 + 0.3 >= 0.75
    assert top_p_filter(logits, 0.85).isfinite().tolist() == [[False, True, True, True]]  # + 0.15
    assert top_p_filter(logits, 0.4).isfinite().tolist() == [[False, True, False, False]]  # the best alone
    assert top_p_filter(logits, 0.99).isfinite().all()
    assert top_p_filter(logits, 1.0) is logits


def test_top_p_filter_matches_a_full_sort_for_small_and_large_nuclei():
    torch.manual_seed(0)
    for logits in (torch.randn(3, 2000) * 4, torch.randn(3, 2000) * 0.1):  # peaky (small nucleus), flat (large)
        for top_p in (0.3, 0.9):
            probs = logits.softmax(-1)
            expected = torch.zeros_like(probs, dtype=torch.bool)
            for row in range(3):
                order = probs[row].argsort(descending=True)
                count = int((probs[row, order].cumsum(0) - probs[row, order] < top_p).sum())
                expected[row, order[:count]] = True
            assert torch.equal(top_p_filter(logits, top_p).isfinite(), expected)
    flat = torch.zeros(1, 1000)
    assert int(top_p_filter(flat, 0.5).isfinite().sum()) == 500  # far more than the first guess of 256


def test_top_p_filter_on_rows_sorted_best_first_keeps_the_same_nucleus():
    torch.manual_seed(1)
    for logits in (torch.randn(4, 50) * 3, torch.randn(4, 50) * 0.1):  # peaky and flat; no ties (any tie may go)
        logits = logits.sort(dim=-1, descending=True).values  # as top-k returns its candidates
        for top_p in (0.2, 0.5, 0.95):
            assert torch.equal(top_p_filter(logits, top_p, descending=True), top_p_filter(logits, top_p))


def test_sample_from_draws_with_the_given_probabilities():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(8_000, 1)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_from(probs, generator), minlength=4) / 8_000
    assert counts[1] == 0
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.02, rtol=0)
    assert sample_from(torch.tensor([[0.0, 0.0, 1.0]]), generator).tolist() == [2]


def test_min_p_filter_keeps_tokens_near_the_best():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    # min_p 0.25: keep p >= 0.125
    assert min_p_filter(probs.log(), 0.25).isfinite().tolist() == [[False, True, True, True]]
    # min_p 0.5: keep p >= 0.25
    assert min_p_filter(probs.log(), 0.5).isfinite().tolist() == [[False, True, False, True]]
    assert min_p_filter(probs.log(), 0.0).isfinite().all()


def test_top_k_sampling_never_leaves_the_k_best(tiny_model, tiny_tokenizer):
    model = RecordingModel(tiny_model)
    config = GenerationConfig(method="sample", temperature=50.0, top_k=3, max_new_tokens=40, seed=0)
    story = generate(model, tiny_tokenizer, PROMPT, config)[0]
    ranks = []
    for logits, token in zip(model.steps, story.token_ids):
        order = logits[0, :tiny_tokenizer.vocab_size].argsort(descending=True).tolist()
        ranks.append(order.index(token))
    assert max(ranks) < 3
    assert set(ranks) == {0, 1, 2}  # the temperature flattened the 3 best: all were drawn


def test_same_seed_same_story_other_seed_other_story(tiny_model, tiny_tokenizer):
    def tell(seed):
        config = GenerationConfig(method="sample", temperature=1.0, max_new_tokens=20, seed=seed)
        return generate(tiny_model, tiny_tokenizer, PROMPT, config)[0].token_ids

    before = torch.random.get_rng_state()
    assert tell(1) == tell(1)
    assert tell(1) != tell(2)  # a random model is close to uniform over 300 tokens: 20 equal draws cannot happen
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone


def test_samples_run_as_one_batch_of_different_stories(tiny_model, tiny_tokenizer):
    model = RecordingModel(tiny_model)
    stories = generate(model, tiny_tokenizer, PROMPT, GenerationConfig(num_samples=4, max_new_tokens=8, seed=0))
    assert len(stories) == 4 and len({tuple(s.token_ids) for s in stories}) == 4
    assert all(step.size(0) == 4 for step in model.steps)
    assert len(model.steps) <= 8


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_greedy_with_repetition_penalty_picks_the_penalised_argmax(tiny_model, tiny_tokenizer):
    model = RecordingModel(tiny_model)
    config = GenerationConfig(method="greedy", repetition_penalty=1.8, max_new_tokens=20)
    story = generate(model, tiny_tokenizer, PROMPT, config)[0]
    history = tiny_tokenizer.encode(PROMPT)
    for logits, token in zip(model.steps, story.token_ids):
        logits = logits[:, :tiny_tokenizer.vocab_size]
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen[0, history] = True
        assert token == int(apply_repetition_penalty(logits, seen, 1.8).argmax())
        history.append(token)
    plain = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="greedy", max_new_tokens=20))[0]
    assert len(set(story.token_ids)) > len(set(plain.token_ids))  # fewer repeats than without the penalty


def test_ban_repeated_ngrams_bans_exactly_the_completing_tokens():
    tokens = torch.tensor([[1, 2, 3, 1, 2, 4, 1, 2]])  # "1 2" was followed by 3 and 4
    banned = ~ban_repeated_ngrams(torch.zeros(1, 6), tokens, 3).isfinite()
    assert banned.nonzero()[:, 1].tolist() == [3, 4]
    banned = ~ban_repeated_ngrams(torch.zeros(1, 6), tokens, 2).isfinite()  # after "2": 3 and 4
    assert banned.nonzero()[:, 1].tolist() == [3, 4]
    banned = ~ban_repeated_ngrams(torch.zeros(1, 6), tokens, 1).isfinite()  # every token so far
    assert banned.nonzero()[:, 1].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_no_repeat_ngram_never_repeats_an_ngram(tiny_model, tiny_tokenizer, method):
    prompt_length = len(tiny_tokenizer.encode(PROMPT))
    plain = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="greedy", max_new_tokens=40))[0]
    assert repeated_ngrams(full_ids(tiny_tokenizer, PROMPT, plain), 2, prompt_length)  # the model loops by itself
    config = GenerationConfig(method=method, max_new_tokens=40, no_repeat_ngram_size=2, seed=0, num_beams=3)
    story = generate(tiny_model, tiny_tokenizer, PROMPT, config)[0]
    assert story.new_tokens == 40 or story.finished
    assert not repeated_ngrams(full_ids(tiny_tokenizer, PROMPT, story), 2, prompt_length)


# ----------------------------------------------------------------------------- streaming

def test_stream_pieces_join_to_the_story(tiny_model, tiny_tokenizer):
    config = GenerationConfig(seed=5, max_new_tokens=60)
    events = list(stream_events(tiny_model, tiny_tokenizer, PROMPT, config))
    *pieces, summary = events
    assert all(isinstance(p, str) and p for p in pieces) and len(pieces) > 1
    assert "".join(pieces) == summary.text
    assert summary.text == generate(tiny_model, tiny_tokenizer, PROMPT, config)[0].text
    assert summary.prompt_tokens == len(tiny_tokenizer.encode(PROMPT))
    assert summary.new_tokens == len(summary.token_ids) and summary.tokens_per_second > 0
    assert "".join(stream(tiny_model, tiny_tokenizer, PROMPT, config)) == summary.text
    beam = GenerationConfig(method="beam", max_new_tokens=10)
    *pieces, summary = stream_events(tiny_model, tiny_tokenizer, PROMPT, beam)
    assert "".join(pieces) == summary.text == generate(tiny_model, tiny_tokenizer, PROMPT, beam)[0].text


@pytest.mark.parametrize("method", ["beam", "sample"])
def test_should_stop_ends_generation_between_steps(tiny_model, tiny_tokenizer, method):
    """Beam search yields nothing until its story is chosen, so closing the generator cannot stop it:
    should_stop (a web server's "the client went away") is asked before every step instead."""
    model = RecordingModel(tiny_model)
    asked = []

    def should_stop():
        asked.append(len(model.steps))
        return len(asked) > 5

    config = GenerationConfig(method=method, max_new_tokens=500, num_beams=8, seed=0)
    events = list(stream_events(model, tiny_tokenizer, PROMPT, config, should_stop=should_stop))
    assert not any(isinstance(event, Story) for event in events)  # stopped: no summary
    assert len(asked) == 6 and len(model.steps) <= 6


def test_incremental_decoder_emits_only_whole_characters(tiny_tokenizer):
    text = "The cat 🐱 said “héllo” 日本"
    ids = tiny_tokenizer.encode(text)
    assert len(ids) > len(text.split())  # multi-byte characters are split across byte tokens
    decoder = IncrementalDecoder(tiny_tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "🐱" in pieces  # held back until its four bytes arrived, then emitted whole


def test_stream_checks_its_arguments_before_the_first_piece(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="num_samples must be 1"):
        stream_events(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(num_samples=2))
    with pytest.raises(ValueError, match="prompt is empty"):
        stream(tiny_model, tiny_tokenizer, " ", GenerationConfig())


def test_closing_the_stream_stops_generation_and_leaves_no_inference_mode(tiny_model, tiny_tokenizer):
    model = RecordingModel(tiny_model)
    events = stream_events(model, tiny_tokenizer, PROMPT, GenerationConfig(seed=0, max_new_tokens=200))
    next(events), next(events)
    assert not torch.is_inference_mode_enabled()  # the consumer's code between pieces runs normally
    calls = len(model.steps)
    events.close()
    assert len(model.steps) == calls < 200


def test_story_summary_is_json_ready(tiny_model, tiny_tokenizer):
    import json

    story = generate(tiny_model, tiny_tokenizer, PROMPT, GenerationConfig(method="greedy", max_new_tokens=5))[0]
    data = json.loads(json.dumps(story.to_dict()))
    assert data["new_tokens"] == 5 and data["prompt"] == PROMPT
    assert math.isclose(data["tokens_per_second"], 5 / story.seconds)


def test_extreme_but_valid_settings_still_give_a_story(tiny_model, tiny_tokenizer):
    """A temperature near 0 or a top_p that rounds to 0 in float32 acts like greedy, never NaN."""
    from tinytales.generate import GenerationConfig, generate

    greedy = generate(tiny_model, tiny_tokenizer, "Once upon", GenerationConfig(method="greedy", max_new_tokens=8))
    for settings in ({"temperature": 1e-39}, {"top_p": 5e-324}):
        config = GenerationConfig(method="sample", max_new_tokens=8, seed=0, **settings)
        assert generate(tiny_model, tiny_tokenizer, "Once upon", config)[0].token_ids == greedy[0].token_ids
