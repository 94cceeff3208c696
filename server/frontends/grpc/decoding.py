"""Registering the inference service so that a message that is not valid protobuf gets
INVALID_ARGUMENT, not UNKNOWN: grpcio decodes requests before a servicer runs, and a
decoder that raises ends the call with UNKNOWN and a traceback in the log. Each handler's
decoder here returns an :class:`Undecodable` marker instead, which the wrapped behaviour
refuses with INVALID_ARGUMENT."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True, slots=True)
class Undecodable:
    message_type: str
    error: str


def _safe(decode, message_type: str):
    def decoder(data: bytes):
        try:
            return decode(data)
        except DecodeError as exc:
            return Undecodable(message_type, str(exc))

    return decoder


def _refusal(item: Undecodable) -> str:
    return f"the request is not a valid {item.message_type} message: {item.error}"


def _guard(handler: grpc.RpcMethodHandler, message_type: str) -> grpc.RpcMethodHandler:
    decode = _safe(handler.request_deserializer, message_type)
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request, context):
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(request))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, decode, handler.response_serializer)
    if handler.stream_stream is not None:
        inner_stream = handler.stream_stream

        async def streaming(requests, context):
            async def checked():
                async for request in requests:
                    if isinstance(request, Undecodable):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(request))
                    yield request

            async for response in inner_stream(checked(), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(streaming, decode, handler.response_serializer)
    return handler


class _Registrar:
    """Stands in for the server while the generated code registers its handlers."""

    def __init__(self, server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the registered handlers below are the same methods; they are added once, guarded

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        guarded = {name: _guard(h, name + "Request") for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        self._server.add_registered_method_handlers(service, guarded)


def add_guarded(add_servicer, servicer, server) -> None:
    """``add_servicer(servicer, server)`` (generated ``add_*Servicer_to_server``), with every
    method's decoding guarded."""
    add_servicer(servicer, _Registrar(server))
