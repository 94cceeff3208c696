"""The model process of ``--frontend-processes N``: it owns the repository, the batchers
and the runtimes (one ``InferenceService``), serves ``--metrics-port`` itself, reserves
the HTTP and gRPC ports, and runs an IPC server on a Unix socket that executes the
``InferenceService`` calls of N frontend processes (``server/ingress/frontend.py``), each
serving HTTP and gRPC.

Messages a frontend sends (``ipc`` framing) and what this side answers:

- ``("hello", index)`` -> ``("hello", server_metadata, version, state)``
- ``("infer", rid, header, frees)`` -> ``("ok", rid, response header)`` | ``("err", rid, exc)``
  | ``("cancelled", rid, counted)`` (after a ``cancel``: whether the model counted it)
- ``("stream", rid, header, frees)`` -> ``("item", rid, header)``* then ``("end", rid)``
  | ``("err", rid, exc)`` | ``("cancelled", rid, counted)``
- ``("cancel", rid)``: the client went away (or the stream was closed early)
- ``("call", rid, method, args, kwargs)`` -> ``("ok", rid, result)`` | ``("err", rid, exc)``:
  the other ``InferenceService`` methods, and ``metrics`` (the registry's exposition)
- ``("count", model, version, reason)``: a failure the frontend's ``accounting`` counted
- ``("free", frees)``: response-arena regions the frontend has copied out
- ``("listening", index)``: the frontend's listeners are open; the server is ready once
  every frontend has said so (and its models are)

and, unasked, ``("state", state)`` whenever readiness / draining / the repository changes
and ``("stop", grace_s)`` at shutdown.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import multiprocessing
import os
import pickle
import shutil
import socket
import tempfile
from contextlib import aclosing
from typing import Any

from prometheus_client import generate_latest

from server.core.errors import CANCEL_COUNTED
from server.ingress import ipc
from server.service import InferenceService
from server.settings import Settings

log = logging.getLogger("deepserve.ingress")

STATE_POLL_S = 0.05
SYNC_METHODS = frozenset({
    "live", "ready", "model_ready", "server_metadata", "model_metadata", "text_model", "model_config",
    "statistics", "repository_index",
})
ASYNC_METHODS = frozenset({"load_model", "unload_model"})


def _picklable_error(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc, protocol=5)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _portable_text_model(text):
    codec = copy.copy(text.codec)
    codec.__dict__.pop("_chat", None)  # a jinja2 Template (a cached_property) does not pickle
    return dataclasses.replace(text, codec=codec)


class _Peer:
    """One connection from a frontend process (its async channel or its blocking one)."""

    def __init__(self, side: ModelSide) -> None:
        self.side = side
        self.service = side.service
        self.conn = ipc.Connection(self.on_message, self.on_lost)
        self.index = -1
        self.tasks: dict[int, asyncio.Task] = {}
        self.requests: ipc.Arena | None = None
        self.responses: ipc.Arena | None = None

    # -- receiving -----------------------------------------------------------------

    def on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "infer" or kind == "stream":
            _, rid, header, frees = message
            self._free(frees)
            try:
                request = ipc.request_from(header, self.requests)  # copied out of the arena here
            except Exception as exc:  # noqa: BLE001 - a malformed header is this server's bug
                self.send_error(rid, exc)
                return
            work = self._infer(rid, request) if kind == "infer" else self._stream(rid, request)
            self.tasks[rid] = asyncio.ensure_future(work)
        elif kind == "cancel":
            task = self.tasks.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "call":
            _, rid, method, args, kwargs = message
            if method in SYNC_METHODS or method == "metrics":
                try:
                    if method == "metrics":
                        result = generate_latest(self.side.registry)
                    elif method == "model_config":  # a protobuf message: pickled as its bytes
                        result = self.service.model_config(*args, **kwargs).SerializeToString()
                    elif method == "text_model":  # without the compiled chat template (rebuilt there)
                        result = _portable_text_model(self.service.text_model(*args, **kwargs))
                    else:
                        result = getattr(self.service, method)(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - the caller re-raises it
                    self.send_error(rid, exc)
                else:
                    self._send_result(rid, result)
            elif method in ASYNC_METHODS:
                self.tasks[rid] = asyncio.ensure_future(self._call(rid, method, args, kwargs))
            else:
                self.send_error(rid, AttributeError(f"no such service method: {method}"))
        elif kind == "count":
            _, model, version, reason = message
            self.service.repository.count_refused(model, version, reason)
        elif kind == "free":
            self._free(message[1])
        elif kind == "listening":
            self.side.listening.add(message[1])
            self.side.broadcast_state()
        elif kind == "hello":
            self.index = message[1]
            self.requests, self.responses = self.side.arenas[self.index]
            if message[2]:  # the frontend's async channel: it gets states and the stop
                self.side.peers.add(self)
            self.conn.send(("hello", self.service.server_metadata(), self.service.version, self.side.state()))

    def on_lost(self, exc: Exception | None) -> None:
        self.side.peers.discard(self)
        for task in list(self.tasks.values()):
            task.cancel()

    def _free(self, frees) -> None:
        if frees:
            for offset, nbytes in frees:
                self.responses.free(offset, nbytes)

    # -- answering -------------------------------------------------------------------

    def send(self, message: tuple) -> None:
        self.conn.send(message)

    def send_error(self, rid: int, exc: BaseException) -> None:
        self.conn.send(("err", rid, _picklable_error(exc)))

    def _send_result(self, rid: int, result: Any) -> None:
        try:
            self.conn.send(("ok", rid, result))
        except Exception as exc:  # noqa: BLE001 - an unpicklable result (a tokenizer, ...)
            self.send_error(rid, RuntimeError(f"the result cannot cross to a frontend process: {exc}"))

    async def _infer(self, rid: int, request) -> None:
        try:
            response = await self.service.infer(request)
            placed: list = []
            self.conn.send(("ok", rid, ipc.response_header(response, self.responses, placed)))
        except asyncio.CancelledError:
            self.conn.send(("cancelled", rid, CANCEL_COUNTED.get()))
        except Exception as exc:  # noqa: BLE001 - the frontend maps it as it would in-process
            if not hasattr(exc, "reason"):
                log.error("infer on %s failed", request.model_name, exc_info=exc)
            self.send_error(rid, exc)
        finally:
            self.tasks.pop(rid, None)

    async def _stream(self, rid: int, request) -> None:
        try:
            async with aclosing(self.service.infer_stream(request)) as responses:
                async for response in responses:
                    placed: list = []
                    self.conn.send(("item", rid, ipc.response_header(response, self.responses, placed)))
            self.conn.send(("end", rid))
        except asyncio.CancelledError:
            self.conn.send(("cancelled", rid, CANCEL_COUNTED.get()))
        except Exception as exc:  # noqa: BLE001
            if not hasattr(exc, "reason"):
                log.error("stream on %s failed", request.model_name, exc_info=exc)
            self.send_error(rid, exc)
        finally:
            self.tasks.pop(rid, None)

    async def _call(self, rid: int, method: str, args, kwargs) -> None:
        try:
            result = await getattr(self.service, method)(*args, **kwargs)
        except asyncio.CancelledError:
            self.send_error(rid, RuntimeError("cancelled"))
        except Exception as exc:  # noqa: BLE001
            self.send_error(rid, exc)
        else:
            self._send_result(rid, result)
        finally:
            self.tasks.pop(rid, None)


class ModelSide:
    """The IPC server: a Unix socket in a private temp folder and two shared-memory arenas
    per frontend process (created here, unlinked by :meth:`close`)."""

    def __init__(self, service: InferenceService, registry, frontends: int) -> None:
        self.service = service
        self.registry = registry
        _check_shm_space(2 * frontends * ipc.ARENA_BYTES)
        self.folder = tempfile.mkdtemp(prefix="deepserve-ingress-")
        self.path = os.path.join(self.folder, "model.sock")
        self.segments = [(ipc.create_segment(), ipc.create_segment()) for _ in range(frontends)]
        self.arenas = [(ipc.Arena(a), ipc.Arena(b)) for a, b in self.segments]
        self.peers: set[_Peer] = set()
        self.frontends = frontends
        self.listening: set[int] = set()  # frontends whose listeners are open
        self._server: asyncio.AbstractServer | None = None
        self._watcher: asyncio.Task | None = None
        self._last_state: dict | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Peer(self).conn, self.path)
        self._watcher = asyncio.create_task(self._watch())

    def state(self) -> dict:
        repository = self.service.repository
        try:
            generation = hash(repr(repository.index()))
        except Exception:  # noqa: BLE001 - a repository mid-change: try again next poll
            generation = 0
        ready = self.service.ready() and len(self.listening) == self.frontends
        return {"live": self.service.live(), "ready": ready,
                "shutting_down": self.service.shutting_down, "generation": generation}

    def broadcast_state(self) -> None:
        state = self.state()
        if state != self._last_state:
            self._last_state = state
            for peer in list(self.peers):
                peer.send(("state", state))

    async def _watch(self) -> None:
        while True:
            self.broadcast_state()
            await asyncio.sleep(STATE_POLL_S)

    def stop_frontends(self, grace_s: float) -> None:
        self.broadcast_state()
        for peer in list(self.peers):
            peer.send(("stop", grace_s))

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._server is not None:
            self._server.close()
        for peer in list(self.peers):
            if peer.conn.transport is not None:
                peer.conn.transport.close()
        for arenas in self.arenas:
            for arena in arenas:
                arena.buf = None
        for pair in self.segments:
            for shm in pair:
                try:
                    shm.close()
                except BufferError:  # a view still alive somewhere: unlinking is what matters
                    pass
                shm.unlink()
        shutil.rmtree(self.folder, ignore_errors=True)


def _check_shm_space(needed: int) -> None:
    """Segments are sparse: a /dev/shm too small for them (Docker's default is 64 MiB) would
    kill a process with SIGBUS when an arena fills up, not fail here. Refuse to start instead."""
    try:
        vfs = os.statvfs("/dev/shm")
    except OSError:
        return
    free = vfs.f_bavail * vfs.f_frsize
    if free < needed:
        raise SystemExit(
            f"--frontend-processes needs {needed / 2**20:.0f} MiB of shared memory (/dev/shm) for its arenas and "
            f"{free / 2**20:.0f} MiB are free: give the container more (docker run --shm-size) or set "
            "DEEPSERVE_INGRESS_ARENA_BYTES lower (arrays that do not fit travel over the socket)"
        )


# -- the process model ---------------------------------------------------------------------


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) the HTTP port with SO_REUSEPORT, so that port 0 becomes one port
    every frontend joins, and no other program takes it meanwhile."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


async def serve_multiprocess(settings: Settings) -> None:
    """``server.serve.serve`` with the HTTP frontend in ``settings.frontend_processes``
    processes; the same drain (module docstring of ``server/serve.py``)."""
    from server.ingress.frontend import run_frontend
    from server.serve import (
        CLOSE_GRACE_S,
        _drain,
        build_service,
        grpc_available,
        shutdown_signals,
        start_side_servers,
        unload_and_check,
    )

    count = settings.frontend_processes
    service, metrics = build_service(settings)
    await service.repository.load_all()
    side = ModelSide(service, metrics.registry, count)
    await side.start()
    reserved = [reserve_port(settings.host, settings.http_port)]
    port = reserved[0].getsockname()[1]
    grpc_port = None
    if grpc_available(settings):  # gRPC is served by the frontends too, on a port they share
        reserved.append(reserve_port(settings.host, settings.grpc_port))
        grpc_port = reserved[1].getsockname()[1]
    share = -(-settings.max_inflight // count) if settings.max_inflight else 0  # each frontend's admission limit
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=run_frontend, name=f"deepserve-frontend-{i}", daemon=False,
            args=(settings, i, side.path, [s.name for s in side.segments[i]], port, grpc_port, share),
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()
    log.info("model process %d: %d frontend processes on HTTP port %d%s", os.getpid(), count, port,
             "" if grpc_port is None else f" and gRPC port {grpc_port}")
    servers, _ = await start_side_servers(service, settings, metrics, grpc=False)

    loop = asyncio.get_running_loop()
    stop, hurry = shutdown_signals()
    died = asyncio.Event()

    def on_exit(process) -> None:
        loop.remove_reader(process.sentinel)
        if not stop.is_set() and not died.is_set():
            log.error("frontend process %s exited (code %s): shutting the server down", process.name, process.exitcode)
            died.set()

    for process in processes:
        loop.add_reader(process.sentinel, on_exit, process)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(died.wait())]
    await asyncio.wait([*waiters, *tasks], return_when=asyncio.FIRST_COMPLETED)
    deadline = loop.time() + settings.drain_timeout_seconds
    service.shutting_down = True
    side.broadcast_state()
    if stop.is_set():
        await _drain(service, None, settings, hurry, deadline)  # the frontends drain their gRPC servers
    if hurry.is_set():
        deadline = loop.time()
    log.info("shutting down: closing the listeners")
    remaining = max(deadline - loop.time(), CLOSE_GRACE_S)
    side.stop_frontends(remaining)
    for s in servers:
        s.config.timeout_graceful_shutdown = remaining
        s.should_exit = True
    await _join(processes, remaining + CLOSE_GRACE_S)
    for sock in reserved:
        sock.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    for waiter in waiters:
        waiter.cancel()
    await side.close()
    await unload_and_check(service, tasks, deadline)
    if died.is_set() and not stop.is_set():
        raise SystemExit(1)


async def _join(processes, timeout_s: float) -> None:
    """Wait for the frontends to exit; terminate, then kill, the ones that do not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(p.is_alive() for p in processes) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for process in processes:
        if process.is_alive():
            log.warning("frontend process %s did not stop in time: terminating it", process.name)
            process.kill()
    for process in processes:
        process.join(timeout=5)
