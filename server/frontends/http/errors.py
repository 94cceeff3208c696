"""The one place HTTP statuses are chosen for core errors (Triton's mapping)."""

from __future__ import annotations

import math

from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.core.errors import DeepserveError, InvalidInput, ModelError, ModelNotFound, Unavailable, Unsupported
from server.frontends.http.responses import json_response

_STATUS: tuple[tuple[type[DeepserveError], int], ...] = (
    (ModelNotFound, 404),
    (Unavailable, 503),
    (Unsupported, 501),
    (ModelError, 500),
    (InvalidInput, 400),
)


def status_for(error: DeepserveError) -> int:
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 400


def error_response(error: DeepserveError) -> Response:
    headers = {}
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s or 1)))
    return json_response({"error": error.message}, status_code=status_for(error), headers=headers)


async def handle_deepserve_error(request: Request, error: DeepserveError) -> Response:
    return error_response(error)


async def handle_http_error(request: Request, error: StarletteHTTPException) -> Response:
    """Unknown paths, wrong methods, too-large bodies: still ``{"error": ...}``."""
    return json_response({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)
