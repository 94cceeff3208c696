"""The batching decision, free of I/O: which queued requests run together, and when.

The driver (:mod:`server.scheduling.batcher`) owns the event loop, the threads and the
runtimes; this module only answers ``schedule(now)``. Time is always passed in, so the
tests drive it with a hand-set clock instead of sleeping through delay windows.

Queue layout (one deque per priority level, 1 = highest; then requests whose timeout
expired under ``timeout_action: DELAY``)::

    level 1:  [r7 r9]
    level 2:  [r1 r2 r5 r8]          <- FIFO within a level
    delayed:  [r3]                   <- only when nothing else is compatible
    batch  =  r7 r9 r1 r2 ...        (same non-batch shapes, rows <= max_batch_size)
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from server.core.errors import QueueFull
from server.scheduling.policy import BatchPolicy, TimeoutAction


class Ticket(Protocol):
    """What the scheduler needs of the caller's handle (an ``asyncio.Future`` in practice)."""

    def cancelled(self) -> bool: ...


@dataclass(eq=False, slots=True)
class QueuedRequest:
    inputs: dict[str, np.ndarray]
    rows: int
    level: int
    enqueued_s: float
    deadline_s: float | None
    action: TimeoutAction
    ticket: Ticket
    key: tuple = ()  # requests batch together only when their keys are equal
    delayed: bool = False
    client_deadline_s: float | None = None  # the client's own deadline: past it, always rejected
    context: Any = None  # opaque to the scheduler (the driver keeps its own data here)


def batch_key(inputs: dict[str, np.ndarray]) -> tuple:
    """Requests concatenate along rows only when every other dimension and dtype agree."""
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(inputs.items()))


# Why a batch was closed (``Batch.reason``; counted by deepserve_batch_close_total{reason}):
MAX_BATCH_SIZE = "max_batch_size"  # the next compatible request would not fit (or it is exactly full)
PREFERRED_SIZE = "preferred_size"  # a preferred batch size could be formed
MAX_QUEUE_DELAY = "max_queue_delay"  # the oldest request waited max_queue_delay_microseconds
QUEUE_EMPTY = "queue_empty"  # no delay to wait: an instance was idle and the batch took every queued request
INSTANCE_IDLE = "instance_idle"  # no delay to wait: an instance was idle; queued requests of other shapes stay
CLOSE_REASONS = (MAX_BATCH_SIZE, PREFERRED_SIZE, MAX_QUEUE_DELAY, QUEUE_EMPTY, INSTANCE_IDLE)


@dataclass(frozen=True, slots=True)
class Batch:
    requests: tuple[QueuedRequest, ...]
    rows: int
    reason: str = QUEUE_EMPTY  # one of CLOSE_REASONS


@dataclass(slots=True)
class Plan:
    """One scheduling decision. ``batch`` is None when nothing should run now."""

    batch: Batch | None = None
    expired: list[QueuedRequest] = field(default_factory=list)  # rejected: timed out
    cancelled: list[QueuedRequest] = field(default_factory=list)  # the caller went away
    wake_at_s: float | None = None  # call schedule() again by then, even with no new request


class BatchScheduler:
    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._levels: dict[int, deque[QueuedRequest]] = {
            level: deque() for level in range(1, policy.priority_levels + 1)
        }
        self._delayed: deque[QueuedRequest] = deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, request: QueuedRequest) -> None:
        """Queue a request, or refuse it at once when its level's queue is full."""
        queue = self._levels[request.level]
        limit = self.policy.queue_policy(request.level).max_queue_size
        if len(queue) >= limit:
            raise QueueFull(f"the queue of priority level {request.level} is full ({limit} requests); retry later")
        queue.append(request)
        self._count += 1

    def drain(self) -> list[QueuedRequest]:
        """Remove and return everything queued (used when the model goes away)."""
        out = [r for q in (*self._levels.values(), self._delayed) for r in q]
        for q in (*self._levels.values(), self._delayed):
            q.clear()
        self._count = 0
        return out

    def schedule(self, now_s: float, can_dispatch: bool = True) -> Plan:
        plan = Plan()
        self._sweep(now_s, plan)
        if not can_dispatch or self._count == 0:
            return plan
        chosen, rows, full = self._candidates()
        size, reason = self._dispatch_size(chosen, rows, full, now_s)
        if size is None:
            head = chosen[0]
            plan.wake_at_s = _earliest(plan.wake_at_s, head.enqueued_s + self.policy.max_queue_delay_us / 1e6)
            return plan
        batch = chosen[:size]
        if reason == QUEUE_EMPTY and size < self._count:
            reason = INSTANCE_IDLE
        self._remove(batch)
        plan.batch = Batch(tuple(batch), sum(r.rows for r in batch), reason)
        return plan

    # -- phases --------------------------------------------------------------------

    def _sweep(self, now_s: float, plan: Plan) -> None:
        """Drop cancelled requests, expire timed-out ones, note the next deadline."""
        for queue in (*self._levels.values(), self._delayed):
            if not queue:
                continue
            keep: deque[QueuedRequest] = deque()
            for request in queue:
                if request.ticket.cancelled():
                    plan.cancelled.append(request)
                elif request.client_deadline_s is not None and request.client_deadline_s <= now_s:
                    plan.expired.append(request)  # whatever the queue policy: the client has given up
                elif request.deadline_s is not None and request.deadline_s <= now_s:
                    if request.action is TimeoutAction.REJECT:
                        plan.expired.append(request)
                    else:
                        request.deadline_s, request.delayed = None, True
                        self._delayed.append(request)
                else:
                    keep.append(request)
                    for deadline in (request.deadline_s, request.client_deadline_s):
                        if deadline is not None:
                            plan.wake_at_s = _earliest(plan.wake_at_s, deadline)
            if len(keep) != len(queue):
                queue.clear()
                queue.extend(keep)
        self._count = sum(len(q) for q in self._levels.values()) + len(self._delayed)

    def _candidates(self) -> tuple[list[QueuedRequest], list[int], bool]:
        """Requests that could run together, in priority then arrival order, with
        cumulative row counts; stops before the first one that would overflow, and then
        says the batch is full (waiting longer cannot make it larger)."""
        ordered = itertools.chain(*self._levels.values(), self._delayed)
        head = next(ordered)
        chosen, rows = [head], [head.rows]
        if not self.policy.batching:
            return chosen, rows, True
        for request in ordered:
            if request.key != head.key:
                continue
            total = rows[-1] + request.rows
            if total > self.policy.max_batch_size:
                return chosen, rows, True
            chosen.append(request)
            rows.append(total)
        return chosen, rows, rows[-1] >= self.policy.max_batch_size

    def _dispatch_size(self, chosen: list[QueuedRequest], rows: list[int], full: bool,
                       now_s: float) -> tuple[int | None, str]:
        """How many of ``chosen`` to run now (None: wait for more), and why (Triton's rules:
        the largest preferred size that can be formed; else, once the batch is full or
        the oldest request has waited ``max_queue_delay``, everything that fits)."""
        policy = self.policy
        preferred = [i + 1 for i, total in enumerate(rows) if total in policy.preferred_batch_sizes]
        if preferred:
            return preferred[-1], PREFERRED_SIZE
        if full:
            return len(chosen), MAX_BATCH_SIZE if policy.batching else QUEUE_EMPTY
        if policy.max_queue_delay_us <= 0:
            return len(chosen), QUEUE_EMPTY
        waited_us = (now_s - chosen[0].enqueued_s) * 1e6
        if waited_us >= policy.max_queue_delay_us:
            return len(chosen), MAX_QUEUE_DELAY
        return None, ""

    def _remove(self, batch: list[QueuedRequest]) -> None:
        ids = {id(r) for r in batch}
        for queue in (*self._levels.values(), self._delayed):
            n = 0
            while n < len(queue) and id(queue[n]) in ids:
                n += 1
            for _ in range(n):
                queue.popleft()
            if any(id(r) in ids for r in queue):
                kept = [r for r in queue if id(r) not in ids]
                queue.clear()
                queue.extend(kept)
        self._count -= len(batch)


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
