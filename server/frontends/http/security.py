"""API keys, request ids, CORS and access lines for HTTP: one ASGI wrapper in front of everything.

:func:`wrap` puts, outside the infer fast path (``InferRoute``) and the FastAPI app:

1. CORS (Starlette's ``CORSMiddleware``, only with ``--cors-origins``), outermost so a
   browser's preflight ``OPTIONS`` is answered before any key is asked for, and so that
   401s carry the CORS headers a page needs to read them;
2. :class:`RequestContext`: the request id (``X-Request-ID`` kept when it is 1-128
   printable ASCII characters, else a new uuid4 hex; echoed on every response, set for the
   request's log lines), the key check (decided from the path and headers, before the body
   is read), and the access line (``--log-format json``).

The key policy (:class:`Authenticator`, :func:`required_access`) is shared with the gRPC
interceptor. Open: ``/v2/health/live``, ``/v2/health/ready``, ``/metrics`` (probes and
scrapers), ``/docs`` and ``/openapi.json`` (the API's description). Admin:
``/v2/repository/*`` and Triton's trace / log settings routes. Everything else is inference.

- inference routes need an API key when one is configured (an admin key works too);
- admin routes need an admin key when one is configured, else an API key when one is;
- a route whose keys are not configured is open.

Keys are compared with ``hmac.compare_digest`` against every configured key.
"""

from __future__ import annotations

import enum
import hmac
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.middleware.cors import CORSMiddleware

from server.frontends.http.openai import error_body, is_openai_path
from server.observability import logs

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
_ADMIN_PATH = re.compile(r"/v2/repository(?:/.*)?|/v2/(?:models/[^/]+/(?:versions/[^/]+/)?)?trace/setting|/v2/logging")
_MODEL_PATH = re.compile(r"/v2/(?:repository/)?models/(?P<model>[^/]+)(?:/.*)?")
_REASON_BYTES = 4096  # of an error body, kept for the access line


class Access(enum.IntEnum):
    OPEN = 0
    INFERENCE = 1
    ADMIN = 2


def required_access(path: str) -> Access:
    if path in OPEN_PATHS:
        return Access.OPEN
    if _ADMIN_PATH.fullmatch(path):
        return Access.ADMIN
    return Access.INFERENCE


class Denied(Exception):
    """The key check failed: ``status`` 401 (no key, unknown key) or 403 (a valid key that
    does not reach the route); the same over gRPC as UNAUTHENTICATED / PERMISSION_DENIED."""

    def __init__(self, status: int, message: str, invalid_token: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.invalid_token = invalid_token


class Authenticator:
    """Which keys open which routes (module docstring)."""

    def __init__(self, api_keys: Iterable[str] = (), admin_keys: Iterable[str] = ()) -> None:
        api = tuple(k.encode() for k in api_keys)
        admin = tuple(k.encode() for k in admin_keys)
        self._inference = api + admin if api else ()
        self._admin = admin or api
        self.enabled = bool(api or admin)

    @classmethod
    def from_settings(cls, settings: Any) -> Authenticator:
        return cls(settings.api_keys(), settings.admin_keys())

    def check(self, required: Access, authorization: bytes | str | None) -> None:
        """Raise :class:`Denied` unless ``authorization`` (the header's value) opens a route
        that needs ``required``."""
        accepted = self._admin if required is Access.ADMIN else self._inference if required is Access.INFERENCE else ()
        if not accepted:
            return
        token = bearer_token(authorization)
        if token is None:
            raise Denied(401, "missing API key: send 'Authorization: Bearer <key>'")
        if _matches(token, accepted):
            return
        if required is Access.ADMIN and _matches(token, self._inference):
            raise Denied(403, "this key may not use the repository (model control) API: it needs the admin key")
        raise Denied(401, "invalid API key", invalid_token=True)


def bearer_token(authorization: bytes | str | None) -> bytes | None:
    if authorization is None:
        return None
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "replace")
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    found = False
    for key in keys:  # every key, whatever matched: the time does not say which
        found |= hmac.compare_digest(token, key)
    return found


def model_of(path: str) -> str | None:
    match = _MODEL_PATH.fullmatch(path)
    if match is None or path == "/v2/models/stats":
        return None
    return match["model"]


class RequestContext:
    """ASGI wrapper: request id, key check, access line (module docstring)."""

    def __init__(self, app: Any, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given_id = authorization = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                given_id = value
            elif key == b"authorization":
                authorization = value
        rid = logs.clean_request_id(given_id)
        token = logs.request_id.set(rid)
        id_header = (b"x-request-id", rid.encode())
        logging_on = logs.access_enabled()
        status: int | None = None
        complete = False
        error_body_bytes = bytearray()

        async def send_with_id(message: dict) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            elif message["type"] == "http.response.body":
                complete = not message.get("more_body", False)
                if logging_on and status is not None and status >= 400 and len(error_body_bytes) < _REASON_BYTES:
                    error_body_bytes.extend(message.get("body", b"")[:_REASON_BYTES])
            await send(message)

        path = scope["path"]
        try:
            try:
                if self.auth.enabled:
                    self.auth.check(required_access(path), authorization)
            except Denied as denied:
                await _send_denied(send_with_id, path, denied)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("%s %s failed", scope["method"], path)
            if status is None:
                await _send_json(send_with_id, 500, {"error": "internal server error"}, path)
            elif not complete:
                raise  # the server closes the connection: the answer was cut short
        finally:
            if logging_on:
                reason = _reason(bytes(error_body_bytes)) if error_body_bytes else None
                if status is None:
                    reason = "the client disconnected before the answer"
                logs.access(
                    "http", scope["method"], path, model_of(path), status if status is not None else 499, reason,
                    time.perf_counter() - start,
                )
            logs.request_id.reset(token)


async def _send_denied(send, path: str, denied: Denied) -> None:
    challenge = b'Bearer error="invalid_token"' if denied.invalid_token else b"Bearer"
    extra = [(b"www-authenticate", challenge)] if denied.status == 401 else []
    if is_openai_path(path):
        body = error_body(denied.status, denied.message)
        body["error"]["type"] = "invalid_request_error" if denied.status == 401 else "permission_error"
        body["error"]["code"] = "invalid_api_key" if denied.status == 401 else None
    else:
        body = {"error": denied.message}
    await _send_json(send, denied.status, body, path, extra)


async def _send_json(send, status: int, body: dict, path: str, extra: list | None = None) -> None:
    if status == 500 and is_openai_path(path):
        body = error_body(500, body["error"])
    content = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *(extra or ())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _reason(body: bytes) -> str | None:
    """The message of an ``{"error": ...}`` body (ours or OpenAI's), for the access line."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return body[:200].decode("utf-8", "replace") or None
    if isinstance(error, dict):
        error = error.get("message")
    return None if error is None else str(error)


def wrap(app: Any, settings: Any) -> Any:
    """``app`` behind :class:`RequestContext`, behind CORS when ``--cors-origins`` is set."""
    wrapped: Any = RequestContext(app, Authenticator.from_settings(settings))
    origins = settings.cors_origin_list()
    if origins:
        wrapped = CORSMiddleware(
            wrapped,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],  # a preflight's requested headers (Authorization included) are echoed
            expose_headers=[REQUEST_ID_HEADER, "Inference-Header-Content-Length", "Retry-After"],
        )
    return wrapped
