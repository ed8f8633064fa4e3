"""`tinytales serve`: the story web page and the HTTP API (FastAPI under uvicorn)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..defaults import SERVE_MAX_CONCURRENT, SERVE_MAX_QUEUE
from . import app
from .common import DEVICE_HELP, TOKENIZER_HELP, console, load_for_cli, model_option, user_errors

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@app.command()
@user_errors
def serve(
    model: str = model_option(),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every network interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_concurrent: int = typer.Option(SERVE_MAX_CONCURRENT, help="Stories told at the same time (rows of the "
                                       "continuous batch; worker threads with --no-batching and for beam search)."),
    max_queue: int = typer.Option(SERVE_MAX_QUEUE, help="Requests that may wait for a place; beyond that: 503, "
                                                        "retry later."),
    batching: bool = typer.Option(True, "--batching/--no-batching",
                                  help="Decode all running stories together, one token each per step (continuous "
                                       "batching); off: one story per worker thread."),
    safety: bool = typer.Option(True, "--safety/--no-safety",
                                help="The children's word filter on prompts and stories."),
    blocked_words: Optional[Path] = typer.Option(None, help="Your own word list, one word or phrase a line "
                                                            "(default: the bundled list)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    log_level: str = typer.Option("info", help=f"uvicorn's log level: {', '.join(LOG_LEVELS)}."),
    api_docs: bool = typer.Option(False, "--api-docs",
                                  help="Serve the interactive API pages /docs and /redoc (they load Swagger UI "
                                       "and ReDoc from a CDN; /openapi.json is always served)."),
):
    """Start the story web page and the HTTP API; the model is loaded once.

    Open http://127.0.0.1:8000 for the page; the API (the page's POST /api/story; ollama's
    POST /api/generate, POST /api/chat, GET /api/tags; OpenAI's POST /v1/completions,
    POST /v1/chat/completions, GET /v1/models; GET /healthz) is described at /openapi.json, and
    with --api-docs interactively at /docs.

    Examples:

      tinytales serve

      tinytales serve --model runs/tiny/model --port 8080

      tinytales serve --host 0.0.0.0 --max-concurrent 4 --blocked-words my_words.txt
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    if log_level not in LOG_LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    from ..core import require

    uvicorn = require("uvicorn", "serve", "tinytales serve")
    require("fastapi", "serve", "tinytales serve")
    from ..serve import create_app

    loaded = load_for_cli(model, tokenizer, device)
    web = create_app(loaded, max_concurrent=max_concurrent, max_queue=max_queue, safety=safety,
                     blocked_words=blocked_words, api_docs=api_docs, batching=batching)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(f"Telling stories with [bold]{web.state.model_name}[/] at http://{shown_host}:{port}  "
                  f"(API: {'/docs' if api_docs else '/openapi.json'}; safety filter {'on' if safety else 'OFF'}; "
                  f"Ctrl+C stops)", highlight=False)
    uvicorn.run(web, host=host, port=port, log_level=log_level)
