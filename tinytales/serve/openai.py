"""OpenAI's protocol: `GET /v1/models`, `POST /v1/completions` and `POST /v1/chat/completions`.

    app.include_router(openai.router(teller, created=int(time.time())))

Both POST routes take the same sampling fields (`SamplingRequest`), answer JSON or Server-Sent Events
ending with `data: [DONE]`, and start from OpenAI's neutral defaults (temperature 1, top_p 1). Unknown
fields are ignored (OpenAI clients send extras); known but unsupported features (n > 1, logprobs,
penalties, logit_bias, tools, JSON output) are refused with a message rather than silently ignored.
`top_k`, `min_p` and `repetition_penalty` are accepted as extras, as vLLM does, and the ingredients
`words` and `features`. A chat's story begins from its last user message; the other messages (system,
developer, assistant, tool) are not read: the model tells stories, it does not converse.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..defaults import STORY_DEFAULTS
from ..generate import GenerationConfig
from .schemas import (FEATURES_FIELD, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_SEED, MAX_STOP_SEQUENCES, MAX_TOP_K,
                      MIN_TEMPERATURE, MIN_TOP_P, WORDS_FIELD, Feature, Word, check_stops, check_temperature,
                      valid_text)
from .errors import ERRORS, ApiError, ErrorBody
from .storyteller import SSE_HEADERS, SSE_RESPONSE, Storyteller, last_user_message, request_config, sse

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions
UNKNOWN_MODEL = {"model": ErrorBody, "description": "Another model's name"}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = Field(None, max_length=200, description="Model id from GET /v1/models.")
    temperature: float | None = Field(1.0, ge=0.0, le=2.0,
                                      description=f"0 (greedy decoding), or {MIN_TEMPERATURE} to 2.")
    top_p: float | None = Field(1.0, ge=MIN_TOP_P, le=1.0)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0.0, lt=1.0)
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0)
    n: int | None = Field(1, ge=1, le=1, description="Only one choice per request.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP_SEQUENCES} sequences that end the text.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    presence_penalty: float | None = Field(0.0, ge=0.0, le=0.0, description="Not supported (only 0).")
    frequency_penalty: float | None = Field(0.0, ge=0.0, le=0.0, description="Not supported (only 0).")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="Not supported (only empty).")
    user: str | None = Field(None, max_length=200)
    words: list[Word] = WORDS_FIELD  # TinyTales extras, like top_k
    features: list[Feature] = FEATURES_FIELD

    @field_validator("model", "stop", "user", "words", "features", "logit_bias", mode="before")
    @classmethod
    def text_is_text(cls, value, info):
        return valid_text(value, info.field_name)

    @field_validator("temperature")
    @classmethod
    def greedy_or_sensible_temperature(cls, value):
        return check_temperature(value)

    @field_validator("stop")
    @classmethod
    def few_short_stops(cls, value):
        return check_stops(value)

    def config(self, max_tokens: int) -> GenerationConfig:
        return request_config(story_defaults=False, method="sample", max_new_tokens=max_tokens,
                              temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                              repetition_penalty=self.repetition_penalty, seed=self.seed, words=self.words,
                              features=self.features)


class CompletionRequest(SamplingRequest):
    """`POST /v1/completions`, the OpenAI legacy completions API."""

    prompt: str | list[str] = Field("", description=f"One prompt (a string or a list of one string), "
                                                    f"at most {MAX_PROMPT_CHARS} characters.")
    max_tokens: int | None = Field(COMPLETIONS_DEFAULT_MAX_TOKENS, ge=1, le=MAX_NEW_TOKENS,
                                   description="Tokens to generate (OpenAI default 16).")
    best_of: int | None = Field(None, ge=1, le=1)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=0, description="Not supported (only null or 0).")
    suffix: str | None = Field(None, max_length=0, description="Not supported (only empty).")

    @field_validator("prompt", "suffix", mode="before")
    @classmethod
    def prompt_is_text(cls, value, info):
        return valid_text(value, info.field_name)

    @field_validator("prompt")
    @classmethod
    def one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"give exactly one prompt (a string or a list of one string), got a list of "
                                 f"{len(value)}; send one request per prompt")
            value = value[0]
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}")
        return value


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str = ""

    @field_validator("type")
    @classmethod
    def text_only(cls, value):
        if value != "text":
            raise ValueError(f"only text content parts are supported (type \"text\"), got {value!r:.40}: "
                             f"the model reads words, not images or sound")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = Field(None, description="Text, or a list of text parts.")

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    """`POST /v1/chat/completions`: the story continues the last user message."""

    messages: list[ChatMessage] = Field(..., description="The story begins from the last user message's content; "
                                                         "the other messages are not read.")
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS,
                                   description=f"Tokens to generate (default {STORY_DEFAULTS['max_new_tokens']}, "
                                               f"the story length).")
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS, description="The same as max_tokens.")
    logprobs: bool | None = Field(None, description="Not supported (only false).")
    top_logprobs: int | None = Field(None, ge=0, le=0, description="Not supported (only null or 0).")
    tools: list[dict] | None = Field(None, description="Not supported (only empty): no tool calls.")
    response_format: dict | None = Field(None, description="Only {\"type\": \"text\"}.")

    @field_validator("messages")
    @classmethod
    def some_messages(cls, value):
        if not value:
            raise ValueError("the list is empty; send at least one message with role \"user\", whose content "
                             "begins the story")
        for i, message in enumerate(value):
            if len(message.text) > MAX_PROMPT_CHARS:
                raise ValueError(f"message {i} is {len(message.text)} characters long; the limit is "
                                 f"{MAX_PROMPT_CHARS}")
            valid_text(message.text, f"message {i}")
        return value

    @field_validator("logprobs", "tools")
    @classmethod
    def unsupported(cls, value, info):
        if value:
            raise ValueError({"logprobs": "log probabilities are not supported; leave logprobs out or false",
                              "tools": "tools are not supported: the model tells stories and calls no tools"}
                             [info.field_name])
        return value

    @field_validator("response_format")
    @classmethod
    def plain_text(cls, value):
        if value and value.get("type", "text") != "text":
            raise ValueError(f"only plain text answers are supported (type \"text\"), got {value.get('type')!r:.40}")
        return value

    @property
    def prompt(self) -> str:
        return last_user_message((message.role, message.text) for message in self.messages)

    @property
    def length(self) -> int:
        return self.max_completion_tokens or self.max_tokens or STORY_DEFAULTS["max_new_tokens"]


def usage(done: dict) -> dict:
    prompt_tokens, new_tokens = done.get("prompt_tokens", 0), done.get("new_tokens", 0)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens, "total_tokens": prompt_tokens + new_tokens}


@dataclass(frozen=True)
class Shape:
    """How one route dresses the story: its object names, and its choice for the whole text or for a piece
    (`piece(None)`: the last chunk's, beside the finish_reason); `head`: chunks before the story's."""

    kind: str
    chunk_kind: str
    id_prefix: str
    whole: Callable[[str], dict]
    piece: Callable[[str | None], dict]
    head: tuple[dict, ...] = ()


def router(teller: Storyteller, created: int) -> APIRouter:
    """The OpenAI routes around `teller`; `created` is the model's creation time in /v1/models."""
    api = APIRouter()
    name = teller.model_name

    def check_model(model: str | None) -> None:
        if model and not teller.serves(model):
            raise ApiError(404, f"the model {model!r} is not served here; this server has {name!r} "
                                f"(see GET /v1/models)", "not_found_error", "model_not_found", "model")

    async def answer(req: SamplingRequest, job, request: Request, shape: Shape):
        """One JSON object, or Server-Sent Events: the head chunks, one chunk per text piece, the finish,
        the usage (when asked for), [DONE]."""
        answer_id, now = f"{shape.id_prefix}-{uuid.uuid4().hex[:24]}", int(time.time())

        def body(kind: str, choice: dict | None, finish_reason: str | None = None, **extra) -> dict:
            choices = [] if choice is None else [{"index": 0, **choice, "logprobs": None,
                                                  "finish_reason": finish_reason}]
            return {"id": answer_id, "object": kind, "created": now, "model": name, "choices": choices, **extra}

        if not req.stream:
            text, done = await teller.collect(job, request)
            return body(shape.kind, shape.whole(text), done.get("finish_reason"), usage=usage(done))
        events = await teller.events(job, request)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream():
            for choice in shape.head:
                yield sse(body(shape.chunk_kind, choice))
            async for event in events:
                if event["type"] == "text":
                    yield sse(body(shape.chunk_kind, shape.piece(event["text"])))
                elif event["type"] == "done":
                    yield sse(body(shape.chunk_kind, shape.piece(None), event.get("finish_reason")))
                    if include_usage:
                        yield sse(body(shape.chunk_kind, None, usage=usage(event)))
                    yield sse("[DONE]")
                else:
                    yield sse({"error": {"message": event["message"], "type": "server_error"}})

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    @api.get("/v1/models", summary="OpenAI: the one model served")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "tinytales"}]}

    @api.post("/v1/completions", summary="OpenAI-compatible completions (streaming and not)",
              responses={200: SSE_RESPONSE, **ERRORS, 404: UNKNOWN_MODEL})
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        job = teller.start(req.prompt, req.config(req.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS), req.stop)
        return await answer(req, job, request, Shape(
            "text_completion", "text_completion", "cmpl",
            whole=lambda text: {"text": req.prompt + text if req.echo else text},
            piece=lambda text: {"text": text or ""},
            head=({"text": req.prompt},) if req.echo else ()))

    @api.post("/v1/chat/completions", summary="OpenAI-compatible chat: a story from the last user message",
              responses={200: SSE_RESPONSE, **ERRORS, 404: UNKNOWN_MODEL})
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        job = teller.start(req.prompt, req.config(req.length), req.stop, param="messages")
        return await answer(req, job, request, Shape(
            "chat.completion", "chat.completion.chunk", "chatcmpl",
            whole=lambda text: {"message": {"role": "assistant", "content": text}},
            piece=lambda text: {"delta": {} if text is None else {"content": text}},
            head=({"delta": {"role": "assistant", "content": ""}},)))

    return api
