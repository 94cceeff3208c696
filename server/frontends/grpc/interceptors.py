"""The grpc.aio server interceptor: API keys, request ids and access lines, as HTTP has them.

- Keys: metadata ``authorization: Bearer <key>``, the same policy as HTTP
  (:class:`server.frontends.http.security.Authenticator`). Open: ``ServerLive``,
  ``ServerReady`` and ``grpc.health.v1.Health``; admin: ``RepositoryIndex``,
  ``RepositoryModelLoad``, ``RepositoryModelUnload``, ``TraceSetting``, ``LogSettings``;
  every other RPC (reflection included) is inference. A missing or unknown key ends the
  call with UNAUTHENTICATED, an inference key on an admin RPC with PERMISSION_DENIED,
  before the handler runs.
- Request id: metadata ``x-request-id`` (kept when 1-128 printable ASCII characters, else a
  new uuid4 hex) is set for the call's log lines and sent back in the trailing metadata.
- Access line: one per call on ``deepserve.access`` (INFO with ``--log-format json``).

Handlers are wrapped once per method and cached; the wrapper runs in the call's own task,
so the request id it sets is seen by everything the handler logs.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.frontends.http.security import Access, Authenticator, Denied
from server.observability import logs

_SERVICE = "/inference.GRPCInferenceService/"
OPEN_METHODS = frozenset({
    f"{_SERVICE}ServerLive", f"{_SERVICE}ServerReady", "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
})
ADMIN_METHODS = frozenset(
    f"{_SERVICE}{name}"
    for name in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload", "TraceSetting", "LogSettings")
)
_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def required_access(method: str) -> Access:
    if method in OPEN_METHODS:
        return Access.OPEN
    if method in ADMIN_METHODS:
        return Access.ADMIN
    return Access.INFERENCE


def _metadata_value(metadata: Any, key: str) -> str | None:
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED
        method = handler_call_details.method
        if self.auth.enabled:
            try:
                authorization = _metadata_value(handler_call_details.invocation_metadata, "authorization")
                self.auth.check(required_access(method), authorization)
            except Denied as denied:
                return _denied_handler(handler, method, denied)
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = _wrap(handler, method)
        return wrapped


def _kind(handler: grpc.RpcMethodHandler) -> tuple[str, Callable[..., grpc.RpcMethodHandler]]:
    prefix = ("stream" if handler.request_streaming else "unary") + "_" + ("stream" if handler.response_streaming else "unary")
    return next((name, factory) for name, factory in _KINDS if name == prefix)


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Callable) -> grpc.RpcMethodHandler:
    _, factory = _kind(handler)
    return factory(behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def _denied_handler(handler: grpc.RpcMethodHandler, method: str, denied: Denied) -> grpc.RpcMethodHandler:
    code = grpc.StatusCode.UNAUTHENTICATED if denied.status == 401 else grpc.StatusCode.PERMISSION_DENIED

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        rid = _start(context)
        logs.access("grpc", _kind(handler)[0], method, None, code.name, denied.message, 0.0)
        await context.abort(code, denied.message, trailing_metadata=(("x-request-id", rid),))

    return _rebuild(handler, deny)


def _start(context: grpc.aio.ServicerContext) -> str:
    """The call's request id: set for its log lines and its trailing metadata."""
    rid = logs.clean_request_id(_metadata_value(context.invocation_metadata(), "x-request-id"))
    logs.request_id.set(rid)  # the call runs in its own task: nothing to reset
    context.set_trailing_metadata((("x-request-id", rid),))
    return rid


def _finish(context: grpc.aio.ServicerContext, kind: str, method: str, model: str | None, start: float, error: BaseException | None) -> None:
    """The call's access line. ``context.code()`` is the status an abort or ``set_code`` gave
    (None when the handler set none); an exception that escaped the handler is UNKNOWN
    (CANCELLED for a cancelled call)."""
    if not logs.access_enabled():
        return
    code, details = context.code(), context.details()
    if not isinstance(code, grpc.StatusCode):
        code = (
            grpc.StatusCode.OK if error is None or isinstance(error, grpc.aio.AbortError)
            else grpc.StatusCode.UNKNOWN if isinstance(error, Exception) else grpc.StatusCode.CANCELLED
        )
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    if code is not grpc.StatusCode.OK and not details and error is not None:
        details = repr(error)
    logs.access("grpc", kind, method, model, code.name, details or None, time.perf_counter() - start)


def _model_of(request: Any) -> str | None:
    for field in ("model_name", "name"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return value
    return None


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler | None:
    name, _ = _kind(handler)
    behavior = getattr(handler, name)
    request_streaming = handler.request_streaming

    if inspect.isasyncgenfunction(behavior):

        async def stream_behavior(request: Any, context: grpc.aio.ServicerContext):
            _start(context)
            start, error = time.perf_counter(), None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                _finish(context, name, method, None if request_streaming else _model_of(request), start, error)

        return _rebuild(handler, stream_behavior)

    if inspect.iscoroutinefunction(behavior):

        async def call_behavior(request: Any, context: grpc.aio.ServicerContext):
            _start(context)
            start, error = time.perf_counter(), None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _finish(context, name, method, None if request_streaming else _model_of(request), start, error)

        return _rebuild(handler, call_behavior)

    return handler  # a synchronous handler runs in a thread pool: left as it is
