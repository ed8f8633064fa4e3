"""Continuous batching: many stories decoded together, one token per running story per step.

Every story has its own row of one KV cache (`rows` rows of the model's context, allocated once and reused
by the stories that follow) and its own settings, random generator, repetition state and stop conditions,
so what it tells does not depend on its neighbours: with the same seed it is the story `generate` tells
alone, up to the rounding of batched products (the C step adds a row's products in the same order at any
batch size; PyTorch's may not). A story joins at the next step after `add` (its prompt is read into its row
then, all but the last token, which goes through the batched step with the others), and leaves when it
ends, or at once with `remove` (a cancelled story frees its row for the next one).

    batch = StoryBatch(model, tokenizer, rows=8)
    story = batch.add(prompt_ids, config)           # None when every row is taken
    while batch.stories:
        for story, token in batch.step():          # one new token per story; story.finished when it ended
            ...

Greedy and sampling only: beam search keeps several rows per story and reorders them, and has its own path.
The step is the C step or the PyTorch step (`decoding.stepper`); a model neither runs (not float32 on the
CPU, not a TinyTales GPT) is not batched (`StoryBatch.supports`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .decoding import CacheRows, stepper
from .generate import DecodingState, GenerationConfig, pick_tokens, sampling_generator


@dataclass(eq=False)  # compared and hashed by identity
class BatchedStory:
    """One story of a batch: its cache row, its tokens so far and where its window starts."""

    config: GenerationConfig
    row: int  # its row of the KV cache
    state: DecodingState  # its token row (prompt + new), repetition state, logits adjustments
    generator: torch.Generator | None
    length: int  # tokens in the token row: the prompt, then the new ones
    start: int = 0  # first token the model sees (the window slides when the story outgrows the context)
    cached: int = 0  # tokens from `start` on whose keys and values are in the cache row
    new_ids: list[int] = field(default_factory=list)
    finished: bool = False  # ended with the end-of-story token
    done: bool = False  # ended, or reached max_new_tokens

    @property
    def new_tokens(self) -> int:
        return len(self.new_ids)


class StoryBatch:
    def __init__(self, model, tokenizer, rows: int):
        if rows < 1:
            raise ValueError(f"a batch needs at least one row, got {rows}")
        self.model, self.tokenizer = model, tokenizer
        self.context = model.config.context_length
        self.cache = model.new_cache(rows, self.context)
        self.step_rows = stepper(model, self.cache)
        if self.step_rows is None:
            raise ValueError("continuous batching needs the C or the PyTorch step (a TinyTales GPT with float32 "
                             "weights on the CPU)")
        self.free = list(range(rows - 1, -1, -1))  # cache rows not in use; the lowest is taken first
        self.stories: list[BatchedStory] = []

    @staticmethod
    def supports(model) -> bool:
        """Whether this model can be batched here (the fast steps run it)."""
        return stepper(model, model.new_cache(1, 1)) is not None

    @property
    def rows(self) -> int:
        return self.cache.batch_size

    def add(self, prompt_ids: list[int], config: GenerationConfig) -> BatchedStory | None:
        """A story that joins at the next step; None when every row is taken. prompt_ids as `encode_prompt`
        returns them (the story head, then the prompt, already fitted to the context)."""
        if config.method == "beam" or config.num_samples != 1:
            raise ValueError("a batch tells one greedy or sampled story per row; beam search has its own path")
        if not prompt_ids:
            raise ValueError("a story needs at least one token to continue")
        if not self.free:
            return None
        device = self.cache.keys.device
        state = DecodingState(self.model, self.tokenizer, prompt_ids, config, batch=1, window=False)
        story = BatchedStory(config, self.free.pop(), state, sampling_generator(config, device), len(prompt_ids))
        self.stories.append(story)
        return story

    def remove(self, story: BatchedStory) -> None:
        """Take a story out now (ended, cancelled): its cache row serves the next story."""
        if story in self.stories:
            self.stories.remove(story)
            self.free.append(story.row)
            self.free.sort(reverse=True)

    def step(self) -> list[tuple[BatchedStory, int]]:
        """One new token for every story; stories that end (end-of-story token, max_new_tokens) leave the batch
        and come back with done set (finished when the token was the end-of-story token)."""
        stories = [s for s in self.stories if not s.done]
        if not stories:
            return []
        with torch.inference_mode():
            for story in stories:
                self._read_up_to_last(story)
            where = CacheRows.of([s.cached for s in stories], [s.row for s in stories])
            idx = torch.stack([s.state.rows[0, s.length - 1:s.length] for s in stories])  # (B, 1): last tokens
            logits = self.step_rows(idx, self.cache, where)[:, 0, :].float()  # (B, V)
            tokens = self._pick(stories, logits)
            out = []
            for story, token in zip(stories, tokens):
                story.cached += 1
                story.state.append(story.length, token[None])
                story.length += 1
                story.new_ids.append(int(token))
                story.finished = story.new_ids[-1] == self.tokenizer.eot_id
                story.done = story.finished or story.new_tokens >= story.config.max_new_tokens
                out.append((story, story.new_ids[-1]))
        for story, _ in out:
            if story.done:
                self.remove(story)
        return out

    @staticmethod
    def _pick(stories: list[BatchedStory], logits: torch.Tensor) -> torch.Tensor:
        """The next token of every story (B,): stories with the same settings are adjusted and drawn from
        together (one filter pass over their rows; each row drawn by its own generator)."""
        groups: dict[tuple, list[int]] = {}
        for i, story in enumerate(stories):
            groups.setdefault(_settings(story.config), []).append(i)
        tokens = torch.empty(len(stories), dtype=torch.long)
        for members in groups.values():
            group = [stories[i] for i in members]
            index = torch.tensor(members)
            adjusted = DecodingState.adjust_states([s.state for s in group], logits[index], [s.length for s in group])
            generators = None if group[0].generator is None else [s.generator for s in group]
            tokens[index] = pick_tokens(adjusted, group[0].config, generators)
        return tokens

    def _read_up_to_last(self, story: BatchedStory) -> None:
        """Put the keys and values of every token before the story's last one into its cache row: the prompt
        of a story that just joined, or the last half of the context when its window slides (as `generate`'s
        window does: learned positions cannot be shifted inside a cache)."""
        if story.length - story.start > self.context:
            story.start = story.length - max(self.context // 2, 1)
            story.cached = 0
        end = story.length - 1  # the last token goes through the batched step
        begin = story.start + story.cached
        if begin >= end:
            return
        self.model(story.state.rows[:, begin:end], cache=self.cache.row(story.row, story.cached), last_only=True)
        story.cached = end - story.start


def _settings(config: GenerationConfig) -> tuple:
    """What decides how a story's logits become its next token (stories alike in these share one pass)."""
    return (config.greedy, config.temperature, config.top_k, config.top_p, config.min_p, config.repetition_penalty,
            config.no_repeat_ngram_size)
