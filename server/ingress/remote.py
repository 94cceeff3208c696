"""``RemoteInferenceService``: the ``InferenceService`` interface in a frontend process,
executed by the model process over a Unix socket, tensors in shared memory (``ipc``).

- ``infer`` / ``infer_stream``: on the async channel; inputs written to this process's
  request arena, outputs copied out of its response arena. A cancelled call (the client
  went away, a stream closed early) cancels the model's task and waits (a bounded time)
  for its answer, so that a cancellation the model counted is not counted again here.
- ``load_model`` / ``unload_model``: async RPCs on the same channel.
- The synchronous methods (``model_ready``, ``model_metadata``, ``text_model``,
  ``model_config``, ``statistics``, ``repository_index``) are blocking RPCs on a second
  connection: they hold this process's event loop for one round trip (they are the
  control plane; ``model_metadata`` and ``text_model`` are cached until the model
  process reports a repository change). ``live``, ``ready``, ``shutting_down`` and
  ``server_metadata`` are local: the model process pushes its state.
- ``accounting``: admission is local (``max_inflight`` split across the frontends); a
  failure not yet counted is sent to the model process, which counts it in its registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

from server.core.errors import CANCEL_COUNTED, Unavailable
from server.core.types import InferenceRequest, InferenceResponse
from server.ingress import ipc
from server.service import Admission

CANCEL_WAIT_S = 5.0
FREE_DELAY_S = 0.005


class _Cancelled:
    __slots__ = ("counted",)

    def __init__(self, counted: bool) -> None:
        self.counted = counted


class RemoteInferenceService:
    """What ``create_app`` needs of an ``InferenceService``, for a frontend process."""

    def __init__(self, socket_path: str, index: int, segments: list[str], max_inflight: int = 0) -> None:
        self.socket_path = socket_path
        self.index = index
        self.max_inflight = max_inflight
        self._admission = Admission(max_inflight, self._count, " (this frontend process's share)")
        self._requests = ipc.Arena(ipc.attach_segment(segments[0]))
        self._responses = ipc.Arena(ipc.attach_segment(segments[1]))
        self._ids = itertools.count(1)
        self._pending: dict[int, Any] = {}  # rid -> Future (infer, call) or Queue (stream)
        self._held: dict[int, list[tuple[int, int]]] = {}  # rid -> request-arena regions
        self._release: list[tuple[int, int]] = []  # response-arena regions copied out
        self._flush: asyncio.TimerHandle | None = None
        self._state: dict = {"live": True, "ready": False, "shutting_down": False, "generation": 0}
        self._cache: dict[tuple, Any] = {}
        self._sync_lock = threading.Lock()
        self._sync: socket.socket | None = None
        self._conn: ipc.Connection | None = None
        self.version = ""
        self._server_metadata: dict = {}
        self.stopped: asyncio.Future | None = None  # result: grace seconds (stop) or None (model process gone)
        self.draining: asyncio.Event | None = None  # set when the model process starts draining

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopped = loop.create_future()
        self.draining = asyncio.Event()
        hello = loop.create_future()
        self._pending[0] = hello
        _, self._conn = await loop.create_unix_connection(
            lambda: ipc.Connection(self._on_message, self._on_lost), self.socket_path
        )
        self._conn.send(("hello", self.index, True))
        await hello
        self._sync = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sync.connect(self.socket_path)
        ipc.send_blocking(self._sync, ("hello", self.index, False))
        ipc.recv_blocking(self._sync)

    def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        if self._sync is not None:
            self._sync.close()
        self._requests.close()
        self._responses.close()

    # -- the channel ------------------------------------------------------------------

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "state":
            self._set_state(message[1])
            return
        if kind == "stop":
            if not self.stopped.done():
                self.stopped.set_result(message[1])
            return
        if kind == "hello":
            _, self._server_metadata, self.version, state = message
            self._set_state(state)
            self._pending.pop(0).set_result(None)
            return
        rid = message[1]
        held = self._held.pop(rid, None)  # the model copied the inputs out on receipt
        if held:
            for offset, nbytes in held:
                self._requests.free(offset, nbytes)
        waiter = self._pending.get(rid)
        if kind == "item":
            value = ipc.response_from(message[2], self._responses, self._release)
            self._schedule_flush()
            if waiter is not None:
                waiter.put_nowait(("item", value))
            return
        if kind == "ok" and isinstance(waiter, _InferFuture | type(None)) and isinstance(message[2], tuple):
            value = ipc.response_from(message[2], self._responses, self._release)
            self._schedule_flush()
        elif kind == "cancelled":
            value = _Cancelled(message[2])
        else:
            value = message[2] if len(message) > 2 else None
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Queue):
            waiter.put_nowait((kind, value))
            return
        del self._pending[rid]
        if waiter.done():
            return
        if kind == "err":
            waiter.set_exception(value)
        else:
            waiter.set_result(value)

    def _on_lost(self, exc: Exception | None) -> None:
        gone = Unavailable("the model process is gone", 1.0)
        for waiter in self._pending.values():
            if isinstance(waiter, asyncio.Queue):
                waiter.put_nowait(("err", gone))
            elif not waiter.done():
                waiter.set_exception(gone)
        self._pending.clear()
        self._state = {**self._state, "live": False, "ready": False}
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    def _set_state(self, state: dict) -> None:
        if state.get("generation") != self._state.get("generation"):
            self._cache.clear()
        self._state = state
        if state.get("shutting_down") and self.draining is not None:
            self.draining.set()

    def _schedule_flush(self) -> None:
        if self._flush is None and self._release:
            self._flush = asyncio.get_running_loop().call_later(FREE_DELAY_S, self._send_frees)

    def _send_frees(self) -> None:
        self._flush = None
        frees = self._take_frees()
        if frees:
            self._conn.send(("free", frees))

    def _take_frees(self) -> list[tuple[int, int]] | None:
        if not self._release:
            return None
        frees, self._release = self._release, []
        return frees

    def _call_blocking(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._sync_lock:
            if self._sync is None:
                raise Unavailable("the model process is gone", 1.0)
            rid = next(self._ids)
            try:
                ipc.send_blocking(self._sync, ("call", rid, method, args, kwargs))
                reply = ipc.recv_blocking(self._sync)
            except OSError:
                raise Unavailable("the model process is gone", 1.0) from None
        if reply[0] == "err":
            raise reply[2]
        return reply[2]

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self._conn.send(("call", rid, method, args, kwargs))
        return await future

    # -- health and metadata ----------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._state["shutting_down"]

    def live(self) -> bool:
        return self._state["live"]

    def ready(self) -> bool:
        return self._state["ready"] and not self._conn.closed

    def model_ready(self, name: str, version: str = "") -> bool:
        return self._call_blocking("model_ready", name, version)

    def server_metadata(self) -> dict:
        return self._server_metadata

    def _cached(self, method: str, *args: Any) -> Any:
        key = (method, *args)
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = self._call_blocking(method, *args)
        return value

    def model_metadata(self, name: str, version: str = ""):
        return self._cached("model_metadata", name, version)

    def text_model(self, name: str, version: str = ""):
        return self._cached("text_model", name, version)

    def model_config(self, name: str, version: str = ""):
        from server.repository.config import ModelConfig

        return ModelConfig.FromString(self._call_blocking("model_config", name, version))

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        return self._call_blocking("statistics", name, version)

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return self._call_blocking("repository_index", ready_only)

    def announce_listening(self) -> None:
        """This frontend's listeners are open (the model process reports ready once all are)."""
        self._conn.send(("listening", self.index))

    async def load_model(self, name: str, config_json: str | None = None, files: dict[str, bytes] | None = None) -> None:
        await self._call("load_model", name, config_json, files)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        await self._call("unload_model", name, unload_dependents)

    async def metrics(self) -> bytes:
        """The model process's Prometheus exposition."""
        return await self._call("metrics")

    # -- inference ----------------------------------------------------------------------

    def _submit(self, kind: str, request: InferenceRequest, waiter: Any) -> int:
        rid = next(self._ids)
        placed: list[tuple[int, int]] = []
        header = ipc.request_header(request, self._requests, placed)
        if placed:
            self._held[rid] = placed
        self._pending[rid] = waiter
        self._conn.send((kind, rid, header, self._take_frees()))
        return rid

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if self._conn.closed:
            raise Unavailable("the model process is gone", 1.0)
        future = _InferFuture(loop=asyncio.get_running_loop())
        rid = self._submit("infer", request, future)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                self._conn.send(("cancel", rid))
                await asyncio.wait([future], timeout=CANCEL_WAIT_S)
            if _model_counted(future):
                CANCEL_COUNTED.set(True)
            raise

    async def infer_stream(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        if self._conn.closed:
            raise Unavailable("the model process is gone", 1.0)
        queue: asyncio.Queue = asyncio.Queue()
        rid = self._submit("stream", request, queue)
        finished = False
        try:
            while True:
                kind, value = await queue.get()
                if kind == "item":
                    yield value
                    continue
                finished = True
                if kind == "end":
                    return
                if kind == "err":
                    raise value
                raise Unavailable("the stream was cancelled by the server", 1.0)  # "cancelled" unasked
        finally:
            if not finished:
                self._conn.send(("cancel", rid))
                counted = True
                loop = asyncio.get_running_loop()
                deadline = loop.time() + CANCEL_WAIT_S
                with contextlib.suppress(TimeoutError):
                    while loop.time() < deadline:
                        kind, value = await asyncio.wait_for(queue.get(), deadline - loop.time())
                        if kind == "item":
                            continue
                        if kind == "cancelled":
                            counted = value.counted
                        elif kind == "err":
                            counted = getattr(value, "counted", True)
                        break
                if counted:
                    CANCEL_COUNTED.set(True)
            self._pending.pop(rid, None)

    def accounting(self, model_name: str, version: str = "", admit: bool = True):
        """``InferenceService.accounting`` with this process's share of ``max_inflight``;
        a failure not yet counted is counted by the model process (one message)."""
        return self._admission.account(model_name, version, admit)

    def _count(self, model_name: str, version: str, reason: str) -> None:
        if self._conn is not None:
            self._conn.send(("count", model_name, version, reason))


class _InferFuture(asyncio.Future):
    """An infer's future: its "ok" carries a response header to copy out of the arena."""


def _model_counted(future: asyncio.Future) -> bool:
    """After a cancel: whether the model process counted the request (a cancellation it
    saw, a success or failure it answered, or no answer at all: do not count it twice)."""
    if not future.done() or future.cancelled():
        return True
    exc = future.exception()
    if exc is not None:
        return getattr(exc, "counted", True)
    result = future.result()
    return result.counted if isinstance(result, _Cancelled) else True
