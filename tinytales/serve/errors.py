"""Errors a client can fix, in the shape its protocol expects, with one line that says what was wrong.

Routes raise `ApiError(status, message, ...)`; `error_response` writes it as OpenAI's
`{"error": {"message", "type", "code", "param"}}` (the page's and OpenAI's routes), or as ollama's
`{"error": "message"}` for the paths in `OLLAMA_PATHS`, which answer 400 where the others answer 422.
"""
from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from pydantic import BaseModel

OLLAMA_PATHS = frozenset({"/api/generate", "/api/chat", "/api/tags", "/api/version"})


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param, self.headers = (
            status, message, kind, code, param, headers)


def speaks_ollama(path: str) -> bool:
    return path in OLLAMA_PATHS


def error_response(path: str, status: int, message: str, kind: str = "invalid_request_error", code=None,
                   param=None, headers=None) -> JSONResponse:
    if speaks_ollama(path):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def validation_status(path: str) -> int:
    """A body that does not validate: 422 (FastAPI's, and OpenAI's clients know it), or 400 for ollama's routes."""
    return 400 if speaks_ollama(path) else 422


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class OllamaErrorBody(BaseModel):
    error: str


ERRORS = {status: {"model": ErrorBody, "description": what} for status, what in [
    (400, "Settings that do not work together, or a prompt refused by the safety filter"),
    (413, "Request body too large"),
    (422, "A field with a wrong type or out of range"),
    (503, "Every storyteller is busy; retry after Retry-After seconds"),
]}
OLLAMA_ERRORS = {status: {"model": OllamaErrorBody, "description": what} for status, what in [
    (400, "A field with a wrong type or out of range, settings that do not work together, a feature the model "
          "lacks, or a prompt refused by the safety filter"),
    (404, "Another model's name"),
    (413, "Request body too large"),
    (503, "Every storyteller is busy; retry after Retry-After seconds"),
]}


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
