"""A thread pool whose waiting work runs in priority order.

``asyncio.to_thread`` starts every call at once on the loop's default executor: CPU-bound
stages of many requests then share the cores and the GIL, so a short request's stage runs
at a fraction of its speed beside a long request's. Here at most ``threads`` calls run at
once and the rest wait in a heap ordered by (priority, arrival): a waiting call of a better
(lower) priority starts as soon as a thread frees, ahead of every waiting call of a worse
one. A call that has started is never interrupted.

A thread counts as busy until its call really returns: cancelling the awaiting coroutine
withdraws a call that has not started, and one that has started keeps its thread until it
ends, so at most ``threads`` calls ever run.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class PriorityPool:
    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError(f"a pool needs at least one thread, not {threads}")
        self._threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._running = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, turn in self._waiting if not turn.done())

    async def run(self, priority: int, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrival), turn))
        self._dispatch()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # the thread was given to us: hand it on
                self._release()
            raise
        work: Future[T] = self._executor.submit(func, *args)
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(work, loop=loop)

    def shutdown(self) -> None:
        """Stop the threads once the running calls end (no call may be waiting)."""
        self._executor.shutdown(wait=False)

    def _release(self) -> None:
        self._running -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self._running < self._threads and self._waiting:
            *_, turn = heapq.heappop(self._waiting)
            if turn.done():  # withdrawn while waiting
                continue
            self._running += 1
            turn.set_result(None)
