"""Builds the object graph (repository -> service -> frontends) and runs it in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from server import __version__
from server.frontends.http.app import create_app, create_metrics_app
from server.observability.metrics import Metrics
from server.repository.manager import ModelRepository
from server.repository.model import LoadOptions
from server.service import InferenceService
from server.settings import Settings

log = logging.getLogger("deepserve")


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: ``serve`` stops every server together."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def build_service(settings: Settings) -> tuple[InferenceService, Metrics]:
    metrics = Metrics()
    options = LoadOptions(
        default_max_batch_size=settings.default_max_batch_size,
        default_max_queue_size=settings.default_max_queue_size,
        cpu_threads=settings.cpu_threads,
    )
    repository = ModelRepository(settings.model_repository.resolve(), options, metrics)
    return InferenceService(repository, __version__, settings.strict_readiness), metrics


def _uvicorn(app, settings: Settings, port: int) -> _Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return _Server(config)


async def serve(settings: Settings) -> None:
    service, metrics = build_service(settings)
    await service.repository.load_all()
    servers = [_uvicorn(create_app(service, settings, metrics.registry), settings, settings.http_port)]
    if settings.metrics_port is not None:
        servers.append(_uvicorn(create_metrics_app(metrics.registry), settings, settings.metrics_port))
    grpc_server = None
    if settings.grpc_enabled:
        try:
            from server.frontends.grpc.server import start_grpc
        except ImportError:
            log.warning("gRPC frontend is not available in this build")
        else:
            grpc_server = await start_grpc(service, settings)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down")
    service.shutting_down = True
    for s in servers:
        s.should_exit = True
    if grpc_server is not None:
        await grpc_server.aclose()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    await service.repository.aclose()
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise task.exception()


def run(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvloop

    uvloop.run(serve(settings))
