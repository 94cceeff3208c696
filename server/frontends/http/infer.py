"""``POST /v2/models/{m}[/versions/{v}]/infer``, served as plain ASGI in front of FastAPI.

The infer route is the hot path: it skips FastAPI's router scan, dependency solving and
middleware stack (about half of the front end's CPU per request when it went through
them), and reads the body and writes the answer with raw ASGI messages. Every other
route goes to the FastAPI app unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from server.core.errors import CANCEL_COUNTED, ClientGone, DeepserveError, InvalidInput
from server.core.validation import check_version
from server.frontends.http import codec
from server.frontends.http.body import compress, read_body
from server.frontends.http.errors import error_parts
from server.service import InferenceService

log = logging.getLogger(__name__)
T = TypeVar("T")

INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
# A request still unanswered after this long starts watching for its client's disconnect
# (a watcher per request costs more than most requests take).
DISCONNECT_WATCH_AFTER_S = 0.002
# The client's deadline over HTTP (gRPC uses the call's deadline): milliseconds from arrival.
DEADLINE_HEADER = "x-request-timeout-ms"
_WANTED = {b"content-length", b"content-encoding", b"accept-encoding", codec.HEADER.encode(), DEADLINE_HEADER.encode()}


def deadline_from(headers) -> float | None:
    """``X-Request-Timeout-Ms`` as a time.monotonic() deadline (None when absent)."""
    value = headers.get(DEADLINE_HEADER)
    if value is None:
        return None
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = -1.0
    if not 0 < milliseconds < 1e10:
        raise InvalidInput(f"{DEADLINE_HEADER} must be a positive number of milliseconds, not '{value}'")
    return time.monotonic() + milliseconds / 1000


class InferRoute:
    """ASGI app: infer requests are answered here, everything else goes to ``app``."""

    def __init__(self, app: Any, service: InferenceService, max_request_bytes: int) -> None:
        self.app = app
        self.service = service
        self.limit = max_request_bytes

    async def __call__(self, scope: dict, receive, send) -> None:
        match = INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            await _send(send, 405, [(b"allow", b"POST")], b'{"error":"Method Not Allowed"}')
        else:
            await self._serve(scope, receive, send, match["model"], match["version"] or "")

    async def _serve(self, scope: dict, receive, send, model: str, version: str) -> None:
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}
        try:
            status, extra, body = 200, *await self._infer(receive, headers, model, version)
            media = b"application/json" if codec.HEADER not in extra else b"application/octet-stream"
        except DeepserveError as error:
            status, extra, body = error_parts(error)
            media = b"application/json"
        except asyncio.CancelledError:
            return  # the client is gone: nobody to answer
        except Exception:
            log.exception("infer on %s failed", model)
            status, extra, body, media = 500, {}, b'{"error":"internal server error"}', b"application/json"
        await _send(send, status, [(b"content-type", media), *((k.encode(), v.encode()) for k, v in extra.items())], body)

    async def _infer(self, receive, headers: dict[str, str], model: str, version: str) -> tuple[dict[str, str], bytes]:
        with self.service.accounting(model, version):  # every failure counted once, decoding included
            return await self._answer(receive, headers, model, version)

    async def _answer(self, receive, headers: dict[str, str], model: str, version: str) -> tuple[dict[str, str], bytes]:
        check_version(version)
        body = await read_body(receive, headers, self.limit)
        header = headers.get(codec.HEADER)
        if header is not None and not header.strip().isdigit():
            raise InvalidInput(f"Inference-Header-Content-Length must be a non-negative integer, got '{header}'")
        header_length = int(header) if header is not None else None
        if header_length == 0:
            inputs = self.service.model_metadata(model, version).inputs
            if len(inputs) != 1:
                raise InvalidInput("a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input")
            request = codec.decode_raw_binary(body, inputs[0], model, version)
        else:
            request = codec.decode_request(body, header_length, model, version)
        request.deadline_s = deadline_from(headers)
        result = await until_disconnect(receive, self.service.infer(request))
        content, json_length = codec.encode_response(result, request.parameters["binary_data_output"])
        extra: dict[str, str] = {}
        if json_length is not None:
            extra[codec.HEADER] = str(json_length)
        accept = headers.get("accept-encoding")
        if accept:
            content, encoding = compress(content, accept)
            if encoding:
                extra["content-encoding"] = encoding
        return extra, content


async def _send(send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    if not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def until_disconnect(receive, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    The body has been read, so the next ASGI message can only be the disconnect. A request
    that is still waiting after ``DISCONNECT_WATCH_AFTER_S`` gets a watcher for it, which
    cancels this task: that cancels the queued request, and the batcher drops it before it
    reaches a runtime.
    """
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    watcher: asyncio.Future | None = None
    gone = False

    def on_message(future: asyncio.Future) -> None:
        nonlocal gone
        if not future.cancelled() and future.exception() is None and future.result().get("type") == "http.disconnect":
            gone = True
            task.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_message)

    timer = loop.call_later(DISCONNECT_WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            error = ClientGone("the client disconnected before the answer was ready")
            error.counted = CANCEL_COUNTED.get()  # the model counted it already if it got that far
            raise error from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.remove_done_callback(on_message)
            watcher.cancel()


async def first_response(receive, responses: AsyncIterator[T]) -> T | None:
    """The stream's first item (None if it ends at once), under :func:`until_disconnect`;
    on any failure the stream is closed, which stops the model's producer."""
    try:
        return await until_disconnect(receive, anext(responses, None))
    except BaseException:
        await responses.aclose()
        raise
