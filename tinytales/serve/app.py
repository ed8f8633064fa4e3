"""The web app: a story page for children and parents, a JSON/SSE API, and an OpenAI-compatible API.

    app = create_app("runs/tiny/model")   # or None for the bundled model, or a LoadedModel
    uvicorn.run(app)                      # what `tinytales serve` does

Routes: `GET`/`HEAD /` (the page) and `/static/...`, `POST /api/generate`, `POST /v1/completions`,
`GET /v1/models`, `GET /healthz`, `GET /api/info`, FastAPI's `/openapi.json`, and with
`api_docs=True` its `/docs` and `/redoc` (off by default: they load Swagger UI / ReDoc from a CDN).
Every error is JSON `{"error": {"message", "type", "code", "param"}}` (OpenAI's shape), with a
4xx status for anything the client can fix. Every answer carries the usual security headers
(`SECURITY_HEADERS`); the Content-Security-Policy allows only the server's own scripts and styles.
"""
from __future__ import annotations

import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import generate as engine
from ..defaults import SERVE_MAX_CONCURRENT, SERVE_MAX_QUEUE
from ..ingredients import FEATURES, MAX_WORDS, trained_with_ingredients
from ..core import LoadedModel
from ..formats import load_model
from .runner import StoryJob, StoryRunner
from .safety import PROMPT_REFUSED, SafetyFilter
from .schemas import (EXAMPLE_PROMPTS, MAX_BEAMS, MAX_BODY_BYTES, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_TOP_K,
                      CompletionRequest, GenerateRequest)

STATIC_DIR = Path(__file__).parent / "static"
RETRY_AFTER_SECONDS = 2
POLL_SECONDS = 0.25  # how often a waiting request checks whether its client is still there
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The page loads only its own script and style sheet; its favicon is an inline data: SVG.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}
DOCS_URL, REDOC_URL = "/docs", "/redoc"


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param, self.headers = (
            status, message, kind, code, param, headers)


def error_response(status: int, message: str, kind: str = "invalid_request_error", code=None, param=None,
                   headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {status: {"model": ErrorBody, "description": what} for status, what in [
    (400, "Settings that do not work together, or a prompt refused by the safety filter"),
    (413, "Request body too large"),
    (422, "A field with a wrong type or out of range"),
    (503, "Every storyteller is busy; retry after Retry-After seconds"),
]}
SSE_RESPONSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "JSON, or Server-Sent Events when stream is true"}


def describe_validation_errors(errors) -> tuple[str, str | None]:
    """One readable line from pydantic's errors, e.g. 'max_new_tokens: Input should be ... (got 5000)'."""
    parts, first_param = [], None
    for error in errors[:4]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"the request body is not valid JSON ({reason}); send a JSON object")
            continue
        if error.get("type") in ("model_attributes_type", "dict_type") and where == "body":
            parts.append("the request body must be a JSON object, e.g. {\"prompt\": \"Once upon a time\"}")
            continue
        first_param = first_param or (loc[0] if loc else None)
        got = error.get("input")
        shown = "" if error.get("type") in ("missing", "extra_forbidden") or isinstance(got, (dict, list)) \
            else f" (got {json.dumps(got)[:60] if not isinstance(got, bytes) else repr(got)[:60]})"
        parts.append(f"{where}: {message}{shown}")
    if len(errors) > 4:
        parts.append(f"and {len(errors) - 4} more")
    return "; ".join(parts), first_param


class BodySizeLimit:
    """Refuses request bodies over max_bytes (413), by Content-Length and while reading a chunked body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"the request body is larger than the limit of {self.max_bytes} bytes; send a shorter prompt"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await error_response(413, too_large)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, too_large)
            return message

        return await self.app(scope, limited_receive, send)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer (streams included), leaving headers a route set alone.

    Paths under `no_csp` (FastAPI's /docs and /redoc, which load Swagger UI from a CDN and run an
    inline script) get every header but the Content-Security-Policy."""

    def __init__(self, app, no_csp: tuple[str, ...] = ()):
        self.app, self.no_csp = app, no_csp
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        self.without_csp = [(k, v) for k, v in self.headers if k != b"content-security-policy"]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        extra = self.without_csp if any(path == p or path.startswith(p + "/") for p in self.no_csp) else self.headers

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def sse(data, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(model=None, *, max_concurrent: int = SERVE_MAX_CONCURRENT, max_queue: int = SERVE_MAX_QUEUE,
               safety=True, blocked_words=None, max_body_bytes: int = MAX_BODY_BYTES, model_name: str | None = None,
               device: str = "cpu", tokenizer_path=None, api_docs: bool = False, batching: bool = True) -> FastAPI:
    """The FastAPI app around one model, loaded now (once).

    model: None (the bundled model), a path (anything `load_model` accepts) or a `LoadedModel`.
    max_concurrent: stories generated at once (rows of the continuous batch, or worker threads with
    batching=False and for beam search; see serve.runner); max_queue: requests that may wait for one;
    beyond both, 503 with Retry-After. safety: the children's word filter (True,
    False, or a `SafetyFilter`); blocked_words: a word-list file instead of the bundled one.
    model_name: the id shown by /v1/models (default: the card's name or the directory's);
    device and tokenizer_path: passed to `load_model` when `model` is not loaded yet.
    api_docs: serve FastAPI's interactive /docs and /redoc, which load their scripts from a CDN
    (off by default; /openapi.json is always there).
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device, tokenizer_path=tokenizer_path)
    if isinstance(safety, SafetyFilter):
        safety_filter = safety
    else:
        safety_filter = SafetyFilter.from_file(blocked_words) if safety else None
    name = model_name or loaded.card.get("name") or (Path(loaded.path).name if loaded.path else "tinytales")
    runner = StoryRunner(loaded, safety_filter, max_concurrent=max_concurrent, max_queue=max_queue, batching=batching)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        runner.shutdown()

    app = FastAPI(title="TinyTales", version="1.0",
                  description="Tiny stories for children, from a small GPT trained on TinyStories.", lifespan=lifespan,
                  docs_url=DOCS_URL if api_docs else None, redoc_url=REDOC_URL if api_docs else None)
    app.state.runner, app.state.model_name, app.state.loaded = runner, name, loaded
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders, no_csp=(DOCS_URL, REDOC_URL) if api_docs else ())  # outermost: 413s too

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        message, param = describe_validation_errors(exc.errors())
        return error_response(422, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))

    # ------------------------------------------------------------------ helpers shared by both APIs

    def start_job(prompt: str, config, stop=None) -> StoryJob:
        if safety_filter is not None:
            if safety_filter.is_blocked(prompt):
                raise ApiError(400, PROMPT_REFUSED, code="content_filter", param="prompt")
            if safety_filter.is_blocked(" ".join(config.words)):
                raise ApiError(400, PROMPT_REFUSED, code="content_filter", param="words")
        job = runner.submit(prompt, config, stop)
        if job is None:
            raise ApiError(503, f"all {runner.capacity} storytellers are busy; try again in a moment",
                           "server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return job

    async def next_event(job: StoryJob, request: Request) -> dict | None:
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

    async def first_event(job: StoryJob, request: Request) -> dict | None:
        """Wait for the story to start, so that its errors can still be a proper 4xx/5xx status."""
        try:
            event = await next_event(job, request)
        except BaseException:
            job.cancel()
            raise
        if event is not None and event["type"] == "error":
            raise ApiError(event["status"], event["message"], "server_error" if event["status"] >= 500 else
                           "invalid_request_error")
        return event

    async def collect(job: StoryJob, request: Request) -> tuple[str, dict | None]:
        pieces, event = [], await first_event(job, request)
        try:
            while event is not None and event["type"] == "text":
                pieces.append(event["text"])
                event = await next_event(job, request)
        finally:
            job.cancel()  # a no-op when the story is over; stops it if this request was cancelled
        if event is not None and event["type"] == "error":
            raise ApiError(event["status"], event["message"], "server_error")
        return "".join(pieces), event

    async def relay(job: StoryJob, request: Request, first: dict | None):
        """The job's events from `first` on, until done/error or the client goes away (then the job stops)."""
        event = first
        try:
            while event is not None:
                yield event
                if event["type"] != "text":
                    return
                event = await next_event(job, request)
        finally:
            job.cancel()

    def check(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise ApiError(400, str(e)) from e

    # ------------------------------------------------------------------ the page

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/info", summary="What the page needs: model, safety, limits, defaults, example prompts")
    async def info():
        return {"model": name, "safety": safety_filter is not None, "examples": EXAMPLE_PROMPTS,
                "context_length": loaded.model.config.context_length,
                "limits": {"prompt_chars": MAX_PROMPT_CHARS, "max_new_tokens": MAX_NEW_TOKENS,
                           "num_beams": MAX_BEAMS, "top_k": MAX_TOP_K, "temperature": 2.0},
                "defaults": GenerateRequest().model_dump(exclude={"prompt", "stream", "words", "features"}),
                "ingredients": {"trained": trained_with_ingredients(loaded.card), "features": list(FEATURES),
                                "max_words": MAX_WORDS}}

    @app.get("/healthz", summary="Liveness, and how busy the storytellers are")
    async def healthz():
        return {"status": "ok", "model": name, "running": runner.running, "waiting": max(runner.waiting, 0),
                "capacity": runner.capacity, "served": runner.served}

    # ------------------------------------------------------------------ the TinyTales API

    def story_config(req: GenerateRequest) -> engine.GenerationConfig:
        # greedy and beam search stay plain unless the request asks for a penalty (story_config's rule)
        penalty = req.repetition_penalty if req.method == "sample" or "repetition_penalty" in req.model_fields_set \
            else None
        settings = dict(method=req.method, max_new_tokens=req.max_new_tokens, seed=req.seed,
                        repetition_penalty=penalty, no_repeat_ngram_size=req.no_repeat_ngram_size,
                        words=req.words, features=req.features)
        if req.method == "sample":
            settings.update(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p)
        elif req.method == "beam":
            settings.update(num_beams=req.num_beams, length_penalty=req.length_penalty)
        return check(engine.story_config, **settings)

    @app.post("/api/generate", summary="Tell one story (JSON, or Server-Sent Events with stream: true)",
              responses={200: SSE_RESPONSE, **ERRORS})
    async def api_generate(req: GenerateRequest, request: Request):
        job = start_job(req.prompt, story_config(req))
        if not req.stream:
            text, done = await collect(job, request)
            summary = {k: v for k, v in (done or {}).items() if k != "type"}
            return {"model": name, "prompt": req.prompt, **summary, "text": text}

        first = await first_event(job, request)

        async def events():
            async for event in relay(job, request, first):
                yield sse({k: v for k, v in event.items() if k != "type"}, event["type"])

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    # ------------------------------------------------------------------ the OpenAI-compatible API

    def completion_config(req: CompletionRequest) -> engine.GenerationConfig:
        temperature = 1.0 if req.temperature is None else req.temperature
        return check(engine.GenerationConfig, method="sample", max_new_tokens=req.max_tokens or 16,
                     temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p,
                     top_k=req.top_k or 0, min_p=req.min_p or 0.0,
                     repetition_penalty=req.repetition_penalty or 1.0, seed=req.seed, words=req.words,
                     features=req.features)

    @app.get("/v1/models", summary="OpenAI: the one model served")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "tinytales"}]}

    @app.post("/v1/completions", summary="OpenAI-compatible completions (streaming and not)",
              responses={200: SSE_RESPONSE, 404: {"model": ErrorBody, "description": "Unknown model"}, **ERRORS})
    async def completions(req: CompletionRequest, request: Request):
        if req.model and req.model != name:
            raise ApiError(404, f"the model {req.model!r} is not served here; this server has {name!r} "
                                f"(see GET /v1/models)", "not_found_error", "model_not_found", "model")
        job = start_job(req.prompt, completion_config(req), req.stop)
        completion_id, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def usage(done: dict | None) -> dict:
            prompt_tokens = (done or {}).get("prompt_tokens", 0)
            new_tokens = (done or {}).get("new_tokens", 0)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                    "total_tokens": prompt_tokens + new_tokens}

        def chunk(text: str, finish_reason: str | None, **extra) -> dict:
            return {"id": completion_id, "object": "text_completion", "created": now, "model": name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
                    **extra}

        if not req.stream:
            text, done = await collect(job, request)
            return chunk(req.prompt + text if req.echo else text, (done or {}).get("finish_reason"),
                         usage=usage(done))

        first = await first_event(job, request)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events():
            if req.echo:
                yield sse(chunk(req.prompt, None))
            async for event in relay(job, request, first):
                if event["type"] == "text":
                    yield sse(chunk(event["text"], None))
                elif event["type"] == "done":
                    yield sse(chunk("", event["finish_reason"]))
                    if include_usage:
                        yield sse({**chunk("", None), "choices": [], "usage": usage(event)})
                    yield sse("[DONE]")
                else:
                    yield sse({"error": {"message": event["message"], "type": "server_error"}})

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    return app
