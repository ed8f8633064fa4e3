"""Continuous batching (tinytales.batching, serve.runner): stories decoded together tell what they tell alone,
join and leave between steps, keep their own settings and seeds; the server batches every route, frees a
cancelled story's row at once and answers 503 past its places."""
from __future__ import annotations

import dataclasses
import json
import threading
import time

import httpx
import pytest
import torch

import tinytales.generate as engine
from tinytales.batching import StoryBatch
from tinytales.decoding import CacheRows, KernelStep, TorchStep, available, stepper
from tinytales.generate import GenerationConfig, encode_prompt, generate, story_config
from tinytales.kernels import fast_paths
from tinytales.model import GPT
from tinytales.serve import create_app
from tinytales.serve.background import BackgroundServer

PROMPTS = ["Once upon a time", "Tom had a red ball.", "The cat", "Lily wanted to fly to the moon, so she", "One day",
           "Sam and his dog"]
# one batch holds them all: different temperatures, filters, penalties, greedy; each with its own seed
CONFIGS = [
    story_config(seed=1, max_new_tokens=40),
    GenerationConfig(method="sample", temperature=1.3, top_k=20, seed=2, max_new_tokens=30),
    GenerationConfig(method="greedy", max_new_tokens=25),
    GenerationConfig(method="sample", top_p=0.8, min_p=0.05, repetition_penalty=1.3, seed=3, max_new_tokens=45),
    GenerationConfig(method="sample", no_repeat_ngram_size=2, seed=4, max_new_tokens=35),
    story_config(seed=1, max_new_tokens=40, words=("cat",), features=("Dialogue",)),
]


@pytest.fixture(params=["learned", "rope"])
def model(request, tiny_config):
    """The GPT-2 layout (learned positions) and the Llama one (RoPE, RMSNorm, SwiGLU, grouped keys)."""
    config = tiny_config if request.param == "learned" else dataclasses.replace(
        tiny_config, position="rope", norm="rmsnorm", activation="swiglu", bias=False, n_head=4, n_kv_head=2)
    torch.manual_seed(0)
    return GPT(config).eval()


def told_alone(model, tokenizer) -> list[list[int]]:
    return [generate(model, tokenizer, p, c)[0].token_ids for p, c in zip(PROMPTS, CONFIGS)]


def told_together(model, tokenizer, rows: int) -> tuple[list[list[int]], int]:
    """Every story through one batch of `rows` rows, each joining as soon as a row is free."""
    batch, waiting, stories = StoryBatch(model, tokenizer, rows), list(zip(PROMPTS, CONFIGS)), []
    most = 0
    while waiting or batch.stories:
        while waiting and batch.free:
            prompt, config = waiting.pop(0)
            ids, _ = encode_prompt(tokenizer, prompt, model.config.context_length, config.max_new_tokens,
                                   config.ingredients)
            stories.append(batch.add(ids, config))
        most = max(most, len(batch.stories))
        batch.step()
    assert batch.add([0], CONFIGS[0]) is not None  # every row free again
    return [s.new_ids for s in stories], most


@pytest.mark.parametrize("c_step", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_stories_told_together_are_the_stories_told_alone(model, tiny_tokenizer, c_step, rows):
    with fast_paths(c_step=c_step):
        alone = told_alone(model, tiny_tokenizer)
        together, most = told_together(model, tiny_tokenizer, rows)
    assert together == alone  # same seeds, same stories: the neighbours change nothing
    assert most == min(rows, len(PROMPTS))


def test_a_story_outgrowing_the_context_slides_its_window_as_alone(model, tiny_tokenizer):
    long = [GenerationConfig(method="sample", seed=s, max_new_tokens=150) for s in range(3)]  # context: 64
    alone = [generate(model, tiny_tokenizer, "The cat", c)[0].token_ids for c in long]
    batch = StoryBatch(model, tiny_tokenizer, rows=3)
    ids, _ = encode_prompt(tiny_tokenizer, "The cat", 64, 150)
    stories = [batch.add(ids, c) for c in long]
    while batch.stories:
        batch.step()
    assert [s.new_ids for s in stories] == alone and max(len(a) for a in alone) > 64


@pytest.mark.parametrize("c_step", [True, False])
def test_a_batched_step_gives_each_row_the_logits_of_its_own_story(model, c_step):
    """Rows at different lengths in any cache rows: each row's logits are the plain forward's at its position."""
    with fast_paths(c_step=c_step), torch.inference_mode():
        cache = model.new_cache(5, 64)
        step = stepper(model, cache)
        assert isinstance(step, KernelStep if c_step and available() else TorchStep)
        stories = {4: torch.randint(0, 300, (1, 9)), 1: torch.randint(0, 300, (1, 3)), 2: torch.randint(0, 300, (1, 20))}
        for row, ids in stories.items():  # all but the last token of each story into its row
            model(ids[:, :-1], cache=cache.row(row), last_only=True)
        rows = list(stories)
        where = CacheRows.of([stories[r].size(1) - 1 for r in rows], rows)
        logits = step(torch.cat([stories[r][:, -1:] for r in rows]), cache, where)[:, 0]
        for i, row in enumerate(rows):
            full, _ = model(stories[row])
            torch.testing.assert_close(logits[i], full[0, -1], atol=2e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="its own cache row"):
            CacheRows.of([1, 2], [3, 3])
        if c_step and available():
            with pytest.raises(ValueError, match="cache rows below 5"):
                step(torch.zeros(1, 1, dtype=torch.long), cache, CacheRows.of([0], [5]))


def test_rows_are_taken_freed_and_reused(tiny_model, tiny_tokenizer):
    batch = StoryBatch(tiny_model, tiny_tokenizer, rows=2)
    first, second = (batch.add([0, 5, 6], story_config(seed=s, max_new_tokens=50)) for s in (1, 2))
    assert {first.row, second.row} == {0, 1} and batch.add([0, 5], story_config()) is None  # full
    batch.step()
    batch.remove(first)  # cancelled mid-story: its row goes to the next story at once
    third = batch.add([0, 7], story_config(seed=3, max_new_tokens=50))
    assert third.row == first.row and batch.stories == [second, third]
    out = batch.step()
    assert [story for story, _ in out] == [second, third] and third.new_tokens == 1 and second.new_tokens == 2
    with pytest.raises(ValueError, match="beam search has its own path"):
        batch.add([0, 5], GenerationConfig(method="beam"))
    with pytest.raises(ValueError, match="at least one row"):
        StoryBatch(tiny_model, tiny_tokenizer, rows=0)


def test_models_the_fast_steps_do_not_run_are_not_batched(tiny_model):
    assert StoryBatch.supports(tiny_model)
    assert not StoryBatch.supports(tiny_model.to(torch.float16))


# ---------------------------------------------------------------------------- the server


def watch_batch(monkeypatch, delay: float = 0.0, endless: bool = False) -> dict:
    """Counts the batch's steps, stories at once and stories that left; `delay` s a step; `endless`: no story
    ends by itself (the end-of-story token is never drawn)."""
    progress = {"steps": 0, "tokens": 0, "most": 0, "left": 0}
    real_step, real_remove = StoryBatch.step, StoryBatch.remove
    real_adjust = engine.DecodingState.adjust_states

    def step(self):
        progress["most"] = max(progress["most"], len(self.stories))
        time.sleep(delay)
        out = real_step(self)
        progress["steps"] += 1
        progress["tokens"] += len(out)
        return out

    def remove(self, story):
        progress["left"] += story in self.stories
        real_remove(self, story)

    def no_end(states, logits, lengths):
        logits = real_adjust(states, logits, lengths)
        logits[:, states[0].tokenizer_vocab:] = float("-inf")
        logits[:, 0] = float("-inf")  # the tiny tokenizer's end-of-story id
        return logits

    monkeypatch.setattr(StoryBatch, "step", step)
    monkeypatch.setattr(StoryBatch, "remove", remove)
    if endless:
        monkeypatch.setattr(engine.DecodingState, "adjust_states", staticmethod(no_end))
    return progress


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


ROUTES = [  # (path, body, the story's text in the answer): every route the server has, JSON and streaming
    ("/api/story", {"prompt": PROMPTS[0], "max_new_tokens": 30, "seed": 1}, lambda a: a.json()["text"]),
    ("/api/story", {"prompt": PROMPTS[1], "max_new_tokens": 30, "seed": 2, "stream": True},
     lambda a: "".join(json.loads(line[5:]).get("text", "") for line in a.text.splitlines()[:-2]
                       if line.startswith("data:"))),
    ("/api/generate", {"model": "tiny", "prompt": PROMPTS[2], "stream": False,
                       "options": {"seed": 3, "num_predict": 30, "temperature": 1.2, "top_k": 10}},
     lambda a: a.json()["response"]),
    ("/api/generate", {"model": "tiny", "prompt": PROMPTS[3], "options": {"temperature": 0, "num_predict": 30}},
     lambda a: "".join(json.loads(line)["response"] for line in a.text.splitlines())),
    ("/v1/completions", {"prompt": PROMPTS[4], "max_tokens": 30, "seed": 4, "temperature": 0.8},
     lambda a: a.json()["choices"][0]["text"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[5]}], "max_tokens": 30, "seed": 5,
                              "top_p": 0.9, "repetition_penalty": 1.3}, lambda a: a.json()["choices"][0]["message"]["content"]),
    ("/api/story", {"prompt": PROMPTS[0], "method": "greedy", "max_new_tokens": 30, "no_repeat_ngram_size": 2},
     lambda a: a.json()["text"]),
    ("/api/story", {"prompt": PROMPTS[1], "max_new_tokens": 30, "seed": 6, "min_p": 0.1, "repetition_penalty": 1.5},
     lambda a: a.json()["text"]),
]


def tell_all(server, together: bool) -> list[str]:
    """Every route's story: all at once (eight clients), or one after the other."""
    told = [None] * len(ROUTES)

    def one(i):
        path, body, text = ROUTES[i]
        answer = httpx.post(f"{server.url}{path}", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        told[i] = text(answer)

    if not together:
        for i in range(len(ROUTES)):
            one(i)
        return told
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ROUTES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return told


def test_concurrent_readers_on_every_route_share_the_batch_and_get_their_own_stories(tiny_loaded, monkeypatch):
    """Eight clients at once, mixed settings and routes: each gets the story its seed tells alone."""
    progress = watch_batch(monkeypatch, delay=0.002)
    with BackgroundServer(create_app(tiny_loaded, max_concurrent=4, max_queue=8, safety=False)) as server:
        together = tell_all(server, together=True)
        assert server.app.state.runner.batching and server.app.state.runner.running == 0
    assert 1 < progress["most"] <= 4  # told together, never more than the rows
    with BackgroundServer(create_app(tiny_loaded, safety=False, batching=False)) as server:  # a story per worker
        alone = tell_all(server, together=False)
    assert together == alone and all(together)
    first = ROUTES[0][1]
    assert together[0] == generate(tiny_loaded.model, tiny_loaded.tokenizer, first["prompt"],
                                   story_config(max_new_tokens=30, seed=1))[0].text


def test_a_reader_who_leaves_frees_the_row_at_once(tiny_loaded, monkeypatch):
    progress = watch_batch(monkeypatch, delay=0.005, endless=True)
    with BackgroundServer(create_app(tiny_loaded, max_concurrent=2, max_queue=0)) as server:
        runner = server.app.state.runner
        with httpx.Client(base_url=server.url, timeout=10) as http:
            with http.stream("POST", "/api/story", json={"prompt": PROMPTS[0], "max_new_tokens": 1000,
                                                            "stream": True}) as staying:
                with http.stream("POST", "/api/story", json={"prompt": PROMPTS[1], "max_new_tokens": 1000,
                                                                "stream": True}) as leaving:
                    texts = 0
                    for line in leaving.iter_lines():
                        texts += line == "event: text"
                        if texts == 3:
                            break  # this client goes away
                assert wait_for(lambda: progress["left"] == 1 and runner.running == 1)
                assert runner.history[-1].finish_reason == "cancelled" and runner.history[-1].new_tokens < 200
                # its row is free: a new story joins while the first still runs, the server full again after it
                short = http.post("/api/story", json={"prompt": PROMPTS[2], "max_new_tokens": 5})
                assert short.status_code == 200 and short.json()["new_tokens"] == 5
                assert next(staying.iter_lines())  # the first story kept streaming
        assert wait_for(lambda: runner.running == 0)


def test_past_its_places_the_batching_server_answers_503(tiny_loaded, monkeypatch):
    watch_batch(monkeypatch, delay=0.005, endless=True)
    with BackgroundServer(create_app(tiny_loaded, max_concurrent=1, max_queue=1)) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        runner, waited = server.app.state.runner, []
        body = {"prompt": PROMPTS[0], "max_new_tokens": 1000, "stream": True}
        with http.stream("POST", "/api/story", json=body) as first:
            assert first.status_code == 200
            second = threading.Thread(target=lambda: waited.append(
                httpx.post(f"{server.url}/api/story", json={"prompt": PROMPTS[1], "max_new_tokens": 3}, timeout=30)))
            second.start()
            assert wait_for(lambda: runner.waiting == 1)  # one told, one waiting in line
            busy = http.post("/api/story", json={"prompt": PROMPTS[0], "max_new_tokens": 3})
            assert busy.status_code == 503 and int(busy.headers["Retry-After"]) > 0
            health = http.get("/healthz").json()
            assert (health["running"], health["waiting"], health["capacity"]) == (1, 1, 2)
        second.join(30)  # the first reader left: the one in line is told its story
        assert waited[0].status_code == 200 and waited[0].json()["new_tokens"] == 3
        assert wait_for(lambda: runner.running == 0)
        assert http.post("/api/story", json={"prompt": PROMPTS[0], "max_new_tokens": 3}).status_code == 200
