"""ollama's protocol: `POST /api/generate`, `POST /api/chat`, `GET /api/tags`, `GET /api/version`.

    app.include_router(ollama.router(teller, loaded))

So that ollama's clients (its Python and JavaScript libraries, LangChain's ChatOllama, Open WebUI, ...)
work unchanged. As in ollama: `model` is required (the served name, with or without ":latest"),
`stream` is true unless told otherwise (then newline-delimited JSON, `application/x-ndjson`), an
empty prompt (or an empty chat) only "loads the model" (`done_reason: "load"`), unknown top-level
fields and unknown options are ignored (ollama logs and ignores options it does not know), and errors
are `{"error": "message"}` with 400 for any bad request. What is not asked for takes the story
defaults, the model's own parameters, as a Modelfile's would be.

TinyTales' choices: options that would change the story in a way this model cannot (mirostat,
typical_p, tfs_z, presence and frequency penalties) are refused unless at their neutral value, and
so are images, `suffix`, `format` (JSON output), `think`, `logprobs` and tools; options about
hardware and memory (num_ctx, num_thread, ...) are ignored. The story ingredients are options:
`{"words": ["dog", "cake"], "features": ["Dialogue"]}` (ollama's clients send options as they are).
A story the safety filter stopped ends with `done_reason: "content_filter"`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import torch
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..core import LoadedModel
from ..generate import GenerationConfig
from .errors import OLLAMA_ERRORS, ApiError
from .schemas import (FEATURES_FIELD, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_SEED, MAX_STOP_SEQUENCES, MAX_TOP_K,
                      MIN_TEMPERATURE, MIN_TOP_P, WORDS_FIELD, Feature, Word, check_stops, check_temperature,
                      valid_text)
from .storyteller import OLLAMA_TAG, Storyteller, last_user_message, request_config

logger = logging.getLogger("tinytales.serve")

NDJSON = "application/x-ndjson"
NDJSON_RESPONSE = {"content": {NDJSON: {"schema": {"type": "string"}}},
                   "description": "Newline-delimited JSON objects (stream true, the default), or one JSON object"}
# ollama's options that do not change what the story says: hardware, memory, and the window of repeat_penalty
IGNORED_OPTIONS = frozenset({"numa", "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all",
                             "vocab_only", "use_mmap", "use_mlock", "embedding_only", "num_thread", "num_keep",
                             "repeat_last_n", "penalize_newline", "mirostat_tau", "mirostat_eta"})
UNSUPPORTED = {  # request fields for what a small story model cannot do
    "suffix": "text after the story (suffix, fill-in-the-middle) is not supported; leave suffix out",
    "images": "the model reads words only; leave images out",
    "format": "structured output (format: json or a schema) is not supported: the model writes stories",
    "think": "the model does not think before it tells a story; leave think out or false",
    "logprobs": "log probabilities are not supported; leave logprobs out or false",
    "tools": "tools are not supported: the model tells stories and calls no tools",
}


class Options(BaseModel):
    """ollama's `options` that TinyTales reads, the ones it refuses unless neutral, and the story ingredients."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    num_predict: int | None = Field(None, ge=-2, le=MAX_NEW_TOKENS,
                                    description=f"Tokens to generate: 1 to {MAX_NEW_TOKENS}, or -1 / -2 (ollama's "
                                                f"'no limit' and 'fill the context'): {MAX_NEW_TOKENS}.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description=f"0 (greedy), or {MIN_TEMPERATURE} to 2.")
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K, description="0 = off.")
    top_p: float | None = Field(None, ge=MIN_TOP_P, le=1.0)
    min_p: float | None = Field(None, ge=0.0, lt=1.0)
    repeat_penalty: float | None = Field(None, ge=1.0, le=2.0, description="1 = off.")
    seed: int | None = Field(None, ge=-1, le=MAX_SEED, description="-1: a random story.")
    stop: list[str] | None = Field(None, description=f"Up to {MAX_STOP_SEQUENCES} sequences that end the story.")
    mirostat: int | None = Field(None, ge=0, le=0, description="Not supported (only 0).")
    typical_p: float | None = Field(None, ge=1.0, le=1.0, description="Not supported (only 1).")
    tfs_z: float | None = Field(None, ge=1.0, le=1.0, description="Not supported (only 1).")
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported (only 0).")
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported (only 0).")
    words: list[Word] = WORDS_FIELD  # TinyTales' story ingredients
    features: list[Feature] = FEATURES_FIELD

    @field_validator("stop", "words", "features", mode="before")
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
        return None if value is None else check_stops(value)

    @field_validator("num_predict")
    @classmethod
    def some_tokens(cls, value):
        if value == 0:
            raise ValueError(f"num_predict must be 1 to {MAX_NEW_TOKENS}, or -1 for the longest story allowed; got 0")
        return value

    @model_validator(mode="after")
    def unknown_options_are_ignored(self):
        unknown = sorted(set(self.model_extra or {}) - IGNORED_OPTIONS)
        if unknown:  # as ollama does: a warning in the log, and the request goes on
            logger.warning("ignoring unknown ollama options: %s", ", ".join(unknown)[:200])
        return self

    @property
    def ingredients(self) -> bool:
        return bool(self.words or self.features)

    def config(self) -> GenerationConfig:
        length = MAX_NEW_TOKENS if self.num_predict is not None and self.num_predict < 0 else self.num_predict
        seed = None if self.seed is not None and self.seed < 0 else self.seed
        return request_config(story_defaults=True, method="sample", max_new_tokens=length,
                              temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                              repetition_penalty=self.repeat_penalty, seed=seed, words=self.words,
                              features=self.features)


class OllamaRequest(BaseModel):
    """What /api/generate and /api/chat share. Not read (as a raw story model has no template): system,
    template, raw, context, keep_alive; unknown fields are ignored, as ollama does."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str = Field("", max_length=200, description="The served model's name (GET /api/tags), ':latest' or not.")
    stream: bool = Field(True, description="Newline-delimited JSON pieces (the default), or one JSON object.")
    options: Options | None = None
    format: str | dict | None = Field(None, description="Not supported (only empty).")
    think: bool | str | None = Field(None, description="Not supported (only false).")
    logprobs: bool | None = Field(None, description="Not supported (only false).")

    @field_validator("model", mode="before")
    @classmethod
    def model_is_text(cls, value):
        return valid_text(value, "model")

    @field_validator("format", "think", "logprobs")
    @classmethod
    def unsupported(cls, value, info):
        if value:
            raise ValueError(UNSUPPORTED[info.field_name])
        return value

    @property
    def opts(self) -> Options:
        return self.options or Options()


class GenerateRequest(OllamaRequest):
    """`POST /api/generate`: a story that continues `prompt`."""

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS,
                        description="Start of the story; empty (and no ingredients): only load the model.")
    suffix: str | None = Field(None, description="Not supported (only empty).")
    images: list[str] | None = Field(None, description="Not supported (only empty).")

    @field_validator("prompt", mode="before")
    @classmethod
    def prompt_is_text(cls, value):
        return valid_text(value, "prompt")

    @field_validator("suffix", "images")
    @classmethod
    def unsupported_input(cls, value, info):
        if value:
            raise ValueError(UNSUPPORTED[info.field_name])
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(..., max_length=32)
    content: str = Field("", max_length=MAX_PROMPT_CHARS)
    images: list[str] | None = Field(None, description="Not supported (only empty).")

    @field_validator("role", "content", mode="before")
    @classmethod
    def text_is_text(cls, value, info):
        return valid_text(value, info.field_name)

    @field_validator("images")
    @classmethod
    def no_images(cls, value):
        if value:
            raise ValueError(UNSUPPORTED["images"])
        return value


class ChatRequest(OllamaRequest):
    """`POST /api/chat`: a story that continues the last user message (the other messages are not read)."""

    messages: list[ChatMessage] = Field([], description="Empty: only load the model.")
    tools: list[dict] | None = Field(None, description="Not supported (only empty).")

    @field_validator("tools")
    @classmethod
    def no_tools(cls, value):
        if value:
            raise ValueError(UNSUPPORTED["tools"])
        return value


def rfc3339(timestamp: float | None = None) -> str:
    """A time as ollama writes it, e.g. 2026-01-02T03:04:05.678901Z; now when not given."""
    moment = datetime.now(timezone.utc) if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def parameter_size(count: int) -> str:
    """ollama's way to write a parameter count: 4.3M, 1.1B, 260.1K."""
    for unit, size in (("B", 1e9), ("M", 1e6)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return f"{count / 1e3:.1f}K"


def nanoseconds(seconds: float) -> int:
    return round(seconds * 1e9)


def final_fields(done: dict, started: float) -> dict:
    """The last object's summary: why the story ended, and ollama's counts (durations in nanoseconds).
    The model is loaded when the server starts (load_duration 0); eval_duration includes reading the prompt."""
    return {"done": True, "done_reason": done.get("finish_reason", "stop"),
            "total_duration": nanoseconds(time.perf_counter() - started), "load_duration": 0,
            "prompt_eval_count": done.get("prompt_tokens", 0), "eval_count": done.get("new_tokens", 0),
            "eval_duration": nanoseconds(done.get("seconds", 0.0))}


def describe_model(loaded: LoadedModel, tag: str, started: float) -> dict:
    """The model as /api/tags lists it: size in bytes and a digest of its weights, ollama's `details`."""
    parameters = list(loaded.model.parameters()) if hasattr(loaded.model, "parameters") else []
    digest = hashlib.sha256()
    for tensor in parameters:
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    dtype = str(parameters[0].dtype).removeprefix("torch.") if parameters else "float32"
    quantization = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}.get(dtype, dtype.upper())
    path = Path(loaded.path) if loaded.path else None
    modified = path.stat().st_mtime if path is not None and path.exists() else started
    family = type(loaded.model).__name__.lower()
    return {"name": tag, "model": tag,
            "modified_at": rfc3339(modified),
            "size": sum(t.numel() * t.element_size() for t in parameters), "digest": digest.hexdigest(),
            "details": {"parent_model": "", "format": "tinytales", "family": family, "families": [family],
                        "parameter_size": parameter_size(loaded.model.num_params()),
                        "quantization_level": quantization}}


def router(teller: Storyteller, loaded: LoadedModel) -> APIRouter:
    """The ollama routes around `teller`; `loaded` is described by /api/tags."""
    api = APIRouter()
    name, started_at = teller.model_name, time.time()
    tag = name if ":" in name else f"{name}:{OLLAMA_TAG}"
    listed: list[dict] = []  # /api/tags' entry, made at the first request (the digest reads every weight)

    def check_model(model: str) -> None:
        if not model:
            raise ApiError(400, f"model is required; this server tells stories with \"{tag}\"", param="model")
        if not teller.serves(model):
            raise ApiError(404, f"model \"{model}\" not found; this server tells stories with \"{tag}\" "
                                f"(see GET /api/tags)", "not_found_error", "model_not_found", "model")

    async def answer(req: OllamaRequest, prompt: str | None, request: Request, piece: Callable[[str], dict],
                     param: str):
        """ollama's answer: one object, or NDJSON objects (done: false) and a last one with the counts."""
        def head() -> dict:
            return {"model": req.model, "created_at": rfc3339()}

        if prompt is None:  # ollama's way to load a model: there is nothing to tell
            return {**head(), **piece(""), "done": True, "done_reason": "load"}
        started = time.perf_counter()
        options = req.opts
        job = teller.start(prompt, options.config(), options.stop, param=param)
        if not req.stream:
            text, done = await teller.collect(job, request)
            return {**head(), **piece(text), **final_fields(done, started)}
        events = await teller.events(job, request)

        async def lines():
            async for event in events:
                if event["type"] == "text":
                    line = {**head(), **piece(event["text"]), "done": False}
                elif event["type"] == "done":
                    line = {**head(), **piece(""), **final_fields(event, started)}
                else:
                    line = {"error": event["message"]}
                yield json.dumps(line, ensure_ascii=False) + "\n"

        return StreamingResponse(lines(), media_type=NDJSON)

    @api.post("/api/generate", summary="ollama: tell a story that continues the prompt (NDJSON unless stream: false)",
              responses={200: NDJSON_RESPONSE, **OLLAMA_ERRORS})
    async def generate(req: GenerateRequest, request: Request):
        check_model(req.model)
        load_only = not req.prompt and not req.opts.ingredients
        return await answer(req, None if load_only else req.prompt, request, lambda text: {"response": text},
                            "prompt")

    @api.post("/api/chat", summary="ollama: a story that continues the last user message",
              responses={200: NDJSON_RESPONSE, **OLLAMA_ERRORS})
    async def chat(req: ChatRequest, request: Request):
        check_model(req.model)
        prompt = last_user_message((m.role, m.content) for m in req.messages) if req.messages else None
        return await answer(req, prompt, request,
                            lambda text: {"message": {"role": "assistant", "content": text}}, "messages")

    @api.get("/api/tags", summary="ollama: the one model served")
    def tags():  # a plain function: FastAPI runs it in a thread, so the first digest does not block the loop
        if not listed:
            listed.append(describe_model(loaded, tag, started_at))
        return {"models": listed}

    @api.get("/api/version", summary="ollama: the server's version (TinyTales')")
    async def server_version():
        try:
            return {"version": version("tinytales")}
        except PackageNotFoundError:
            return {"version": "0.0.0"}

    return api
