"""``inference.GRPCInferenceService``: a thin translation layer over :class:`InferenceService`.

Every RPC decodes with :mod:`.codec`, calls the service, encodes back; core errors become
gRPC statuses in :func:`.errors.status_for` (one place). The servicer knows nothing
about batching or runtimes: a cancelled call cancels its ``service.infer`` task, and the
batcher drops the request from its queue before it reaches a runtime.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server.core.errors import DeepserveError, Unavailable, Unsupported
from server.core.types import InferenceRequest
from server.core.validation import check_version
from server.frontends.grpc import codec
from server.frontends.grpc.errors import status_for
from server.service import InferenceService

log = logging.getLogger(__name__)

# Requests of one stream that may be decoded and in flight at once; past this the reader
# stops pulling, and HTTP/2 flow control pushes back on the client.
STREAM_MAX_IN_FLIGHT = 1024


def _rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Run a unary RPC; a raised error ends the call with its mapped status."""

    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # CancelledError is a BaseException: it passes through
            code, details = status_for(exc)
            if not isinstance(exc, DeepserveError):
                log.exception("gRPC %s failed", method.__name__)
            await context.abort(code, details)

    return wrapper


def _unsupported(what: str) -> Unsupported:
    return Unsupported(f"{what} is not supported by deepserve; {_HINTS.get(what, 'use the HTTP endpoint instead')}")


_HINTS = {
    "system shared memory": "send tensors in the request (raw_input_contents)",
    "CUDA shared memory": "send tensors in the request (raw_input_contents)",
    "trace settings": "tracing is configured with server flags",
    "log settings": "set the log level with --log-level",
}


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    # -- health: false, never an error, when not ready ---------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._service.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    # -- metadata --------------------------------------------------------------------

    @_rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        meta = self._service.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    @_rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        m = self._service.model_metadata(request.name, check_version(request.version))
        return codec.metadata_response(m.name, m.versions, m.platform, m.inputs, m.outputs)

    @_rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._service.model_config(request.name, check_version(request.version)))

    @_rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        return codec.statistics_response(self._service.statistics(request.name, check_version(request.version)))

    # -- repository ------------------------------------------------------------------

    @_rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        return codec.index_response(self._service.repository_index(request.ready))

    @_rpc
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context) -> pb.RepositoryModelLoadResponse:
        config, files = codec.load_parameters(request.parameters)
        await self._service.load_model(request.model_name, config, files or None)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context
    ) -> pb.RepositoryModelUnloadResponse:
        dependents = request.parameters.get("unload_dependents")
        await self._service.unload_model(request.model_name, dependents is not None and dependents.bool_param)
        return pb.RepositoryModelUnloadResponse()

    # -- inference -------------------------------------------------------------------

    @_rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        with self._service.accounting(request.model_name, request.model_version):
            return codec.encode_response(await self._service.infer(self._decode(request, context)))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently (so they can batch). Responses of unary models go out in
        request order; a decoupled model's responses go out as they are produced, between
        the others (clients match them by request id, as with Triton).

        A request's failure is one response with ``error_message``; the stream stays open.
        ::

            reader:    msg0 msg1 msg2 ...  -> one task each; a unary one gets a channel, queued in order
            forwarder: drain channel0 until its end marker, then channel1, ... -> out
            decoupled tasks --------------------------------------------------------> out
            writer:    out -> the client
        """
        out: asyncio.Queue = asyncio.Queue()
        order: asyncio.Queue[asyncio.Queue | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)
        tasks: set[asyncio.Task] = set()

        async def read() -> None:
            try:
                async for message in request_iterator:
                    await slots.acquire()
                    request, decoupled = self._decode_for_stream(message, context)
                    channel: asyncio.Queue = out if decoupled else asyncio.Queue()
                    task = asyncio.create_task(self._stream_one(message, request, decoupled, channel))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    if decoupled:
                        task.add_done_callback(lambda _: slots.release())
                    else:
                        order.put_nowait(channel)
            finally:
                order.put_nowait(None)

        async def forward() -> None:
            while (channel := await order.get()) is not None:
                while (item := await channel.get()) is not None:
                    out.put_nowait(item)
                slots.release()

        async def finish() -> None:
            try:
                await reader
            finally:
                await forwarder
                await asyncio.gather(*tasks, return_exceptions=True)
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        forwarder = asyncio.create_task(forward())
        finisher = asyncio.create_task(finish())
        try:
            while (item := await out.get()) is not None:
                yield item
            await finisher  # a broken request stream ends the call with its error
        finally:
            for task in (reader, forwarder, finisher, *tasks):
                task.cancel()

    def _decode_for_stream(self, message: pb.ModelInferRequest, context) -> tuple[InferenceRequest | Exception, bool]:
        """The request (or why it cannot be run) and whether its model is decoupled."""
        try:
            request = self._decode(message, context)
            return request, self._decoupled(request)
        except Exception as exc:  # answered in band, in request order
            return exc, False

    async def _stream_one(
        self, message: pb.ModelInferRequest, request: InferenceRequest | Exception, decoupled: bool, channel: asyncio.Queue
    ) -> None:
        """All responses of one stream request into ``channel`` (then ``None`` for a unary one)."""
        try:
            with self._service.accounting(message.model_name, message.model_version):
                if isinstance(request, Exception):
                    raise request
                enable_empty_final = bool(request.parameters.pop(codec.ENABLE_EMPTY_FINAL, False))
                async for response in self._service.infer_stream(request):
                    # Non-decoupled: one response, which is the final one.
                    final = (not decoupled) if enable_empty_final else None
                    channel.put_nowait(pb.ModelStreamInferResponse(infer_response=codec.encode_response(response, final)))
                if decoupled and enable_empty_final:
                    channel.put_nowait(pb.ModelStreamInferResponse(infer_response=codec.empty_final_response(request)))
        except Exception as exc:
            code, details = status_for(exc)
            if not isinstance(exc, DeepserveError):
                log.exception("a ModelStreamInfer request failed")
            error = pb.ModelStreamInferResponse(error_message=f"{code.name}: {details}")
            error.infer_response.id = message.id  # which request failed, for clients with several in flight
            channel.put_nowait(error)
        finally:
            if not decoupled:
                channel.put_nowait(None)

    def _decode(self, message: pb.ModelInferRequest, context) -> InferenceRequest:
        """The request, with the call's gRPC deadline as its own: work the client will no
        longer wait for is never run (a stream's deadline covers each of its requests)."""
        if self._service.shutting_down:
            raise Unavailable("the server is shutting down; retry on another replica", retry_after_s=1.0)
        request = codec.decode_request(message)
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:
            request.deadline_s = time.monotonic() + remaining
        return request

    def _decoupled(self, request: InferenceRequest) -> bool:
        return self._service.model_metadata(request.model_name, request.model_version).decoupled

    # -- not implemented: UNIMPLEMENTED with a reason ----------------------------------

    @_rpc
    async def SystemSharedMemoryStatus(self, request, context):
        raise _unsupported("system shared memory")

    @_rpc
    async def SystemSharedMemoryRegister(self, request, context):
        raise _unsupported("system shared memory")

    @_rpc
    async def SystemSharedMemoryUnregister(self, request, context):
        raise _unsupported("system shared memory")

    @_rpc
    async def CudaSharedMemoryStatus(self, request, context):
        raise _unsupported("CUDA shared memory")

    @_rpc
    async def CudaSharedMemoryRegister(self, request, context):
        raise _unsupported("CUDA shared memory")

    @_rpc
    async def CudaSharedMemoryUnregister(self, request, context):
        raise _unsupported("CUDA shared memory")

    @_rpc
    async def TraceSetting(self, request, context):
        raise _unsupported("trace settings")

    @_rpc
    async def LogSettings(self, request, context):
        raise _unsupported("log settings")

