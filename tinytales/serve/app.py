"""The web app: a story page for children and parents, its own JSON/SSE protocol, ollama's and OpenAI's APIs.

    app = create_app("runs/tiny/model")   # or None for the bundled model, or a LoadedModel
    uvicorn.run(app)                      # what `tinytales serve` does

Routes: `GET`/`HEAD /` (the page) and `/static/...`; the page's protocol `POST /api/story` (SSE with
`text` and `done` events), `GET /api/info`; ollama's `POST /api/generate`, `POST /api/chat`, `GET /api/tags`,
`GET /api/version` (`ollama.py`); OpenAI's `POST /v1/completions`, `POST /v1/chat/completions`,
`GET /v1/models` (`openai.py`); `GET /healthz`; FastAPI's `/openapi.json`, and with `api_docs=True` its
`/docs` and `/redoc` (off by default: they load Swagger UI / ReDoc from a CDN). Every route starts its
stories through one `Storyteller` (`storyteller.py`).
Every error is JSON, `{"error": {"message", "type", "code", "param"}}` (OpenAI's shape) or on ollama's
routes `{"error": "message"}` (`errors.py`), with a 4xx status for anything the client can fix. Every
answer carries the usual security headers (`SECURITY_HEADERS`); the Content-Security-Policy allows only
the server's own scripts and styles.
"""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core import LoadedModel
from ..defaults import SERVE_MAX_CONCURRENT, SERVE_MAX_QUEUE
from ..formats import load_model
from ..ingredients import FEATURES, MAX_WORDS, trained_with_ingredients
from . import ollama, openai
from .errors import ERRORS, OLLAMA_PATHS, ApiError, describe_validation_errors, error_response, validation_status
from .runner import StoryRunner
from .safety import SafetyFilter
from .schemas import (EXAMPLE_PROMPTS, MAX_BEAMS, MAX_BODY_BYTES, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_TOP_K,
                      StoryRequest)
from .storyteller import SSE_HEADERS, SSE_RESPONSE, Storyteller, sse

STATIC_DIR = Path(__file__).parent / "static"
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
            return await error_response(scope.get("path", ""), 413, too_large)(scope, receive, send)
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


class BodiesAreJson:
    """Requests to `paths` are read as JSON whatever their Content-Type, as ollama reads them (its own
    examples use `curl -d`, which says application/x-www-form-urlencoded)."""

    def __init__(self, app, paths: frozenset[str]):
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") in self.paths:
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        return await self.app(scope, receive, send)


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


def create_app(model=None, *, max_concurrent: int = SERVE_MAX_CONCURRENT, max_queue: int = SERVE_MAX_QUEUE,
               safety=True, blocked_words=None, max_body_bytes: int = MAX_BODY_BYTES, model_name: str | None = None,
               device: str = "cpu", tokenizer_path=None, api_docs: bool = False, batching: bool = True) -> FastAPI:
    """The FastAPI app around one model, loaded now (once).

    model: None (the bundled model), a path (anything `load_model` accepts) or a `LoadedModel`.
    max_concurrent: stories generated at once (rows of the continuous batch, or worker threads with
    batching=False and for beam search; see serve.runner); max_queue: requests that may wait for one;
    beyond both, 503 with Retry-After. safety: the children's word filter (True,
    False, or a `SafetyFilter`); blocked_words: a word-list file instead of the bundled one.
    model_name: the name the APIs answer to (default: the card's name or the directory's);
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
    teller = Storyteller(runner, safety_filter, name)

    @asynccontextmanager
    async def lifespan(app):
        yield
        runner.shutdown()

    app = FastAPI(title="TinyTales", version="1.0",
                  description="Tiny stories for children, from a small GPT trained on TinyStories.", lifespan=lifespan,
                  docs_url=DOCS_URL if api_docs else None, redoc_url=REDOC_URL if api_docs else None)
    app.state.runner, app.state.model_name, app.state.loaded = runner, name, loaded
    app.add_middleware(BodiesAreJson, paths=OLLAMA_PATHS)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders, no_csp=(DOCS_URL, REDOC_URL) if api_docs else ())  # outermost: 413s too

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(request.url.path, exc.status, exc.message, exc.kind, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        message, param = describe_validation_errors(exc.errors())
        return error_response(request.url.path, validation_status(request.url.path), message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(request.url.path, exc.status_code, str(exc.detail), kind,
                              headers=getattr(exc, "headers", None))

    # ------------------------------------------------------------------ the page and its protocol

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
                "defaults": StoryRequest().model_dump(exclude={"prompt", "stream", "words", "features"}),
                "ingredients": {"trained": trained_with_ingredients(loaded.card), "features": list(FEATURES),
                                "max_words": MAX_WORDS}}

    @app.get("/healthz", summary="Liveness, and how busy the storytellers are")
    async def healthz():
        return {"status": "ok", "model": name, "running": runner.running, "waiting": max(runner.waiting, 0),
                "capacity": runner.capacity, "served": runner.served}

    @app.post("/api/story", summary="The page's protocol: one story (JSON, or Server-Sent Events with stream: true)",
              responses={200: SSE_RESPONSE, **ERRORS})
    async def story(req: StoryRequest, request: Request):
        job = teller.start(req.prompt, req.config())
        if not req.stream:
            text, done = await teller.collect(job, request)
            summary = {k: v for k, v in done.items() if k != "type"}
            return {"model": name, "prompt": req.prompt, **summary, "text": text}
        events = await teller.events(job, request)

        async def stream():
            async for event in events:
                yield sse({k: v for k, v in event.items() if k != "type"}, event["type"])

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    # ------------------------------------------------------------------ the protocols other clients speak

    app.include_router(ollama.router(teller, loaded))
    app.include_router(openai.router(teller, created=int(time.time())))
    return app
