"""JSON responses and server-sent events, encoded with orjson (numpy arrays included)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse


def json_response(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def sse_event(body: Any) -> bytes:
    """One server-sent event carrying ``body`` as JSON (``data: {...}`` and a blank line)."""
    return b"data: " + orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"


def event_stream(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
