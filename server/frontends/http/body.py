"""Reading an ASGI request body within the size limit, and gzip / deflate bodies.

Framework-free (raw ASGI ``receive``), so the infer fast path and the FastAPI routes
read bodies the same way.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Mapping

import orjson

from server.core.errors import InvalidInput, Unavailable

Receive = Callable[[], Awaitable[dict]]


class BodyTooLarge(InvalidInput):
    """The body is over ``--max-request-bytes`` (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes (--max-request-bytes)")


async def read_json_object(receive: Receive, headers: Mapping[str, str], limit: int, empty_ok: bool = False) -> dict:
    """The body as a JSON object (``{}`` for an empty body when ``empty_ok``)."""
    body = await read_body(receive, headers, limit)
    if empty_ok and not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in the request body: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object")
    return data


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole body, refused as soon as it is known to exceed ``limit``: from
    Content-Length before reading, while reading a chunked body, or while decompressing."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    message = await receive()
    body = message.get("body", b"")
    if message.get("more_body", False):
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Unavailable("the client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        body = b"".join(chunks)
    elif message["type"] == "http.disconnect":
        raise Unavailable("the client disconnected while sending the body")
    if len(body) > limit:
        raise BodyTooLarge(limit)
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity":
        body = decompress(body, encoding, limit)
    return body


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    else:
        raise InvalidInput(f"unsupported Content-Encoding '{encoding}'; use gzip or deflate")
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the {encoding} body does not decompress: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise BodyTooLarge(limit)
    return out


def compress(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compress a response when the client asks for gzip or deflate."""
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    if "gzip" in accepted:
        encoder = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        return encoder.compress(body) + encoder.flush(), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body), "deflate"
    return body, None
