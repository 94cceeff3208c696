"""The one place HTTP statuses are chosen for core errors (Triton's mapping)."""

from __future__ import annotations

import math

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.core.errors import DeepserveError, InvalidInput, ModelError, ModelNotFound, Unavailable, Unsupported
from server.frontends.http.body import BodyTooLarge
from server.frontends.http.openai import error_body, is_openai_path
from server.frontends.http.responses import json_response

_STATUS: tuple[tuple[type[DeepserveError], int], ...] = (
    (ModelNotFound, 404),
    (Unavailable, 503),
    (Unsupported, 501),
    (ModelError, 500),
    (BodyTooLarge, 413),
    (InvalidInput, 400),
)


def status_for(error: DeepserveError) -> int:
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 400


def error_parts(error: DeepserveError) -> tuple[int, dict[str, str], bytes]:
    """Status, extra headers and JSON body for an error (also used by the fast path)."""
    headers = {}
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s or 1)))
    return status_for(error), headers, orjson.dumps({"error": error.message})


async def handle_deepserve_error(request: Request, error: DeepserveError) -> Response:
    status, headers, body = error_parts(error)
    if is_openai_path(request.url.path):
        body = orjson.dumps(error_body(status, error.message))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def handle_http_error(request: Request, error: StarletteHTTPException) -> Response:
    """Unknown paths, wrong methods: still ``{"error": ...}``."""
    return json_response({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)
