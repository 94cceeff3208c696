"""The grpc.aio server: ``inference.GRPCInferenceService``, ``grpc.health.v1.Health`` and
server reflection, in the same process and event loop as the HTTP server.

``serve`` calls :func:`start_grpc` after the repository has loaded. On SIGTERM it sets
``service.shutting_down`` and calls ``GrpcServer.drain()`` (health answers NOT_SERVING at
once; the port stays open and new inferences get UNAVAILABLE), waits for the inferences in
flight, then ``GrpcServer.aclose(grace_s)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server.frontends.grpc.decoding import add_guarded
from server.frontends.grpc.interceptors import ServerInterceptor
from server.frontends.grpc.servicer import InferenceServicer
from server.frontends.http.security import Authenticator
from server.service import InferenceService

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # inference.GRPCInferenceService
SHUTDOWN_GRACE_S = 5.0
HEALTH_REFRESH_S = 1.0
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth(health.aio.HealthServicer):
    """``grpc.health.v1.Health`` whose answer for "" and the inference service is the
    server's readiness at the time of the call. ``Watch`` subscribers are told of changes
    by :meth:`refresh`, which the server runs every ``HEALTH_REFRESH_S``."""

    def __init__(self, service: InferenceService) -> None:
        super().__init__()
        self._service = service

    def _status(self) -> int:
        return _SERVING if self._service.ready() else _NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest, context) -> health_pb2.HealthCheckResponse:
        if request.service in ("", SERVICE_NAME) and not self._gracefully_shutting_down:
            return health_pb2.HealthCheckResponse(status=self._status())
        return await super().Check(request, context)

    async def refresh(self) -> None:
        status = self._status()
        for name in ("", SERVICE_NAME):
            await self.set(name, status)


class GrpcServer:
    def __init__(self, server: grpc.aio.Server, health_servicer: ReadinessHealth, port: int) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port  # the bound port (useful with --grpc-port 0)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_health(), name="grpc-health")

    async def _refresh_health(self) -> None:
        while True:
            await self.health.refresh()
            await asyncio.sleep(HEALTH_REFRESH_S)

    async def drain(self) -> None:
        """The server is draining (``service.shutting_down``): tell ``Watch`` subscribers
        NOT_SERVING now rather than at the next refresh. Calls are still taken."""
        await self.health.refresh()

    async def aclose(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Answer NOT_SERVING, refuse new calls, let running ones finish within ``grace_s``
        (then they are cancelled: idle streams a client keeps open, for one)."""
        self._refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._refresher
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def server_options(settings, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Channel arguments; an oversized message is refused with RESOURCE_EXHAUSTED by gRPC itself.
    ``reuse_port``: several processes share the port (``--frontend-processes``); otherwise a
    port already taken is an error, as for HTTP."""
    limit = settings.grpc_max_message_bytes or settings.max_request_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


async def start_grpc(service: InferenceService, settings, port: int | None = None, reuse_port: bool = False) -> GrpcServer:
    """Bind ``settings.host`` and ``port`` (default ``settings.grpc_port``) and start serving."""
    interceptor = ServerInterceptor(Authenticator.from_settings(settings))  # keys, request ids, access lines
    server = grpc.aio.server(options=server_options(settings, reuse_port), interceptors=(interceptor,))
    add_guarded(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(service), server)
    health_servicer = ReadinessHealth(service)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    host = settings.host
    port = settings.grpc_port if port is None else port
    port = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    await server.start()
    log.info("gRPC inference service on %s:%d", host, port)
    return GrpcServer(server, health_servicer, port)
