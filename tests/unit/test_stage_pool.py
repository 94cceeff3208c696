"""The priority pool: waiting calls start best priority first, at most ``threads`` run, and a
withdrawn call gives its place back. Calls block on threading events, so the order is set
by the test, not by timing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.scheduling.stage_pool import PriorityPool


class Blocker:
    """A call that records its start, then waits until the test lets it finish."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()

    def __call__(self, name: str) -> str:
        with self.lock:
            self.started.append(name)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.release.setdefault(name, threading.Event()).wait(10)
        with self.lock:
            self.running -= 1
        return name.upper()

    def let(self, name: str) -> None:
        self.release.setdefault(name, threading.Event()).set()

    async def started_reach(self, n: int) -> None:
        while len(self.started) < n:
            await asyncio.sleep(0.001)


async def test_waiting_calls_start_best_priority_first_then_in_arrival_order() -> None:
    pool, calls = PriorityPool(1, "test"), Blocker()
    first = asyncio.ensure_future(pool.run(1, calls, "long-1"))
    await calls.started_reach(1)
    queued = [asyncio.ensure_future(pool.run(p, calls, n))
              for p, n in [(1, "long-2"), (1, "long-3"), (0, "short-a"), (0, "short-b")]]
    await asyncio.sleep(0)
    assert pool.waiting == 4
    for name in ["long-1", "short-a", "short-b", "long-2", "long-3"]:
        calls.let(name)
    assert await first == "LONG-1"
    assert [await q for q in queued] == ["LONG-2", "LONG-3", "SHORT-A", "SHORT-B"]
    # the running call is never interrupted; of the waiting ones, priority 0 went first
    assert calls.started == ["long-1", "short-a", "short-b", "long-2", "long-3"]
    assert calls.most_running == 1
    pool.shutdown()


async def test_no_more_than_threads_calls_run_at_once() -> None:
    pool, calls = PriorityPool(2, "test"), Blocker()
    tasks = [asyncio.ensure_future(pool.run(0, calls, f"c{i}")) for i in range(6)]
    await calls.started_reach(2)
    await asyncio.sleep(0.01)
    assert len(calls.started) == 2 and pool.waiting == 4
    for i in range(6):
        calls.let(f"c{i}")
    assert await asyncio.gather(*tasks) == [f"C{i}" for i in range(6)]
    assert calls.most_running == 2
    pool.shutdown()


async def test_a_withdrawn_call_never_runs_and_a_cancelled_running_call_keeps_its_thread() -> None:
    pool, calls = PriorityPool(1, "test"), Blocker()
    running = asyncio.ensure_future(pool.run(0, calls, "running"))
    await calls.started_reach(1)
    withdrawn = asyncio.ensure_future(pool.run(0, calls, "withdrawn"))
    after = asyncio.ensure_future(pool.run(1, calls, "after"))
    await asyncio.sleep(0)
    withdrawn.cancel()
    running.cancel()  # its call has started: the thread stays busy until it returns
    await asyncio.sleep(0.01)
    assert calls.started == ["running"]
    calls.let("running")
    calls.let("after")
    assert await after == "AFTER"
    assert calls.started == ["running", "after"] and calls.most_running == 1
    with pytest.raises(asyncio.CancelledError):
        await withdrawn
    pool.shutdown()


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        PriorityPool(0, "test")
