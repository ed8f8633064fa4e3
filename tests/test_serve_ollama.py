"""ollama's protocol (/api/generate, /api/chat, /api/tags, /api/version): ollama's own Python client against a
live server, streaming and not; options and the story ingredients reaching the engine; ollama's error shape."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import httpx
import pytest
from fastapi.testclient import TestClient

import tinytales.generate as engine
from tinytales.defaults import API_MAX_NEW_TOKENS, STORY_DEFAULTS
from tinytales.serve import create_app
from tinytales.serve.background import BackgroundServer
from tinytales.serve.errors import OLLAMA_PATHS
from tinytales.serve.safety import PROMPT_REFUSED

ollama = pytest.importorskip("ollama")

PROMPT = "Once upon a time, there was a little girl named Lily."
GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def live(tiny_loaded):
    with BackgroundServer(create_app(tiny_loaded, max_concurrent=2, max_queue=16, batching=False)) as server:
        yield server


@pytest.fixture(scope="module")
def client(tiny_loaded):
    with TestClient(create_app(tiny_loaded, max_concurrent=2, max_queue=16, batching=False)) as c:
        yield c


@pytest.fixture
def api(live):
    return ollama.Client(host=live.url, timeout=30)


def recording_engine(monkeypatch, pieces=("Lily ", "saw ", "a ", "kite. ", "The ", "end.")):
    """A stand-in engine that tells `pieces` and records each story's (prompt, config)."""
    asked = []

    def stream_events(model, tokenizer, prompt, config, should_stop=None):
        asked.append((prompt, config))

        def events():
            yield from pieces[:config.max_new_tokens]
            yield engine.Story("".join(pieces), prompt, [], len(pieces), True, 0.01, 4)
        return events()

    monkeypatch.setattr(engine, "stream_events", stream_events)
    return asked


def test_generate_with_the_ollama_client_streaming_and_not(api):
    whole = api.generate(model="tiny", prompt=PROMPT, options=GREEDY)
    assert whole.done and whole.model == "tiny" and whole.done_reason in ("stop", "length", "content_filter")
    assert 0 < whole.eval_count <= 12 and whole.prompt_eval_count > 0
    assert whole.total_duration >= whole.eval_duration > 0 and isinstance(whole.total_duration, int)
    datetime.fromisoformat(whole.created_at.replace("Z", "+00:00"))  # RFC 3339, as ollama's
    parts = list(api.generate(model="tiny:latest", prompt=PROMPT, options=GREEDY, stream=True))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.response for p in parts) == whole.response  # greedy: the same story
    last = parts[-1]
    assert last.response == "" and last.eval_count == whole.eval_count and last.done_reason == whole.done_reason
    seeded = [api.generate(model="tiny", prompt=PROMPT, options={"seed": 5, "num_predict": 10}).response
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_http_default_is_an_ndjson_stream_and_bodies_are_json(client):
    """ollama's HTTP API streams unless told `stream: false` (its Python client always says which), and reads
    the body as JSON whatever the Content-Type."""
    answer = client.post("/api/generate", json={"model": "tiny", "prompt": PROMPT, "options": GREEDY})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert all(set(line) == {"model", "created_at", "response", "done"} and not line["done"] for line in lines[:-1])
    assert {"done_reason", "total_duration", "load_duration", "prompt_eval_count", "eval_count",
            "eval_duration"} <= set(lines[-1]) and lines[-1]["done"] is True
    whole = client.post("/api/generate", json={"model": "tiny", "prompt": PROMPT, "options": GREEDY, "stream": False})
    assert whole.headers["content-type"].startswith("application/json")
    assert whole.json()["response"] == "".join(line["response"] for line in lines)
    curl = client.post("/api/generate", content=json.dumps({"model": "tiny", "prompt": PROMPT, "stream": False,
                                                           "options": GREEDY}),
                       headers={"content-type": "application/x-www-form-urlencoded"})  # what `curl -d` says
    assert curl.status_code == 200 and curl.json()["response"] == whole.json()["response"]


def test_options_and_ingredients_reach_the_engine(client, monkeypatch):
    asked = recording_engine(monkeypatch)
    options = {"temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.05, "repeat_penalty": 1.2, "seed": 3,
               "num_predict": 5, "words": ["cat", "ball"], "features": ["twist"],
               "num_ctx": 2048, "num_thread": 4, "banana": 1}  # hardware and unknown options are ignored
    answer = client.post("/api/generate", json={"model": "tiny", "prompt": "Tom", "stream": False, "options": options,
                                                "system": "ignored", "keep_alive": "5m", "raw": True})
    assert answer.status_code == 200, answer.text
    prompt, config = asked[-1]
    assert prompt == "Tom"
    assert (config.temperature, config.top_p, config.top_k, config.min_p, config.repetition_penalty, config.seed,
            config.max_new_tokens) == (0.5, 0.9, 7, 0.05, 1.2, 3, 5)
    assert config.words == ("cat", "ball") and config.features == ("Twist",)
    client.post("/api/generate", json={"model": "tiny", "prompt": "Tom", "stream": False})
    defaults = asked[-1][1]  # nothing asked: the story defaults, the model's own parameters
    assert (defaults.temperature, defaults.top_p, defaults.repetition_penalty, defaults.max_new_tokens) == (
        STORY_DEFAULTS["temperature"], STORY_DEFAULTS["top_p"], STORY_DEFAULTS["repetition_penalty"],
        STORY_DEFAULTS["max_new_tokens"])
    client.post("/api/generate", json={"model": "tiny", "prompt": "Tom", "stream": False,
                                       "options": {"num_predict": -1, "seed": -1}})
    assert asked[-1][1].max_new_tokens == API_MAX_NEW_TOKENS and asked[-1][1].seed is None
    only_ingredients = client.post("/api/generate", json={"model": "tiny", "stream": False,
                                                          "options": {"words": ["dog"]}})
    assert only_ingredients.json()["done_reason"] == "stop" and asked[-1][0] == ""  # a story, not a load


def test_stop_sequences_end_the_story(client, monkeypatch):
    recording_engine(monkeypatch, pieces=("They were happy. TH", "E E", "ND and more"))
    answer = client.post("/api/generate", json={"model": "tiny", "prompt": "Tom", "stream": False,
                                                "options": {"stop": ["THE END"]}}).json()
    assert answer["response"] == "They were happy. " and answer["done_reason"] == "stop"


def test_chat_tells_the_story_of_the_last_user_message(api, client, monkeypatch):
    messages = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Tom had a dog."},
                {"role": "assistant", "content": "Arr."}, {"role": "user", "content": PROMPT}]
    reply = api.chat(model="tiny", messages=messages, options=GREEDY)
    assert reply.message.role == "assistant" and reply.done and reply.eval_count <= 12
    assert reply.message.content == api.generate(model="tiny", prompt=PROMPT, options=GREEDY).response
    parts = list(api.chat(model="tiny", messages=messages, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == reply.message.content and parts[-1].done
    asked = recording_engine(monkeypatch)
    client.post("/api/chat", json={"model": "tiny", "messages": messages, "stream": False})
    assert asked[-1][0] == PROMPT


def test_empty_prompt_or_chat_only_loads_the_model(api):
    loaded = api.generate(model="tiny", prompt="")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    chat = api.chat(model="tiny", messages=[])
    assert chat.done and chat.done_reason == "load" and chat.message.content == ""


def test_tags_and_version(api, client):
    (model,) = api.list().models
    assert model.model == "tiny:latest" and model.size > 0 and len(model.digest) == 64
    assert model.details.parameter_size[-1] in "KMB" and model.details.quantization_level == "F32"
    assert client.get("/api/tags").json()["models"][0]["name"] == "tiny:latest"
    assert client.get("/api/version").json()["version"]


def test_story_stopped_by_the_filter_says_so(client, monkeypatch):
    recording_engine(monkeypatch, pieces=("The cat ", "met a ", "mur", "derer ", "who ", "was ", "nice."))
    whole = client.post("/api/generate", json={"model": "tiny", "prompt": "Tom", "stream": False}).json()
    assert whole["response"] == "The cat met a " and whole["done_reason"] == "content_filter"
    lines = [json.loads(line) for line in client.post("/api/generate", json={"model": "tiny", "prompt": "Tom"})
             .text.splitlines()]
    assert "mur" not in "".join(line["response"] for line in lines) and lines[-1]["done_reason"] == "content_filter"


@pytest.mark.parametrize("call, status, words", [
    (lambda api: api.generate(model="llama3", prompt=PROMPT), 404, ['model "llama3" not found', "tiny:latest"]),
    (lambda api: api.chat(model="llama3", messages=[{"role": "user", "content": "hi"}]), 404, ["not found"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, options={"temperature": "hot"}), 400,
     ["options.temperature", "valid number"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, options={"temperature": 9}), 400, ["temperature", "2"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, options={"num_predict": 0}), 400, ["num_predict", "-1"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, options={"num_predict": 5000}), 400, ["num_predict"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, options={"mirostat": 2}), 400, ["mirostat"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, options={"features": ["plot"]}), 400,
     ["unknown feature 'plot'"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, format="json"), 400, ["format", "not supported"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, think=True), 400, ["think"]),
    (lambda api: api.generate(model="tiny", prompt=PROMPT, suffix="The end."), 400, ["suffix"]),
    (lambda api: api.chat(model="tiny", messages=[{"role": "system", "content": "Be kind."}]), 400,
     ['no message with role "user"']),
    (lambda api: api.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                          tools=[{"type": "function", "function": {"name": "f"}}]), 400, ["tools"]),
    (lambda api: api.generate(model="tiny", prompt="The pirate wanted to kill everyone"), 400, [PROMPT_REFUSED]),
    (lambda api: api.generate(model="tiny", prompt="   "), 400, ["prompt is empty"]),
], ids=["unknown-model", "chat-unknown-model", "option-type", "temperature", "num_predict-0", "num_predict-big",
        "mirostat", "feature", "format", "think", "suffix", "no-user", "tools", "refused", "blank"])
def test_bad_requests_get_ollamas_error_shape_and_the_server_goes_on(api, live, call, status, words):
    with pytest.raises(ollama.ResponseError) as refused:
        call(api)
    assert refused.value.status_code == status
    message = refused.value.error
    assert isinstance(message, str) and "\n" not in message
    for word in words:
        assert word in message
    assert api.generate(model="tiny", prompt=PROMPT, options={"num_predict": 2}).done  # and it keeps serving


def test_every_ollama_path_answers_errors_in_ollamas_shape(client, tiny_loaded):
    paths = {path for path in client.get("/openapi.json").json()["paths"] if path.startswith("/api/")}
    assert paths - {"/api/story", "/api/info"} == OLLAMA_PATHS
    missing = client.post("/api/generate", json={"prompt": PROMPT})
    assert missing.status_code == 400 and missing.json() == {"error": 'model is required; this server tells stories '
                                                                      'with "tiny:latest"'}
    not_json = client.post("/api/chat", content=b'{"model": ', headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    assert client.delete("/api/tags").json()["error"] == "Method Not Allowed"
    surrogate = client.post("/api/generate", content=b'{"model": "tiny", "prompt": "\\ud800"}',
                            headers={"content-type": "application/json"})
    assert surrogate.status_code == 400 and "lone surrogate" in surrogate.json()["error"]
    with TestClient(create_app(tiny_loaded, max_body_bytes=100)) as small:
        too_big = small.post("/api/generate", json={"model": "tiny", "prompt": "a" * 200})
        assert too_big.status_code == 413 and "limit of 100 bytes" in too_big.json()["error"]
    assert client.post("/api/story", json={"temperature": 9}).json()["error"]["param"] == "temperature"  # OpenAI's


def test_a_client_that_goes_away_stops_its_story(live, monkeypatch):
    progress = {"pieces": 0}

    def stream_events(model, tokenizer, prompt, config, should_stop=None):
        def events():
            for _ in range(config.max_new_tokens):
                time.sleep(0.005)
                progress["pieces"] += 1
                yield "word "
        return events()

    monkeypatch.setattr(engine, "stream_events", stream_events)
    history = live.app.state.runner.history
    before = len(history)
    with httpx.Client(base_url=live.url, timeout=10) as http:
        body = {"model": "tiny", "prompt": PROMPT, "options": {"num_predict": 1000}}
        with http.stream("POST", "/api/generate", json=body) as answer:
            for i, _ in enumerate(answer.iter_lines()):
                if i == 3:
                    break
    deadline = time.monotonic() + 5
    while len(history) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert history[-1].finish_reason == "cancelled" and progress["pieces"] < 400


def test_streams_from_many_ollama_clients_at_once(live):
    results = []

    def one(i):
        parts = list(ollama.Client(host=live.url, timeout=30).generate(
            model="tiny", prompt=PROMPT, stream=True, options={"seed": i, "num_predict": 8}))
        results.append(parts[-1].done)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 4
