"""What every route of the server shares, whatever protocol it speaks (the page's, ollama's, OpenAI's).

    teller = Storyteller(runner, safety_filter, "tiny")
    config = request_config(story_defaults=True, temperature=0.7, max_new_tokens=60)  # None = not asked
    job = teller.start("Lily found a key.", config)
    text, done = await teller.collect(job, request)        # the whole story, or:
    async for event in await teller.events(job, request):  # {"type": "text" | "done" | "error", ...}
        ...

A protocol's routes only translate: their request into `request_config` fields and a prompt (for a
chat, `last_user_message`), and the job's events into their own answer (`sse` writes one Server-Sent
Event). Errors a client can fix are `ApiError`s; the app writes them in each protocol's shape (`errors`).
"""
from __future__ import annotations

import json
import time
from typing import AsyncIterator, Iterable

from fastapi import Request

from .. import generate as engine
from .errors import ApiError
from .runner import StoryJob, StoryRunner
from .safety import PROMPT_REFUSED, SafetyFilter

RETRY_AFTER_SECONDS = 2
POLL_SECONDS = 0.25  # how often a waiting request checks whether its client is still there
OLLAMA_TAG = "latest"  # ollama names models name:tag; this server's one model answers to both
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_RESPONSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "JSON, or Server-Sent Events when stream is true"}


def sse(data, event: str | None = None) -> str:
    """One Server-Sent Event (the page's and OpenAI's streams)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def request_config(story_defaults: bool, **fields) -> engine.GenerationConfig:
    """The one place where request fields become a GenerationConfig; a field given as None was not asked for.

    story_defaults: what is not asked for takes the story defaults (`engine.story_config`: the page's
    protocol, and ollama's, where they are the model's own parameters, as a Modelfile's would be), or
    else GenerationConfig's neutral ones (OpenAI's protocol: temperature 1, no top-k/top-p/penalty).
    Settings the engine refuses together are a 400 with the engine's message.
    """
    given = {name: value for name, value in fields.items() if value is not None}
    try:
        return engine.story_config(**given) if story_defaults else engine.GenerationConfig(**given)
    except ValueError as e:
        raise ApiError(400, str(e)) from e


def last_user_message(messages: Iterable[tuple[str, str]], param: str = "messages") -> str:
    """A chat's story prompt: the text of its last message with role "user" (the others are not read)."""
    prompts = [text for role, text in messages if role == "user"]
    if not prompts:
        raise ApiError(400, f"{param} has no message with role \"user\"; the story begins from the last "
                            f"user message, e.g. [{{\"role\": \"user\", \"content\": \"Lily found a key.\"}}]",
                       param=param)
    return prompts[-1]


class Storyteller:
    """Starts stories on the runner (after the safety filter's look at the prompt) and hands out their events."""

    def __init__(self, runner: StoryRunner, safety: SafetyFilter | None, model_name: str):
        self.runner, self.safety, self.model_name = runner, safety, model_name

    def serves(self, model: str | None) -> bool:
        """Whether a request's model name means this server's model ("tiny", or ollama's "tiny:latest")."""
        return model in (self.model_name, f"{self.model_name}:{OLLAMA_TAG}")

    def start(self, prompt: str, config: engine.GenerationConfig, stop: list[str] | None = None,
              param: str = "prompt") -> StoryJob:
        """A job on the runner; a 400 for a prompt (`param`) or words the filter refuses, a 503 when full."""
        if self.safety is not None:
            if self.safety.is_blocked(prompt):
                raise ApiError(400, PROMPT_REFUSED, code="content_filter", param=param)
            if self.safety.is_blocked(" ".join(config.words)):
                raise ApiError(400, PROMPT_REFUSED, code="content_filter", param="words")
        job = self.runner.submit(prompt, config, stop)
        if job is None:
            raise ApiError(503, f"all {self.runner.capacity} storytellers are busy; try again in a moment",
                           "server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return job

    async def collect(self, job: StoryJob, request: Request) -> tuple[str, dict]:
        """The whole story and its `done` event ({} when the client went away first)."""
        pieces, event = [], await self._first_event(job, request)
        try:
            while event is not None and event["type"] == "text":
                pieces.append(event["text"])
                event = await self._next_event(job, request)
        finally:
            job.cancel()  # a no-op when the story is over; stops it if this request was cancelled
        if event is not None and event["type"] == "error":
            raise ApiError(event["status"], event["message"], "server_error")
        return "".join(pieces), event or {}

    async def events(self, job: StoryJob, request: Request) -> AsyncIterator[dict]:
        """The job's events, once the story has started (so that its errors can still be a 4xx/5xx status):
        text pieces, then one done or error event; the job stops if the client goes away."""
        first = await self._first_event(job, request)
        return self._relay(job, request, first)

    # ------------------------------------------------------------------ the job's events

    async def _next_event(self, job: StoryJob, request: Request) -> dict | None:
        """The job's next event; None (and the job cancelled) once the client has gone.

        The client is checked every POLL_SECONDS, also while events flow: a JSON answer is only
        sent at the end, so nothing else would notice a client that gave up waiting.
        """
        while True:
            event = await job.next_event(POLL_SECONDS)
            if time.monotonic() - job.checked_at >= POLL_SECONDS:
                job.checked_at = time.monotonic()
                if await request.is_disconnected():
                    job.cancel()
                    return None
            if event is not None:
                return event

    async def _first_event(self, job: StoryJob, request: Request) -> dict | None:
        try:
            event = await self._next_event(job, request)
        except BaseException:
            job.cancel()
            raise
        if event is not None and event["type"] == "error":
            raise ApiError(event["status"], event["message"], "server_error" if event["status"] >= 500 else
                           "invalid_request_error")
        return event

    async def _relay(self, job: StoryJob, request: Request, first: dict | None):
        event = first
        try:
            while event is not None:
                yield event
                if event["type"] != "text":
                    return
                event = await self._next_event(job, request)
        finally:
            job.cancel()
