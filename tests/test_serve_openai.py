"""OpenAI's chat completions (/v1/chat/completions): the openai client against a live server, streaming and not;
the story begins from the last user message; the sampling fields and TinyTales' extras; clear 4xx errors.
(The legacy /v1/completions: test_serve.py.)"""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import tinytales.generate as engine
from tinytales.defaults import STORY_DEFAULTS
from tinytales.serve import create_app
from tinytales.serve.background import BackgroundServer
from tinytales.serve.safety import PROMPT_REFUSED

openai = pytest.importorskip("openai")

PROMPT = "Once upon a time, there was a little girl named Lily."
CHAT = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Tom had a dog."},
        {"role": "assistant", "content": "Arr."}, {"role": "user", "content": PROMPT}]


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
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="not-needed", max_retries=0, timeout=20)


def recording_engine(monkeypatch):
    asked = []

    def stream_events(model, tokenizer, prompt, config, should_stop=None):
        asked.append((prompt, config))
        return (piece for piece in ["Lily ", "smiled."])

    monkeypatch.setattr(engine, "stream_events", stream_events)
    return asked


def test_chat_with_the_openai_client_streaming_and_not(api):
    reply = api.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, temperature=0)
    assert reply.object == "chat.completion" and reply.model == "tiny" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length", "content_filter")
    usage = reply.usage
    assert 0 < usage.completion_tokens <= 10 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # the same story as the completions API tells from the last user message (both greedy, same settings)
    completion = api.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0)
    assert choice.message.content == completion.choices[0].text and usage == completion.usage
    chunks = list(api.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason and chunks[-1].usage == usage
    seeded = [api.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, seed=5).choices[0].message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_the_story_begins_from_the_last_user_message(client, monkeypatch):
    asked = recording_engine(monkeypatch)
    answer = client.post("/v1/chat/completions", json={"messages": CHAT})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Lily smiled."
    assert asked[-1][0] == PROMPT
    parts = [{"type": "text", "text": "Tom had "}, {"type": "text", "text": "a kite."}]
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]})
    assert asked[-1][0] == "Tom had a kite."


def test_sampling_fields_and_ingredients_reach_the_engine(api, monkeypatch):
    asked = recording_engine(monkeypatch)
    api.chat.completions.create(model="tiny", messages=CHAT, temperature=0.7, top_p=0.9, seed=3, max_tokens=7,
                                extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2,
                                            "words": ["cat"], "features": ["Dialogue"]})
    config = asked[-1][1]
    assert (config.temperature, config.top_p, config.seed, config.max_new_tokens, config.top_k, config.min_p,
            config.repetition_penalty) == (0.7, 0.9, 3, 7, 5, 0.1, 1.2)
    assert config.words == ("cat",) and config.features == ("Dialogue",)
    api.chat.completions.create(model="tiny", messages=CHAT, max_completion_tokens=9)
    assert asked[-1][1].max_new_tokens == 9
    api.chat.completions.create(model="tiny", messages=CHAT)  # no length asked: a story's length
    assert asked[-1][1].max_new_tokens == STORY_DEFAULTS["max_new_tokens"] and asked[-1][1].temperature == 1.0


def test_stop_sequences_and_the_filter_end_the_chat(client, monkeypatch):
    monkeypatch.setattr(engine, "stream_events", lambda *a, **k: (p for p in ["The cat ", "met a ", "mur", "derer."]))
    stopped = client.post("/v1/chat/completions", json={"messages": CHAT}).json()["choices"][0]
    assert stopped["message"]["content"] == "The cat met a " and stopped["finish_reason"] == "content_filter"
    ended = client.post("/v1/chat/completions", json={"messages": CHAT, "stop": "met"}).json()["choices"][0]
    assert ended["message"]["content"] == "The cat " and ended["finish_reason"] == "stop"


@pytest.mark.parametrize("kwargs, error, words", [
    ({"model": "gpt-4"}, "NotFoundError", ["gpt-4", "not served here", "tiny"]),
    ({"messages": []}, "UnprocessableEntityError", ["messages", "empty"]),
    ({"messages": [{"role": "system", "content": "Be kind."}]}, "BadRequestError", ['no message with role "user"']),
    ({"messages": [{"role": "narrator", "content": "hi"}]}, "UnprocessableEntityError", ["role"]),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "UnprocessableEntityError", ["only text content parts"]),
    ({"messages": [{"role": "user", "content": "How to kill a dragon"}]}, "BadRequestError", [PROMPT_REFUSED]),
    ({"max_tokens": 5000}, "UnprocessableEntityError", ["max_tokens", "1024"]),
    ({"temperature": 5}, "UnprocessableEntityError", ["temperature"]),
    ({"n": 2}, "UnprocessableEntityError", ["n:"]),
    ({"logprobs": True}, "UnprocessableEntityError", ["logprobs"]),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "UnprocessableEntityError", ["tools"]),
    ({"response_format": {"type": "json_object"}}, "UnprocessableEntityError", ["plain text"]),
    ({"stop": ["1", "2", "3", "4", "5"]}, "UnprocessableEntityError", ["at most 4 stop"]),
    ({"extra_body": {"features": ["plot"]}}, "BadRequestError", ["unknown feature 'plot'"]),
], ids=["model", "empty", "no-user", "role", "image", "refused", "max_tokens", "temperature", "n", "logprobs", "tools",
        "response_format", "stop", "feature"])
def test_bad_chat_requests_get_a_clear_4xx_and_the_server_goes_on(api, kwargs, error, words):
    request = {"model": "tiny", "messages": CHAT, "max_tokens": 3, **kwargs}
    with pytest.raises(getattr(openai, error)) as refused:
        api.chat.completions.create(**request)
    message = refused.value.body["message"]
    assert "\n" not in message
    for word in words:
        assert word in message
    assert api.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2).choices  # still serving


def test_refused_prompt_names_the_messages(client):
    answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "kill"}]})
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == "content_filter" and error["param"] == "messages"
    surrogate = client.post("/v1/chat/completions", content=b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                            headers={"content-type": "application/json"})
    assert surrogate.status_code == 422 and "lone surrogate" in surrogate.json()["error"]["message"]
