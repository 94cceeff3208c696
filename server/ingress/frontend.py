"""A frontend process of ``--frontend-processes N``: the HTTP app (``create_app``, the
same routes and fast path as the single-process server) and the gRPC server
(``start_grpc``, the same servicer) over a ``RemoteInferenceService``, each on its own
SO_REUSEPORT listening socket of the shared port (the kernel spreads connections across
the N processes).

Once both listeners are open it tells the model process, which reports the server ready
when every frontend has (so no connection made after readiness lands on a partial set of
processes). It ignores SIGINT / SIGTERM: the model process decides. When the model process starts
draining, gRPC health turns NOT_SERVING at once. It stops when the model process says so
(``stop``: the listeners close, requests still being handled get the grace it gives),
and exits at once when the model process goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from server.ingress.remote import RemoteInferenceService
from server.settings import Settings

log = logging.getLogger("deepserve.ingress")


class _ProxyMetrics:
    """ASGI wrapper: ``GET /metrics`` answers the model process's registry."""

    def __init__(self, app, service: RemoteInferenceService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = await self.service.metrics()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def run_frontend(
    settings: Settings, index: int, socket_path: str, segments: list[str], port: int, grpc_port: int | None,
    max_inflight: int,
) -> None:
    """The process's entry point (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from server.observability.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    import uvloop

    code = uvloop.run(_serve(settings, index, socket_path, segments, port, grpc_port, max_inflight))
    logging.shutdown()
    os._exit(code)


async def _serve(
    settings: Settings, index: int, socket_path: str, segments: list[str], port: int, grpc_port: int | None,
    max_inflight: int,
) -> int:
    from server.frontends.http.app import create_app
    from server.serve import CLOSE_GRACE_S, _CloseWhenDraining, _uvicorn

    service = RemoteInferenceService(socket_path, index, segments, max_inflight)
    await service.connect()
    app = _ProxyMetrics(_CloseWhenDraining(create_app(service, settings, CollectorRegistry()), service), service)
    server = _uvicorn(app, settings, port)
    sock = listening_socket(settings.host, port)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    grpc_server = watcher = None
    if grpc_port is not None:
        from server.frontends.grpc.server import start_grpc

        grpc_server = await start_grpc(service, settings, port=grpc_port, reuse_port=True)
        watcher = asyncio.create_task(_drain_grpc_when_told(service, grpc_server))
    service.announce_listening()
    await asyncio.wait([serving, service.stopped], return_when=asyncio.FIRST_COMPLETED)
    if watcher is not None:
        watcher.cancel()
    if serving.done():  # uvicorn stopped by itself (it could not start)
        if grpc_server is not None:
            await grpc_server.aclose(0)
        service.close()
        return 1
    grace = service.stopped.result()
    if grace is None:
        log.error("frontend %d: the model process is gone; exiting", index)
        server.force_exit = True
        server.should_exit = True
        closing = [serving] if grpc_server is None else [serving, asyncio.ensure_future(grpc_server.aclose(0))]
        await asyncio.wait(closing, timeout=2.0)
        return 1
    server.config.timeout_graceful_shutdown = grace
    server.should_exit = True
    if grpc_server is not None:  # only idle streams and instant calls are left: the drain is over
        await grpc_server.aclose(min(grace, CLOSE_GRACE_S))
    await serving
    service.close()
    return 0


async def _drain_grpc_when_told(service: RemoteInferenceService, grpc_server) -> None:
    await service.draining.wait()
    await grpc_server.drain()
