"""Story generation: greedy decoding, beam search and sampling, with a KV cache and streaming text.

The engine is model-agnostic: it only uses `model.config.context_length`, `model.config.vocab_size`,
`model.new_cache(batch, max_length)` (with `cache.reorder(index)`) and the forward call
`model(idx, cache=cache, last_only=True) -> (logits (B, 1, V), _)`. TinyTales GPTs, llama2.c
models and wrapped Hugging Face models all run through it unchanged. The engine owns the cache and
the choice of how a single new token is decoded (`decoding.stepper`: the C or the PyTorch step for a
TinyTales GPT on the CPU, else the forward call); the model only reads and writes the cache.

The rules, in one place:
- prompt: the story-start token first (`story_start_id`: BOS, or the end-of-story token that precedes
  every training story), then the ingredients asked for (config.words / config.features, written as in
  training: tinytales.ingredients), then the prompt; a prompt too long for the context keeps its last
  tokens, with a warning (see `encode_prompt`).
- context: when prompt + story fill the model's context, the window slides: the model re-reads
  the last half of the context (the cache is rebuilt from it) and goes on. So max_new_tokens may
  exceed the context, and no forward call ever sees more than `context_length` positions.
- end: a story ends at the tokenizer's `eot_id` (finished=True) or after max_new_tokens (finished=False).
- logits: only the last position's (B, V) logits are computed and filtered; ids the model has but
  the tokenizer does not (a vocabulary padded to a multiple of 64) are never chosen.

Longer than 500 lines because it is the one engine behind every method: the prompt rule, the logits filters,
sampling, beam search and streaming share the window and the decoding state, and read best side by side.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from .decoding import stepper
from .defaults import BEAM_NO_REPEAT_NGRAM, DECODING_METHODS, MAX_PROMPT_CHARS, STORY_DEFAULTS
from .ingredients import Ingredients
from .tokenizer import story_start_id

METHODS = ("greedy", "beam", "sample")
EXAMPLE_PROMPT = "Once upon a time, there was a little girl named Lily."
NEG_INF = float("-inf")
NUCLEUS_FIRST_GUESS = 256  # top-p looks for the nucleus among this many best tokens first



def story_config(**overrides) -> "GenerationConfig":
    """A GenerationConfig with the story defaults (STORY_DEFAULTS) for sampling, and overrides on top.

    Greedy and beam search take the story defaults' length only (plus beam's no-repeat 3-gram block).
    """
    method = overrides.get("method", "sample")
    settings = dict(STORY_DEFAULTS) if method == "sample" else {"max_new_tokens": STORY_DEFAULTS["max_new_tokens"]}
    if method == "beam":
        settings["no_repeat_ngram_size"] = BEAM_NO_REPEAT_NGRAM
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return GenerationConfig(**settings)


MAX_NUM_SAMPLES = 256  # stories of one call: each is a row of one batch (its cache included)


@dataclass
class GenerationConfig:
    method: str = "sample"
    max_new_tokens: int = 200
    temperature: float = 1.0  # sample only; 0 means greedy
    top_k: int = 0  # sample only; 0 = off
    top_p: float = 1.0  # sample only; 1 = off
    min_p: float = 0.0  # sample only; 0 = off
    repetition_penalty: float = 1.0  # every method; 1 = off
    no_repeat_ngram_size: int = 0  # every method; 0 = off
    num_beams: int = 4  # beam only
    length_penalty: float = 1.0  # beam only: score = log-prob / new_tokens ** length_penalty
    early_stopping: bool = True  # beam only: stop once num_beams stories have ended
    num_samples: int = 1  # stories returned (sample: one batch of rows; beam: the best hypotheses)
    seed: int | None = None  # sampling is reproducible with a seed (a private torch.Generator)
    use_cache: bool = True  # False recomputes the whole window for every token (a check of the cache)
    words: tuple[str, ...] = ()  # ingredients: words the story should use (models trained with them)
    features: tuple[str, ...] = ()  # ingredients: tinytales.ingredients.FEATURES the story should have

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(f"invalid generation setting: {message}")

        def number(name: str, integer: bool = False):
            value = getattr(self, name)
            kinds = int if integer else (int, float)
            need(isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value),
                 f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
            return value

        named = (f"; {self.method!r} names settings of these: GenerationConfig(**tinytales.defaults."
                 f"method_settings({self.method!r}))" if self.method in tuple(DECODING_METHODS) else "")
        need(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}{named}")
        need(number("temperature") >= 0, f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        need(0 < number("top_p") <= 1, f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        need(number("top_k", True) >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}")
        need(0 <= number("min_p") < 1, f"min_p must be in [0, 1) (0 = off), got {self.min_p}")
        need(number("repetition_penalty") > 0,
             f"repetition_penalty must be > 0 (1 = off, above 1 discourages repeats), got {self.repetition_penalty}")
        need(number("no_repeat_ngram_size", True) >= 0,
             f"no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        need(number("num_beams", True) >= 1, f"num_beams must be >= 1, got {self.num_beams}")
        number("length_penalty")
        need(number("max_new_tokens", True) >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        need(1 <= number("num_samples", True) <= MAX_NUM_SAMPLES,
             f"num_samples must be in [1, {MAX_NUM_SAMPLES}] (one batch row each), got {self.num_samples}")
        need(self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)),
             f"seed must be an integer or None, got {self.seed!r}")
        try:
            ingredients = Ingredients.parse(self.words, self.features)
        except ValueError as e:
            need(False, str(e))
        self.words, self.features = ingredients.words, ingredients.features
        if self.method == "beam":
            need(self.num_samples <= self.num_beams, f"num_samples ({self.num_samples}) must be <= num_beams "
                 f"({self.num_beams}): beam search returns its best hypotheses")
        elif self.greedy:
            need(self.num_samples == 1, f"greedy decoding tells one story, got num_samples={self.num_samples}; "
                 "use method 'sample' with a temperature > 0 for several")

    @property
    def greedy(self) -> bool:
        return self.method == "greedy" or (self.method == "sample" and self.temperature == 0)

    @property
    def ingredients(self) -> Ingredients:
        return Ingredients(self.words, self.features)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Story:
    text: str  # the continuation only (without the prompt and the end-of-story token)
    prompt: str
    token_ids: list[int]  # the new tokens; ends with the end-of-story token when finished
    new_tokens: int
    finished: bool  # ended with the tokenizer's end-of-story token (not cut by max_new_tokens)
    seconds: float
    prompt_tokens: int = 0  # tokens the model read before the story (bos included, after truncation)
    truncated: bool = False  # the prompt was cut to fit the context
    score: float | None = None  # beam search: length-penalised log-probability

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


# ----------------------------------------------------------------------------- the prompt

def prompt_token_limit(context_length: int, max_new_tokens: int) -> int:
    """Most prompt tokens kept: room for max_new_tokens, but never less than half the context."""
    return max(context_length - max_new_tokens, context_length // 2, 1)


def check_prompt(prompt: str, ingredients: Ingredients | None = None) -> str:
    """The prompt itself, or a ValueError: empty or whitespace only (allowed with ingredients: the model
    then begins the story itself), or over MAX_PROMPT_CHARS characters."""
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be text, got {type(prompt).__name__}")
    if not prompt.strip() and not ingredients:
        raise ValueError(f"the prompt is empty; give the beginning of a story, e.g. \"{EXAMPLE_PROMPT}\"")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters, more than the limit of {MAX_PROMPT_CHARS:,}; "
                         "shorten it (the model only reads its last few hundred tokens anyway)")
    return prompt


def story_head(tokenizer, ingredients: Ingredients | None = None) -> list[int]:
    """The ids before the prompt: the story-start token, then the ingredients' prefix if any."""
    head = [story_start_id(tokenizer)]
    return head + tokenizer.encode(ingredients.prefix()) if ingredients else head


def encode_prompt(tokenizer, prompt: str, context_length: int, max_new_tokens: int = 1,
                  ingredients: Ingredients | None = None) -> tuple[list[int], bool]:
    """Token ids the model reads first: `story_head` + the prompt, left-truncated to fit; and whether it
    was cut.

    A prompt longer than `prompt_token_limit(context_length, max_new_tokens)` tokens keeps its last
    tokens (the end of a prompt matters most for what comes next) and warns; the head is always kept.
    """
    check_prompt(prompt, ingredients)
    prefix = story_head(tokenizer, ingredients)
    ids = tokenizer.encode(prompt) if prompt else []
    limit = prompt_token_limit(context_length, max_new_tokens)
    keep = max(limit - len(prefix), 1)
    truncated = len(ids) > keep
    if truncated:
        warnings.warn(f"the prompt has {len(prefix) + len(ids)} tokens but the model's context of {context_length} "
                      f"leaves room for {len(prefix) + keep} beside {max_new_tokens} new tokens; kept its last "
                      f"{keep} tokens", stacklevel=2)
        ids = ids[-keep:]
    return prefix + ids, truncated


# ----------------------------------------------------------------------------- logits filters
# Each takes and returns the last position's logits (B, V).

def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on tokens already in the text (seen (B, V) bool).

    Positive logits are divided by the penalty, negative ones multiplied, so > 1 always makes a seen token less likely.
    """
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def ban_repeated_ngrams(logits: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """-inf for every token that would repeat an n-gram already in tokens (B, L)."""
    B, L = tokens.shape
    if n < 1 or L < n:
        return logits
    windows = tokens.unfold(1, n, 1)  # (B, L-n+1, n): every n-gram so far
    last = tokens[:, L - n + 1:]  # (B, n-1): the n-1 tokens the next token would extend
    matches = (windows[:, :, :-1] == last[:, None, :]).all(-1)  # (B, L-n+1)
    hits = torch.zeros_like(logits).scatter_add_(1, windows[:, :, -1], matches.to(logits.dtype))  # (B, V)
    return logits.masked_fill(hits > 0, NEG_INF)


def top_k_candidates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The k highest logits of each row and their token ids ((B, k), (B, k)), best first; (logits, None) if k
    does not restrict anything. Ties at the k-th logit are broken by the order topk returns.

    The later filters and the draw then work on k values instead of the whole vocabulary
    (130 -> 44 us per token with 4,096 tokens, 557 -> 154 us with 50,257; bench/, docs/performance.md).
    """
    if k <= 0 or k >= logits.size(-1):
        return logits, None
    return torch.topk(logits, k, dim=-1)


def top_p_filter(logits: torch.Tensor, top_p: float, descending: bool = False) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probabilities add up to >= top_p.

    descending=True says each row is already sorted best first (top-k's candidates): no search then.
    """
    if top_p >= 1.0:
        return logits
    probs = logits.softmax(-1)  # (B, V)
    if descending:
        cumulative = probs.cumsum(-1)
        keep = cumulative - probs < top_p  # the better ones hold less than top_p
        keep[:, 0] = True
        return logits.masked_fill(~keep, NEG_INF)
    # Sorting the whole vocabulary is slow (ms for 50k tokens); the nucleus is usually among the best
    # few hundred, so look there first and sort everything only when it is not.
    best_probs, best_ids = probs.topk(min(NUCLEUS_FIRST_GUESS, probs.size(-1)), dim=-1)  # (B, k), descending
    cumulative = best_probs.cumsum(-1)
    if best_ids.size(-1) < probs.size(-1) and not bool((cumulative[:, -1] >= top_p).all()):
        best_probs, best_ids = probs.sort(dim=-1, descending=True)  # (B, V)
        cumulative = best_probs.cumsum(-1)
    # keep a token while the better ones hold less than top_p; the best token always stays. Tokens
    # beyond the best k are dropped: at least top_p lies before them.
    keep_best = cumulative - best_probs < top_p
    keep_best[:, 0] = True  # even when top_p rounds to 0 in float32
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, best_ids, keep_best)  # (B, V)
    return logits.masked_fill(~keep, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the best token's."""
    if min_p <= 0:
        return logits
    # p_i / p_max >= min_p  <=>  logit_i >= max_logit + log(min_p): no softmax needed
    threshold = logits.max(-1, keepdim=True).values + math.log(min_p)  # (B, 1)
    return logits.masked_fill(logits < threshold, NEG_INF)


# ----------------------------------------------------------------------------- decoding

def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


class _Window:
    """Feeds the growing token rows to the model and returns the next-token logits (B, V).

    With the cache, each call feeds only the tokens the model has not read yet. When the rows
    outgrow the context, the window slides to the last half of the context and the cache is
    rebuilt from it (learned positions cannot be shifted inside a cache).
    """

    def __init__(self, model, batch: int, total_length: int, use_cache: bool):
        self.model = model
        self.context = model.config.context_length
        self.cache_length = min(self.context, total_length)
        self.cache, self.step = None, None
        if use_cache:
            self._new_cache(batch)
        self.start = 0  # first position the model sees
        self.fed = 0  # positions already in the cache

    def _new_cache(self, batch: int) -> None:
        self.cache = self.model.new_cache(batch, self.cache_length)
        self.step = stepper(self.model, self.cache)  # the fast single-token step, or None: the plain forward

    def next_logits(self, rows: torch.Tensor, length: int) -> torch.Tensor:
        if length - self.start > self.context:
            self.start = length - max(self.context // 2, 1)
            if self.cache is not None:
                self._new_cache(rows.size(0))
                self.fed = self.start
        if self.cache is None:
            idx = rows[:, self.start:length]  # (B, T): the whole window, every time
        else:
            idx, self.fed = rows[:, self.fed:length], length  # (B, T): only the new tokens
        if self.step is not None and idx.size(1) == 1:
            return self.step(idx, self.cache)[:, -1, :].float()  # (B, V)
        logits, _ = self.model(idx, cache=self.cache, last_only=True)  # (B, 1, V)
        return logits[:, -1, :].float()  # (B, V)

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


class DecodingState:
    """The state shared by sampling and beam search: token rows, the window, the seen-token mask.

    Without `window` the rows are read elsewhere (continuous batching reads every story's next token in one
    step, `tinytales.batching`) and only `adjust` is used on the logits it gets."""

    def __init__(self, model, tokenizer, prompt_ids: list[int], config: GenerationConfig, batch: int,
                 window: bool = True):
        self.config = config
        self.device = _device(model)
        self.vocab_size = model.config.vocab_size
        self.tokenizer_vocab = min(getattr(tokenizer, "vocab_size", self.vocab_size), self.vocab_size)
        self.prompt_length = len(prompt_ids)
        total = self.prompt_length + config.max_new_tokens
        prompt = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        self.rows = torch.empty(batch, total, dtype=torch.long, device=self.device)  # (B, P + N)
        self.rows[:, :self.prompt_length] = prompt
        self.window = _Window(model, batch, total, config.use_cache) if window else None
        # the repetition penalty and the n-gram ban look at the text: prompt + story after the story head
        # (the end-of-story token there is no reason to penalise the story's end, nor the words asked for
        # a reason to avoid them)
        self.text_start = len(story_head(tokenizer, config.ingredients))
        self.seen = None  # (B, V) bool: tokens already in the text, for the repetition penalty
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(batch, self.vocab_size, dtype=torch.bool, device=self.device)
            self.seen[:, prompt[self.text_start:]] = True

    def logits(self, length: int) -> torch.Tensor:
        """Next-token logits (B, V) with the vocabulary limit, the repetition penalty and the n-gram ban applied."""
        return self.adjust(self.window.next_logits(self.rows, length), length)

    def adjust(self, logits: torch.Tensor, length: int) -> torch.Tensor:
        """The model's logits (B, V) after the first `length` tokens of the rows, with the vocabulary limit, the
        repetition penalty and the n-gram ban applied."""
        return DecodingState.adjust_states([self], logits, [length])

    @staticmethod
    def adjust_states(states: list["DecodingState"], logits: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """`adjust` for the rows of several states at once (stories decoded together with the same settings):
        logits has their rows one after the other, lengths one per state."""
        first = states[0]
        if first.tokenizer_vocab < first.vocab_size:
            logits[:, first.tokenizer_vocab:] = NEG_INF
        if first.seen is not None:
            seen = first.seen if len(states) == 1 else torch.cat([state.seen for state in states])
            logits = apply_repetition_penalty(logits, seen, first.config.repetition_penalty)
        n = first.config.no_repeat_ngram_size
        if n:
            rows = [state.rows[:, state.text_start:length] for state, length in zip(states, lengths)]
            if len(states) == 1:
                logits = ban_repeated_ngrams(logits, rows[0], n)
            else:  # the rows' lengths differ: one story at a time
                logits = torch.cat([ban_repeated_ngrams(logits[i:i + 1], row, n) for i, row in enumerate(rows)])
        return logits

    def append(self, length: int, tokens: torch.Tensor) -> None:
        self.rows[:, length] = tokens
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)

    def reorder(self, index: torch.Tensor) -> None:
        self.rows = self.rows.index_select(0, index)
        self.window.reorder(index)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)


def pick_tokens(logits: torch.Tensor, config: GenerationConfig, generator) -> torch.Tensor:
    """The next token (B,) of each row: argmax, or a draw after top-k, temperature, top-p and min-p.

    `generator` draws for every row, or is a list of one generator per row (stories decoded together, each
    with its own seed: a row's draw is the one it would get alone)."""
    if config.greedy:
        return logits.argmax(-1)
    # top-k first: a temperature > 0 keeps the order of the logits, so the k best are the same, and the
    # temperature then divides k values instead of the vocabulary
    logits, token_ids = top_k_candidates(logits, config.top_k)  # (B, k) or (B, V)
    if config.temperature != 1.0:
        # shift first: the best logit becomes 0, so even a tiny temperature cannot overflow to inf - inf
        logits = (logits - logits.amax(-1, keepdim=True)) / config.temperature
    logits = top_p_filter(logits, config.top_p, descending=token_ids is not None)  # topk sorts its candidates
    logits = min_p_filter(logits, config.min_p)
    picked = sample_from(logits.softmax(-1), generator)  # (B,): an index into the candidates
    return picked if token_ids is None else token_ids.gather(1, picked[:, None]).squeeze(1)


def sampling_generator(config: GenerationConfig, device) -> torch.Generator | None:
    """The private random generator of one call's draws (seeded by config.seed, else at random); None for greedy."""
    if config.greedy:
        return None
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    return generator


def sample_from(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One token (B,) per row of probs (B, V), by inverting the cumulative distribution (`generator`: one
    torch.Generator, or a list of one per row, or None).

    Same distribution as torch.multinomial(probs, 1), several times faster on CPU (one cumsum and a
    binary search instead of a draw per token). Tokens of probability 0 are never drawn.
    """
    cdf = probs.cumsum(-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1): 1 up to rounding
    if isinstance(generator, (list, tuple)):  # one generator per row
        u = torch.cat([torch.rand((1, 1), generator=g, device=probs.device, dtype=probs.dtype) for g in generator])
    else:
        u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    u = u * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))  # strictly below the last step
    return torch.searchsorted(cdf, u, right=True).squeeze(1)  # first token whose cdf exceeds u


def _token_steps(model, tokenizer, prompt_ids: list[int], config: GenerationConfig) -> Iterator[list[int]]:
    """Greedy or sampled decoding of 1 or num_samples rows: yields the new token of every row at each step.

    A row that has ended keeps receiving eot; the loop stops when every row has ended or after
    max_new_tokens. Inference mode is entered per step, never held across a yield, so that a
    consumer (another thread of a web server) never runs in it and may close the generator any time.
    """
    batch = 1 if config.greedy else config.num_samples
    eot = tokenizer.eot_id
    with torch.inference_mode():
        state = DecodingState(model, tokenizer, prompt_ids, config, batch)
        done = torch.zeros(batch, dtype=torch.bool, device=state.device)
        generator = sampling_generator(config, state.device)
    for length in range(state.prompt_length, state.rows.size(1)):
        with torch.inference_mode():
            tokens = pick_tokens(state.logits(length), config, generator)  # (B,)
            tokens = tokens.masked_fill(done, eot)
            state.append(length, tokens)
            done |= tokens == eot
            step = tokens.tolist()
        yield step
        if all(token == eot for token in step):
            return


@torch.inference_mode()
def _beam_search(model, tokenizer, prompt_ids: list[int], config: GenerationConfig,
                 should_stop: Callable[[], bool] | None = None) -> list[tuple[float, list[int], bool]] | None:
    """Beam search; the hypotheses (score, new ids, finished), best first.

    score = sum of log-probabilities / new_tokens ** length_penalty (the eot token counts as a new token).
    `should_stop` is asked before every step; when it returns True the search gives up and returns None
    (a web server's client went away: beam search yields nothing until the end, so closing a generator
    could not stop it).
    """
    K, eot, lp = config.num_beams, tokenizer.eot_id, config.length_penalty
    state = DecodingState(model, tokenizer, prompt_ids, config, K)
    P, total = state.prompt_length, state.rows.size(1)
    # all beams start as the same prompt: only the first may grow at the first step
    beam_scores = torch.full((K,), NEG_INF, device=state.device)  # (K,) summed log-probs
    beam_scores[0] = 0.0
    ended: list[tuple[float, list[int], bool]] = []
    length = P  # tokens in every row
    while length < total:
        if should_stop is not None and should_stop():
            return None
        logprobs = state.logits(length).log_softmax(-1)  # (K, V)
        candidates = (beam_scores[:, None] + logprobs).view(-1)  # (K * V,)
        top_scores, top_index = candidates.topk(min(2 * K, candidates.numel()))
        new_tokens = length - P + 1
        survivors: list[tuple[int, int, float]] = []  # (beam, token, summed log-prob) of the next beams
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            if score == NEG_INF:
                break  # only impossible continuations left (dead beams, banned n-grams)
            beam, token = divmod(index, state.vocab_size)
            if token != eot:
                survivors.append((beam, token, score))
                if len(survivors) == K:
                    break
            elif rank < K:  # a story ends only if its ending is among the K best continuations
                ids = state.rows[beam, P:length].tolist() + [eot]
                ended.append((score / new_tokens ** lp, ids, True))
        ended = sorted(ended, key=lambda h: h[0], reverse=True)[:K]
        if not survivors:  # every continuation ends or is banned
            if ended:
                return ended
            break  # (all banned) the beams stop where they are
        if _beam_search_done(ended, [score for _, _, score in survivors], K, new_tokens, config):
            return ended
        survivors += [(survivors[0][0], survivors[0][1], NEG_INF)] * (K - len(survivors))  # dead beams fill up
        beams, tokens, scores = zip(*survivors)
        state.reorder(torch.tensor(beams, device=state.device))
        state.append(length, torch.tensor(tokens, device=state.device))
        beam_scores = torch.tensor(scores, device=state.device)
        length += 1
    # out of tokens: the running beams compete with the ended ones
    new_tokens = max(length - P, 1)
    for k, score in enumerate(beam_scores.tolist()):
        if score > NEG_INF:
            ended.append((score / new_tokens ** lp, state.rows[k, P:length].tolist(), False))
    return sorted(ended, key=lambda h: h[0], reverse=True)


def _beam_search_done(ended: list, running_scores: list[float], K: int, new_tokens: int,
                      config: GenerationConfig) -> bool:
    if len(ended) < K:
        return False
    if config.early_stopping:
        return True
    # Hugging Face's heuristic: the best running beam, scored at today's length, cannot beat the worst ended one
    return max(running_scores) / new_tokens ** config.length_penalty <= ended[-1][0]


def _collect(steps: Iterator[list[int]], eot: int) -> list[tuple[list[int], bool, None]]:
    rows: list[list[int]] = []
    for step in steps:
        if not rows:
            rows = [[] for _ in step]
        for ids, token in zip(rows, step):
            if not ids or ids[-1] != eot:
                ids.append(token)
    return [(ids, bool(ids) and ids[-1] == eot, None) for ids in rows]


def _story(tokenizer, prompt: str, ids: list[int], finished: bool, seconds: float, prompt_ids: list[int],
           truncated: bool, score: float | None) -> Story:
    text = tokenizer.decode(ids[:-1] if finished else ids)
    return Story(text, prompt, ids, len(ids), finished, seconds, len(prompt_ids), truncated, score)


def generate(model, tokenizer, prompt: str, config: GenerationConfig | None = None) -> list[Story]:
    """Continue the prompt: one story, or num_samples of them (sampling: one batch; beam: the best hypotheses)."""
    config = config or GenerationConfig()
    prompt_ids, truncated = encode_prompt(tokenizer, prompt, model.config.context_length, config.max_new_tokens,
                                          config.ingredients)
    started = time.perf_counter()
    if config.method == "beam":
        hypotheses = [(ids, finished, score) for score, ids, finished in
                      _beam_search(model, tokenizer, prompt_ids, config)[:config.num_samples]]
    else:
        hypotheses = _collect(_token_steps(model, tokenizer, prompt_ids, config), tokenizer.eot_id)
    seconds = time.perf_counter() - started
    return [_story(tokenizer, prompt, ids, finished, seconds, prompt_ids, truncated, score)
            for ids, finished, score in hypotheses]


# ----------------------------------------------------------------------------- streaming

class IncrementalDecoder:
    """Token ids in, text pieces out; a piece never ends inside a UTF-8 character.

    Byte-level tokens can split a character ("🐱" is 4 byte tokens): while the decoded text ends
    with the replacement character "\\ufffd" we wait for the rest. The pieces join to decode(ids).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        return "" if text.endswith("\ufffd") else self._advance(text)

    def flush(self) -> str:
        """What is left at the end (a genuinely broken character included)."""
        return self._advance(self.tokenizer.decode(self.ids))

    def _advance(self, text: str) -> str:
        piece = text[len(self.text):]
        self.text = text
        return piece


def stream_events(model, tokenizer, prompt: str, config: GenerationConfig | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[str | Story]:
    """Text pieces of one story as they are produced, then the finished `Story` as the summary.

    The prompt and the settings are checked now (ValueError before anything is produced); the
    returned generator may be closed at any time to stop generating (a client went away).
    `should_stop` (e.g. `threading.Event.is_set`) is asked before every token, beam search's steps
    included; once it returns True generation stops and the generator ends without a summary.
    The summary has prompt_tokens, new_tokens, finished, seconds and tokens_per_second.
    """
    config = config or GenerationConfig()
    if config.num_samples != 1:
        raise ValueError(f"streaming tells one story at a time: num_samples must be 1, got {config.num_samples}")
    prompt_ids, truncated = encode_prompt(tokenizer, prompt, model.config.context_length, config.max_new_tokens,
                                          config.ingredients)
    return _events(model, tokenizer, prompt, prompt_ids, truncated, config, should_stop)


def _events(model, tokenizer, prompt, prompt_ids, truncated, config, should_stop=None) -> Iterator[str | Story]:
    started = time.perf_counter()
    score = None
    if config.method == "beam":  # beam search knows its story only at the end: stream it token by token then
        hypotheses = _beam_search(model, tokenizer, prompt_ids, config, should_stop)
        if hypotheses is None:  # stopped
            return
        score, best_ids, _ = hypotheses[0]
        tokens = iter(best_ids)
    else:
        tokens = (step[0] for step in _token_steps(model, tokenizer, prompt_ids, config))
    decoder = IncrementalDecoder(tokenizer)
    ids, finished = [], False
    for token in tokens:
        if should_stop is not None and should_stop():
            return
        ids.append(token)
        if token == tokenizer.eot_id:
            finished = True
            break
        piece = decoder.push(token)
        if piece:
            yield piece
    rest = decoder.flush()
    if rest:
        yield rest
    seconds = time.perf_counter() - started
    yield _story(tokenizer, prompt, ids, finished, seconds, prompt_ids, truncated, score)


def stream(model, tokenizer, prompt: str, config: GenerationConfig | None = None) -> Iterator[str]:
    """Text pieces of one story as they are produced (complete UTF-8 characters only)."""
    events = stream_events(model, tokenizer, prompt, config)
    return (event for event in events if isinstance(event, str))
