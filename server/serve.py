"""Builds the object graph (repository -> service -> frontends) and runs it in one loop.

Shutdown (SIGTERM or SIGINT) is a drain, bounded by ``--drain-timeout-seconds`` counted
from the signal:

1. At once: not ready (HTTP ``/v2/health/ready`` 400, gRPC ``ServerReady`` false and
   health NOT_SERVING; liveness stays true). New inferences are answered 503 with
   ``Retry-After`` (gRPC UNAVAILABLE) and HTTP responses carry ``Connection: close``, so
   kept-alive clients reconnect through their load balancer. The listeners stay open.
2. For ``--drain-seconds`` (the drain period; 0 = none) nothing else happens, so load
   balancers see the readiness change and move away.
3. Then, once every inference in flight (streams included) has been answered in full, or
   at the drain timeout, whichever is first: inferences still running are answered 503
   (UNAVAILABLE), the listeners close, the models are unloaded, and the process exits 0.

A second SIGTERM / SIGINT during the drain ends it at once: the rest of the drain period is
skipped and requests still running are answered 503 (step 3 without the wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import uvicorn

from server import __version__
from server.frontends.http.app import create_app, create_metrics_app
from server.observability.logs import setup_logging
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


# After the drain: how long aborted requests get to send their 503s and idle gRPC streams are
# kept, and the least time given to closing, whatever is left of the drain timeout.
CLOSE_GRACE_S = 1.0


class _CloseWhenDraining:
    """ASGI wrapper: while the server drains, every HTTP response carries
    ``Connection: close``, so a client on a kept-alive connection reconnects (through its
    load balancer, to another replica) instead of coming back here."""

    def __init__(self, app, service: InferenceService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive, send) -> None:
        if not self.service.shutting_down or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


def build_service(settings: Settings) -> tuple[InferenceService, Metrics]:
    metrics = Metrics()
    options = LoadOptions(
        default_max_batch_size=settings.default_max_batch_size,
        default_max_queue_size=settings.default_max_queue_size,
        cpu_threads=settings.cpu_threads,
    )
    repository = ModelRepository(
        settings.model_repository.resolve(), options, metrics,
        settings.memory_budget_bytes, settings.on_demand_load_timeout_seconds,
    )
    return InferenceService(repository, __version__, settings.strict_readiness, settings.max_inflight), metrics


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
        # JSON lines: uvicorn's loggers go through the root handler instead of its own text ones
        **({"log_config": None} if settings.log_format == "json" else {}),
    )
    return _Server(config)


def grpc_available(settings: Settings) -> bool:
    """gRPC is on and this build has its packages."""
    if not settings.grpc_enabled:
        return False
    try:
        import server.frontends.grpc.server  # noqa: F401
    except ImportError:
        log.warning("gRPC frontend is not available in this build")
        return False
    return True


async def start_side_servers(
    service, settings: Settings, metrics, grpc: bool = True
) -> tuple[list[_Server], object | None]:
    """The servers beside the HTTP one, in the model process: ``--metrics-port`` and (unless
    ``grpc`` is false: the frontend processes serve it) gRPC."""
    servers = []
    if settings.metrics_port is not None:
        servers.append(_uvicorn(create_metrics_app(metrics.registry), settings, settings.metrics_port))
    grpc_server = None
    if grpc and grpc_available(settings):
        from server.frontends.grpc.server import start_grpc

        grpc_server = await start_grpc(service, settings)
    return servers, grpc_server


async def serve(settings: Settings) -> None:
    if settings.frontend_processes > 0:  # HTTP in N processes of its own (server/ingress)
        from server.ingress.model_side import serve_multiprocess

        return await serve_multiprocess(settings)
    service, metrics = build_service(settings)
    await service.repository.load_all()
    app = _CloseWhenDraining(create_app(service, settings, metrics.registry), service)
    servers = [_uvicorn(app, settings, settings.http_port)]
    more, grpc_server = await start_side_servers(service, settings, metrics)
    servers += more

    loop = asyncio.get_running_loop()
    stop, hurry = shutdown_signals()
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    deadline = loop.time() + settings.drain_timeout_seconds
    service.shutting_down = True
    if stop.is_set():  # a signal: drain; a server that stopped by itself: close at once
        await _drain(service, grpc_server, settings, hurry, deadline)
    if hurry.is_set():
        deadline = loop.time()  # closing gets CLOSE_GRACE_S per step, no more
    log.info("shutting down: closing the listeners")
    remaining = max(deadline - loop.time(), CLOSE_GRACE_S)
    for s in servers:
        s.config.timeout_graceful_shutdown = remaining  # requests still being read, then 503
        s.should_exit = True
    if grpc_server is not None:
        await grpc_server.aclose(CLOSE_GRACE_S)  # only idle streams and instant calls are left
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    await unload_and_check(service, tasks, deadline)


def shutdown_signals() -> tuple[asyncio.Event, asyncio.Event]:
    """SIGINT / SIGTERM set ``stop`` (drain); a second one sets ``hurry`` (end the drain now)."""
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            stop.set()
        elif not hurry.is_set():
            log.warning("%s during the drain: ending it now", sig.name)
            hurry.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop, hurry


async def unload_and_check(service: InferenceService, tasks, deadline: float) -> None:
    """The last step of a shutdown: unload the models (until the drain deadline, at least
    CLOSE_GRACE_S), then raise what a server task raised."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(service.repository.aclose(), max(deadline - loop.time(), CLOSE_GRACE_S))
    except TimeoutError:
        log.warning("the models did not unload before the drain timeout; exiting without waiting for them")
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise task.exception()


async def _drain(
    service: InferenceService, grpc_server, settings: Settings, hurry: asyncio.Event, deadline: float
) -> None:
    """Steps 1-3 of the module docstring, up to closing the listeners."""
    loop = asyncio.get_running_loop()
    if grpc_server is not None:
        await grpc_server.drain()
    log.info(
        "draining: not ready, new requests get 503 for %.1f s; %d in flight have up to %.1f s",
        min(settings.drain_seconds, settings.drain_timeout_seconds), service.inflight, settings.drain_timeout_seconds,
    )
    hurried = asyncio.ensure_future(hurry.wait())
    idle = asyncio.ensure_future(service.wait_idle())
    try:
        period_end = min(loop.time() + settings.drain_seconds, deadline)
        if period_end > loop.time():
            await asyncio.wait([hurried], timeout=period_end - loop.time())
        if not hurried.done():
            await asyncio.wait([hurried, idle], timeout=max(deadline - loop.time(), 0), return_when=asyncio.FIRST_COMPLETED)
        if not idle.done():
            count = service.abort_inflight()
            why = "a second signal" if hurried.done() else "the drain timeout"
            log.warning("draining: %d request(s) still running at %s: answering them 503", count, why)
            await asyncio.wait([idle], timeout=CLOSE_GRACE_S)
    finally:
        hurried.cancel()
        idle.cancel()


# numpy's OpenBLAS starts a thread per core that spins for a while after every matrix
# product (the log-mel projection of each audio chunk, for one): beside a transcription it
# burned about a core that ONNX Runtime's threads needed. The server's parallelism is across
# requests and runtime instances, so numpy works on the calling thread, unless the operator
# set a count in the environment.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads() -> None:
    if any(os.environ.get(name) for name in BLAS_THREAD_VARIABLES):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def run(settings: Settings) -> None:
    setup_logging(settings.log_level, settings.log_format)
    limit_blas_threads()
    import uvloop

    uvloop.run(serve(settings))
