"""The web app and HTTP API: the page's protocol (/api/story: JSON and streaming stories), the OpenAI-compatible
completions, concurrency, disconnects, the children's safety filter, input limits (with a schema-driven fuzz of
every protocol), and the CLI. ollama's protocol: test_serve_ollama.py; OpenAI's chat: test_serve_openai.py."""
from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

import tinytales.generate as engine
from tinytales.cli import app as cli_app
from tinytales.ingredients import FEATURES
from tinytales.serve import SafetyFilter, create_app
from tinytales.serve.background import BackgroundServer
from tinytales.serve.runner import TextGate
from tinytales.serve.safety import PROMPT_REFUSED, STORY_STOPPED

PROMPT = "Once upon a time, there was a little girl named Lily."


@pytest.fixture(scope="module")
def client(tiny_loaded):
    with TestClient(create_app(tiny_loaded, max_concurrent=2, max_queue=16)) as c:
        yield c


@pytest.fixture(scope="module")
def live(tiny_loaded):
    """A real uvicorn server on a free port of 127.0.0.1, for the OpenAI client and real disconnects; one story
    per worker thread, so that tests can script the engine (`stream_events`); tests/test_batching.py has the
    continuous batch's."""
    with BackgroundServer(create_app(tiny_loaded, max_concurrent=2, max_queue=16, batching=False)) as server:
        yield server


def sse_events(text: str) -> list[tuple[str, object]]:
    """(event, data) pairs of a Server-Sent Events body; data is parsed JSON (or the raw text)."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


def endless_engine(monkeypatch, delay: float = 0.005):
    """A stand-in engine: a "word " every `delay` s until max_new_tokens, recording how far it got and
    how many stories ran at once. Deterministic where the random tiny model may end a story any time."""
    progress = {"pieces": 0, "closed": 0, "active": 0, "max_active": 0}
    lock = threading.Lock()

    def stream_events(model, tokenizer, prompt, config, should_stop=None):
        def events():
            with lock:
                progress["active"] += 1
                progress["max_active"] = max(progress["max_active"], progress["active"])
            try:
                for _ in range(config.max_new_tokens):
                    time.sleep(delay)
                    progress["pieces"] += 1
                    yield "word "
                yield engine.Story("word " * config.max_new_tokens, prompt, [], config.max_new_tokens, False, 0.1, 3)
            finally:
                with lock:
                    progress["active"] -= 1
                    progress["closed"] += 1
        return events()

    monkeypatch.setattr(engine, "stream_events", stream_events)
    return progress


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------------------- stories as JSON and SSE

def test_generate_returns_the_engines_story_with_counts(client, tiny_loaded):
    body = {"prompt": PROMPT, "method": "greedy", "max_new_tokens": 12}
    answer = client.post("/api/story", json=body)
    assert answer.status_code == 200, answer.text
    story = answer.json()
    expected = engine.generate(tiny_loaded.model, tiny_loaded.tokenizer, PROMPT,
                               engine.GenerationConfig(method="greedy", max_new_tokens=12))[0]
    if story["finish_reason"] != "content_filter":
        assert story["text"] == expected.text
    assert story["new_tokens"] == expected.new_tokens <= 12
    assert story["prompt_tokens"] == expected.prompt_tokens > 0
    assert story["finish_reason"] in ("stop", "length", "content_filter")
    assert story["seconds"] > 0 and story["tokens_per_second"] > 0


def test_same_seed_same_story_and_every_method_works(client):
    body = {"prompt": PROMPT, "max_new_tokens": 10, "seed": 7, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    first, second = (client.post("/api/story", json=body).json() for _ in range(2))
    assert first["text"] == second["text"]
    for method in ("greedy", "beam", "sample"):
        answer = client.post("/api/story", json={"prompt": PROMPT, "method": method, "max_new_tokens": 5,
                                                    "num_beams": 3})
        assert answer.status_code == 200, (method, answer.text)
        assert answer.json()["new_tokens"] <= 5


def test_stream_sends_text_pieces_then_a_summary(client):
    body = {"prompt": PROMPT, "method": "greedy", "max_new_tokens": 15}
    whole = client.post("/api/story", json=body).json()
    answer = client.post("/api/story", json={**body, "stream": True})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = sse_events(answer.text)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) <= {"text"}
    assert "".join(data["text"] for name, data in events if name == "text") == whole["text"]
    done = events[-1][1]
    assert done["new_tokens"] == whole["new_tokens"] and done["prompt_tokens"] == whole["prompt_tokens"]
    assert done["seconds"] > 0 and "tokens_per_second" in done


def test_model_can_be_given_as_a_directory(tiny_model_dir):
    with TestClient(create_app(tiny_model_dir)) as c:
        assert c.get("/healthz").json()["model"] == "tiny-model"
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny-model"
        assert c.post("/api/story", json={"prompt": PROMPT, "max_new_tokens": 3}).status_code == 200


def test_page_info_health_and_schema(client):
    page = client.get("/")
    assert page.status_code == 200 and "Tell me a story" in page.text
    assert client.get("/static/app.js").status_code == 200
    for name in ("/", "/static/style.css", "/static/app.js"):  # no outside network: every resource is local
        text = client.get(name).text
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|fetch\(["'`]http""", text)
    info = client.get("/api/info").json()
    assert info["safety"] is True and info["examples"] and info["limits"]["max_new_tokens"] >= 200
    assert client.get("/healthz").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/story", "/api/generate", "/api/chat", "/api/tags", "/v1/completions", "/v1/chat/completions",
            "/v1/models", "/healthz"} <= set(paths)


def test_head_requests_for_the_page_and_static_files(client):
    for name in ("/", "/static/style.css", "/static/app.js"):
        answer = client.head(name)
        assert answer.status_code == 200 and answer.content == b"", name
        assert int(answer.headers["content-length"]) == len(client.get(name).content)


def test_page_static_and_api_answers_carry_security_headers(client):
    for answer in (client.get("/"), client.head("/"), client.get("/static/app.js"), client.get("/static/style.css"),
                   client.get("/healthz"), client.get("/no/such/page"),
                   client.post("/api/story", json={"prompt": PROMPT, "max_new_tokens": 2})):
        headers = answer.headers
        assert headers["x-content-type-options"] == "nosniff", answer.url
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
        policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'self'" and policy["img-src"] == "'self' data:"
        assert "unsafe-inline" not in headers["content-security-policy"]
    page = client.get("/").text  # nothing the policy would block: no inline script, style or handler
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle=|\son[a-z]+=", page)


def test_api_docs_are_off_by_default_and_on_when_asked(tiny_loaded, client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    with TestClient(create_app(tiny_loaded, api_docs=True)) as c:
        docs = c.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert "content-security-policy" not in docs.headers  # Swagger UI comes from a CDN
        assert docs.headers["x-content-type-options"] == "nosniff"
        assert c.get("/redoc").status_code == 200 and c.get("/openapi.json").status_code == 200
        assert "content-security-policy" in c.get("/").headers


def test_ingredients_reach_the_engine_from_both_apis(client, tiny_loaded):
    asked = engine.GenerationConfig(method="greedy", max_new_tokens=8, words=("cat", "ball"), features=("Twist",))
    expected = engine.generate(tiny_loaded.model, tiny_loaded.tokenizer, "", asked)[0]
    body = {"prompt": "", "method": "greedy", "max_new_tokens": 8, "words": ["cat", "ball"], "features": ["twist"]}
    story = client.post("/api/story", json=body).json()
    assert story["prompt_tokens"] == expected.prompt_tokens > len(engine.story_head(tiny_loaded.tokenizer))
    if story["finish_reason"] != "content_filter":
        assert story["text"] == expected.text
    completion = client.post("/v1/completions", json={"prompt": "", "max_tokens": 8, "temperature": 0,
                                                      "words": ["cat", "ball"], "features": ["Twist"]}).json()
    assert completion["usage"]["prompt_tokens"] == expected.prompt_tokens
    info = client.get("/api/info").json()["ingredients"]
    assert info == {"trained": False, "features": list(FEATURES), "max_words": 5}


def test_unsuitable_words_are_refused_like_prompts(client):
    answer = client.post("/api/story", json={"prompt": "Tom went out.", "words": ["kill"]})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "words"


# ---------------------------------------------------------------------------- OpenAI compatibility

def test_openai_completions_json_and_stream(client):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    answer = client.post("/v1/completions", json=body).json()
    assert answer["object"] == "text_completion" and answer["model"] == "tiny"
    choice = answer["choices"][0]
    usage = answer["usage"]
    assert choice["finish_reason"] in ("stop", "length") and usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    streamed = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    events = [data for _, data in sse_events(streamed.text)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]
    assert chunks[-1]["usage"] == usage and chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    echoed = client.post("/v1/completions", json={**body, "echo": True}).json()
    assert echoed["choices"][0]["text"] == PROMPT + choice["text"]


def test_openai_client_against_a_live_server(live):
    import openai

    api = openai.OpenAI(base_url=f"{live.url}/v1", api_key="not-needed", max_retries=0, timeout=20)
    assert [m.id for m in api.models.list().data] == ["tiny"]
    completion = api.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0)
    text = completion.choices[0].text
    assert completion.usage.completion_tokens <= 10
    stream = api.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == text
    seeded = [api.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=5).choices[0].text
              for _ in range(2)]
    assert seeded[0] == seeded[1]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        api.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=5)
    with pytest.raises(openai.BadRequestError) as refused:
        api.completions.create(model="tiny", prompt="How to kill a dragon", max_tokens=5)
    assert refused.value.code == "content_filter"
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        api.completions.create(model="tiny", prompt=PROMPT, max_tokens=5000)


# ---------------------------------------------------------------------------- many clients, busy, disconnects

def test_eight_streaming_clients_at_once_all_complete(live, monkeypatch):
    real = engine.stream_events
    active, most = [0], [0]
    lock = threading.Lock()

    def counted(*args, **kwargs):  # the real engine, counting the stories told at the same time
        events = real(*args, **kwargs)

        def relay():
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                for event in events:
                    time.sleep(0.002)
                    yield event
            finally:
                events.close()
                with lock:
                    active[0] -= 1
        return relay()

    monkeypatch.setattr(engine, "stream_events", counted)
    results = [None] * 8

    def one_client(i):
        body = {"prompt": PROMPT, "max_new_tokens": 20, "seed": i, "stream": True}
        with httpx.Client(base_url=live.url, timeout=30) as http:
            answer = http.post("/api/story", json=body)
            results[i] = (answer.status_code, sse_events(answer.text))

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for status, events in results:
        assert status == 200 and events[-1][0] == "done"
        assert events[-1][1]["new_tokens"] <= 20
    assert most[0] <= 2  # max_concurrent: the others waited in line


def test_full_server_answers_503_with_retry_after(tiny_loaded, monkeypatch):
    progress = endless_engine(monkeypatch)
    with BackgroundServer(create_app(tiny_loaded, max_concurrent=1, max_queue=0, batching=False)) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        body = {"prompt": PROMPT, "max_new_tokens": 1000, "stream": True}
        with http.stream("POST", "/api/story", json=body) as first:
            assert first.status_code == 200
            busy = http.post("/api/story", json={"prompt": PROMPT, "max_new_tokens": 3})
            assert busy.status_code == 503
            assert int(busy.headers["Retry-After"]) > 0
            assert "busy" in busy.json()["error"]["message"]
        runner = server.app.state.runner
        assert wait_for(lambda: runner.running == 0 and progress["closed"] == 1)
        assert http.post("/api/story", json={"prompt": PROMPT, "max_new_tokens": 3}).status_code == 200


def test_disconnected_stream_stops_generation(live, monkeypatch):
    progress = endless_engine(monkeypatch)
    history = live.app.state.runner.history
    before = len(history)
    with httpx.Client(base_url=live.url, timeout=10) as http:
        with http.stream("POST", "/api/story", json={"prompt": PROMPT, "max_new_tokens": 1000, "stream": True}) as r:
            texts = 0
            for line in r.iter_lines():
                texts += line == "event: text"
                if texts == 3:
                    break  # the client goes away
    assert wait_for(lambda: len(history) > before)
    record = history[-1]
    assert record.finish_reason == "cancelled"
    assert record.pieces < 200 and progress["pieces"] < 200  # stopped early: 1000 would take 5 s
    assert progress["closed"] == 1  # the engine's generator was closed


def test_disconnected_json_request_stops_generation(live, monkeypatch):
    progress = endless_engine(monkeypatch)
    history = live.app.state.runner.history
    before = len(history)
    with httpx.Client(base_url=live.url, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/api/story", json={"prompt": PROMPT, "max_new_tokens": 1000})
    assert wait_for(lambda: len(history) > before)
    assert history[-1].finish_reason == "cancelled" and progress["pieces"] < 400


@pytest.mark.parametrize("stream", [False, True])
def test_disconnected_beam_search_frees_its_worker_within_a_second(live, monkeypatch, stream):
    """Beam search yields only at the end; the runner's should_stop stops it between steps."""
    steps = []
    real_logits = engine.DecodingState.logits
    eot = live.app.state.loaded.tokenizer.eot_id

    def slow_logits(self, length):  # 10 ms a step and no story ends: 1024 tokens would take over 10 s
        steps.append(length)
        time.sleep(0.01)
        logits = real_logits(self, length)
        logits[:, eot] = float("-inf")
        return logits

    monkeypatch.setattr(engine.DecodingState, "logits", slow_logits)
    runner = live.app.state.runner
    history = runner.history
    before = len(history)
    body = {"prompt": PROMPT, "method": "beam", "num_beams": 8, "max_new_tokens": 1024, "stream": stream}
    with httpx.Client(base_url=live.url, timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/api/story", json=body)
    gone = time.monotonic()
    assert steps  # the search had started
    assert wait_for(lambda: len(history) > before, timeout=5)
    assert time.monotonic() - gone < 1.0 and runner.running == 0  # the worker is free again
    assert history[-1].finish_reason == "cancelled" and len(steps) < 300


# ---------------------------------------------------------------------------- the children's safety filter

def test_filter_matches_whole_words_in_any_case():
    words = SafetyFilter(["kill", "dead body"])
    assert words.is_blocked("The wolf wanted to KILL the pig.")
    assert words.is_blocked("They found a dead \n  body.")
    assert words.is_blocked("ｋｉｌｌ")  # full-width letters fold to plain ones
    assert not words.is_blocked("Tom had great skill. The deadline passed; anybody could come.")
    with pytest.raises(ValueError, match="empty"):
        SafetyFilter(["  "])


def test_bundled_word_list_leaves_ordinary_stories_alone(stories):
    words = SafetyFilter.from_file()
    assert len(words.words) > 50
    assert not any(words.is_blocked(story) for story in stories)
    assert not words.is_blocked("Lily had a water gun, a shooting star and a rooster that said cock-a-doodle-doo.")


def test_gate_never_shows_part_of_a_blocked_word():
    gate = TextGate(SafetyFilter(["kill"]))
    shown = [gate.feed(p) for p in ["The wolf ", "wanted to k", "il", "l the ", "pig."]]
    assert "".join(shown) == "The wolf wanted to "
    assert gate.finish_reason == "content_filter"
    calm = TextGate(SafetyFilter(["kill"]))
    assert "".join([calm.feed("Tom has ski"), calm.feed("lls."), calm.flush()]) == "Tom has skills."
    assert calm.finish_reason is None


def test_gate_stops_at_a_stop_sequence_split_across_pieces():
    gate = TextGate(None, stop=["THE END"])
    shown = "".join(gate.feed(p) for p in ["They were happy. TH", "E E", "ND and more"])
    assert shown == "They were happy. " and gate.finish_reason == "stop"


def test_unsuitable_prompt_is_refused_kindly(client):
    answer = client.post("/api/story", json={"prompt": "The pirate wanted to kill everyone"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["message"] == PROMPT_REFUSED and "kill" not in error["message"]
    assert error["code"] == "content_filter" and error["param"] == "prompt"


def test_unsuitable_continuation_is_stopped(tiny_loaded, monkeypatch):
    consumed = []

    def stream_events(model, tokenizer, prompt, config, should_stop=None):
        def events():
            for piece in ["The cat ", "met a ", "mur", "derer ", "who ", "was ", "nice."] * 20:
                consumed.append(piece)
                yield piece
        return events()

    monkeypatch.setattr(engine, "stream_events", stream_events)
    with TestClient(create_app(tiny_loaded, batching=False)) as c:
        story = c.post("/api/story", json={"prompt": PROMPT}).json()
        assert story["text"] == "The cat met a " and story["finish_reason"] == "content_filter"
        assert story["message"] == STORY_STOPPED
        assert len(consumed) <= 5  # generation stopped there, not at the end
        streamed = sse_events(c.post("/api/story", json={"prompt": PROMPT, "stream": True}).text)
        assert "mur" not in "".join(d["text"] for name, d in streamed if name == "text")
        assert streamed[-1][1]["finish_reason"] == "content_filter"
        completion = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 50}).json()
        assert completion["choices"][0]["finish_reason"] == "content_filter"


def test_filter_can_be_turned_off_or_replaced(tiny_loaded, tmp_path):
    with TestClient(create_app(tiny_loaded, safety=False)) as c:
        assert c.post("/api/story", json={"prompt": "kill", "max_new_tokens": 2}).status_code == 200
        assert c.get("/api/info").json()["safety"] is False
    words = tmp_path / "words.txt"
    words.write_text("# only this\nbroccoli\n", encoding="utf-8")
    with TestClient(create_app(tiny_loaded, blocked_words=words)) as c:
        assert c.post("/api/story", json={"prompt": "kill", "max_new_tokens": 2}).status_code == 200
        assert c.post("/api/story", json={"prompt": "Broccoli!", "max_new_tokens": 2}).status_code == 400
    with pytest.raises(FileNotFoundError, match="blocked-words file not found"):
        create_app(tiny_loaded, blocked_words=tmp_path / "missing.txt")


# ---------------------------------------------------------------------------- input limits and bad requests

BAD_REQUESTS = [
    # (path, body (dict or raw bytes), status, words the message must contain)
    ("/api/story", b'{"prompt": "Once', 422, ["not valid JSON"]),
    ("/api/story", b"[1, 2]", 422, ["JSON object"]),
    ("/api/story", b'{"temperature": NaN}', 422, ["temperature"]),
    ("/api/story", {"max_new_tokens": 5000}, 422, ["max_new_tokens", "1024", "5000"]),
    ("/api/story", {"max_new_tokens": "lots"}, 422, ["max_new_tokens", "integer"]),
    ("/api/story", {"temperature": 0}, 422, ["temperature", "0.01"]),
    ("/api/story", {"temperature": 5e-324}, 422, ["temperature", "0.01"]),
    ("/api/story", {"temperature": 9}, 422, ["temperature", "2"]),
    ("/api/story", {"top_p": 1.5}, 422, ["top_p"]),
    ("/api/story", {"top_p": 5e-324}, 422, ["top_p", "0.001"]),
    ("/api/story", {"top_k": -1}, 422, ["top_k"]),
    ("/api/story", {"method": "beam", "num_beams": 50}, 422, ["num_beams", "8"]),
    ("/api/story", {"method": "nucleus"}, 422, ["method", "sample"]),
    ("/api/story", {"prompt": "x" * 2001}, 422, ["prompt", "2000"]),
    ("/api/story", {"promt": "typo"}, 422, ["promt", "not permitted"]),
    ("/api/story", {"seed": -1}, 422, ["seed"]),
    ("/api/story", {"prompt": "   "}, 400, ["prompt is empty"]),
    ("/api/story", {"features": ["plot"]}, 400, ["unknown feature 'plot'", "Dialogue"]),
    ("/api/story", {"words": ["a", "b", "c", "d", "e", "f"]}, 422, ["words", "at most 5"]),
    ("/api/story", {"words": ["dog!"]}, 400, ["'dog!' is not a word"]),
    ("/v1/completions", {"prompt": "a", "features": ["happyending", "sadending"]}, 400, ["both HappyEnding"]),
    ("/v1/completions", {"prompt": ["a", "b"]}, 422, ["exactly one prompt"]),
    ("/v1/completions", {"prompt": "a", "temperature": 1e-40}, 422, ["temperature must be 0 (greedy) or at least"]),
    ("/v1/completions", {"prompt": "a", "n": 3}, 422, ["n:"]),
    ("/v1/completions", {"prompt": "a", "logprobs": 5}, 422, ["logprobs"]),
    ("/v1/completions", {"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, 422, ["at most 4 stop"]),
    ("/v1/completions", {"prompt": "a", "model": "gpt-4"}, 404, ["gpt-4", "tiny"]),
]


@pytest.mark.parametrize("path, body, status, words", BAD_REQUESTS, ids=[str(r[1])[:30] for r in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(client, path, body, status, words):
    if isinstance(body, bytes):
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]["message"]
    for word in words:
        assert word in message
    assert client.get("/healthz").status_code == 200  # and the server keeps serving


LONE_SURROGATES = [
    ("/api/story", '{"prompt": "\\ud800"}', "prompt"),
    ("/api/story", '{"prompt": "Once \\udc00 upon"}', "prompt"),
    ("/api/story", '{"words": ["dog", "\\ud800"]}', "words"),
    ("/api/story", '{"features": ["\\ud800"]}', "features"),
    ("/v1/completions", '{"prompt": "\\ud800"}', "prompt"),
    ("/v1/completions", '{"prompt": ["Once \\ud800"], "stream": true}', "prompt"),
    ("/v1/completions", '{"prompt": "Once", "stop": "\\ud800"}', "stop"),
    ("/v1/completions", '{"prompt": "Once", "stop": ["x", "\\udfff"]}', "stop"),
    ("/v1/completions", '{"prompt": "Once", "words": ["\\ud800"]}', "words"),
    ("/v1/completions", '{"prompt": "Once", "model": "\\ud800"}', "model"),
    ("/v1/completions", '{"prompt": "Once", "user": "\\ud800"}', "user"),
]


@pytest.mark.parametrize("path, body, field", LONE_SURROGATES, ids=[f"{r[0]}-{r[1]}" for r in LONE_SURROGATES])
def test_lone_surrogates_are_a_422_naming_the_field_in_both_apis(client, caplog, path, body, field):
    with caplog.at_level("ERROR"):
        answer = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["param"] == field and error["message"].startswith(f"{field}")
    assert "lone surrogate" in error["message"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no traceback in the log


def test_oversized_bodies_are_refused(client):
    big = json.dumps({"prompt": "a" * 70_000}).encode()
    assert client.post("/api/story", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: counted while reading
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"a" * 1000
        yield b'"}'

    answer = client.post("/api/story", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "limit" in answer.json()["error"]["message"]


def test_fuzzed_requests_from_the_openapi_schema_never_get_a_5xx(tiny_loaded, monkeypatch):
    """schemathesis draws valid and invalid bodies for every POST route (the page's, ollama's and OpenAI's)
    from the app's own schema; stories are capped at 4 tokens so that a hundred requests take seconds,
    the validation and the engine stay real."""
    import dataclasses

    import schemathesis
    from hypothesis import HealthCheck, given, settings, strategies as st
    from schemathesis import GenerationMode

    real = engine.stream_events
    monkeypatch.setattr(engine, "stream_events", lambda model, tokenizer, prompt, config, should_stop=None: real(
        model, tokenizer, prompt, dataclasses.replace(config, max_new_tokens=min(config.max_new_tokens, 4)),
        should_stop))
    app = create_app(tiny_loaded, max_concurrent=1, max_queue=64, batching=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [schema[path]["POST"] for path in ("/api/story", "/api/generate", "/api/chat", "/v1/completions",
                                                     "/v1/chat/completions")]
    cases = st.one_of([op.as_strategy(generation_mode=mode) for op in operations
                       for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
    statuses = []

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cases)
    def no_server_error(case):
        response = case.call()
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text)

    no_server_error()
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)


# ---------------------------------------------------------------------------- the command

def test_serve_command_loads_the_model_and_runs_uvicorn(tiny_model_dir, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model_dir), "--port", "8123", "--no-safety",
                                          "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert started["host"] == "127.0.0.1" and started["port"] == 8123
    assert "http://127.0.0.1:8123" in result.output
    with TestClient(started["app"]) as c:
        assert c.get("/api/info").json()["safety"] is False
        assert c.post("/api/story", json={"prompt": PROMPT, "max_new_tokens": 3}).status_code == 200
        assert c.get("/docs").status_code == 404
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model_dir), "--api-docs", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with TestClient(started["app"]) as c:
        assert c.get("/docs").status_code == 200


@pytest.mark.parametrize("args, message", [
    (["--model", "no/such/model"], "model not found"),
    (["--port", "70000"], "--port must be between 1 and 65535"),
    (["--blocked-words", "no/such/list.txt"], "blocked-words file not found"),
])
def test_serve_command_errors(tiny_model_dir, monkeypatch, args, message):
    import uvicorn
    from typer.testing import CliRunner

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn should not start"))
    if "--model" not in args:
        args = ["--model", str(tiny_model_dir), *args]
    result = CliRunner().invoke(cli_app, ["serve", "--device", "cpu", *args])
    assert result.exit_code == 1
    assert message in result.output


def test_serve_help_has_an_example():
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli_app, ["serve", "--help"])
    assert result.exit_code == 0 and "tinytales serve --model" in result.output
