"""The batching decision, driven by a hand-set clock (no sleeping)."""

from __future__ import annotations

import numpy as np
import pytest

from server.core.errors import QueueFull
from server.scheduling.policy import BatchPolicy, QueuePolicy, TimeoutAction
from server.scheduling.queue import BatchScheduler, QueuedRequest, batch_key


class Ticket:
    def __init__(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


def request(rows: int, now: float, level: int = 1, deadline: float | None = None, width: int = 4,
            action: TimeoutAction = TimeoutAction.REJECT) -> QueuedRequest:
    inputs = {"x": np.zeros((rows, width), np.float32)}
    return QueuedRequest(inputs, rows, level, now, deadline, action, Ticket(), batch_key(inputs))


def policy(**kw) -> BatchPolicy:
    base = dict(max_batch_size=8, batching=True)
    base.update(kw)
    return BatchPolicy(**base)


def test_no_delay_dispatches_what_is_queued_at_once():
    s = BatchScheduler(policy())
    s.add(request(2, 0.0))
    s.add(request(3, 0.0))
    plan = s.schedule(0.0)
    assert plan.batch is not None and plan.batch.rows == 5 and len(plan.batch.requests) == 2
    assert len(s) == 0


def test_delay_waits_until_the_oldest_request_has_waited_long_enough():
    s = BatchScheduler(policy(max_queue_delay_us=1000))
    s.add(request(1, 0.0))
    plan = s.schedule(0.0005)
    assert plan.batch is None and plan.wake_at_s == pytest.approx(0.001)
    s.add(request(1, 0.0006))
    plan = s.schedule(0.001)
    assert plan.batch is not None and plan.batch.rows == 2


def test_full_batch_goes_without_waiting_and_never_exceeds_max():
    s = BatchScheduler(policy(max_queue_delay_us=10_000_000))
    for _ in range(5):
        s.add(request(3, 0.0))
    plan = s.schedule(0.0)
    # 3 + 3 = 6 fits, a third request would make 9 > 8: a batch of 6 rows, not a wait.
    assert plan.batch is not None and plan.batch.rows == 6
    assert s.schedule(0.0).batch.rows == 6
    assert s.schedule(0.0).batch is None  # 3 rows left, delay not over


def test_largest_preferred_size_that_can_be_formed_is_sent_at_once():
    s = BatchScheduler(policy(preferred_batch_sizes=(2, 4), max_queue_delay_us=10_000_000))
    for _ in range(5):
        s.add(request(1, 0.0))
    assert s.schedule(0.0).batch.rows == 4
    assert s.schedule(0.0).batch is None  # 1 row: no preferred size, delay not over
    assert s.schedule(11.0).batch.rows == 1  # delay over: send what there is


def test_requests_of_different_shapes_are_not_batched_together():
    s = BatchScheduler(policy())
    s.add(request(1, 0.0, width=4))
    s.add(request(1, 0.0, width=5))
    s.add(request(1, 0.0, width=4))
    first = s.schedule(0.0).batch
    assert first.rows == 2 and {r.inputs["x"].shape[1] for r in first.requests} == {4}
    assert s.schedule(0.0).batch.requests[0].inputs["x"].shape[1] == 5


def test_without_batching_each_request_runs_alone():
    s = BatchScheduler(BatchPolicy(max_batch_size=8, batching=False))
    s.add(request(3, 0.0))
    s.add(request(2, 0.0))
    assert [len(s.schedule(0.0).batch.requests) for _ in range(2)] == [1, 1]


def test_full_queue_refuses_at_once():
    s = BatchScheduler(policy(default_queue_policy=QueuePolicy(max_queue_size=2)))
    s.add(request(1, 0.0))
    s.add(request(1, 0.0))
    with pytest.raises(QueueFull):
        s.add(request(1, 0.0))


def test_expired_requests_are_rejected_and_cancelled_ones_dropped():
    s = BatchScheduler(policy(max_queue_delay_us=10_000_000))
    old = request(1, 0.0, deadline=1.0)
    gone = request(1, 0.0)
    keep = request(1, 0.0)
    for r in (old, gone, keep):
        s.add(r)
    gone.ticket.cancel()
    plan = s.schedule(2.0, can_dispatch=False)
    assert plan.expired == [old] and plan.cancelled == [gone] and plan.batch is None
    assert len(s) == 1


def test_deadline_sets_the_wake_up_time_even_when_no_instance_is_free():
    s = BatchScheduler(policy())
    s.add(request(1, 0.0, deadline=0.25))
    assert s.schedule(0.1, can_dispatch=False).wake_at_s == pytest.approx(0.25)


def test_delay_action_keeps_the_request_but_behind_the_others():
    s = BatchScheduler(policy(max_batch_size=1))
    late = request(1, 0.0, deadline=1.0, action=TimeoutAction.DELAY)
    s.add(late)
    s.add(request(1, 0.5))
    plan = s.schedule(2.0)
    assert plan.expired == [] and plan.batch.requests[0] is not late
    assert s.schedule(2.0).batch.requests[0] is late


def test_higher_priority_level_goes_first():
    s = BatchScheduler(policy(max_batch_size=1, priority_levels=2, default_priority_level=2))
    low = request(1, 0.0, level=2)
    high = request(1, 1.0, level=1)
    s.add(low)
    s.add(high)
    assert s.schedule(1.0).batch.requests[0] is high
    assert s.schedule(1.0).batch.requests[0] is low


def test_each_priority_level_has_its_own_bound():
    p = policy(priority_levels=2, default_priority_level=2,
               priority_queue_policy={1: QueuePolicy(max_queue_size=1)})
    s = BatchScheduler(p)
    s.add(request(1, 0.0, level=1))
    with pytest.raises(QueueFull):
        s.add(request(1, 0.0, level=1))
    s.add(request(1, 0.0, level=2))  # level 2 uses the default bound


def test_preferred_size_wins_over_a_full_batch():
    s = BatchScheduler(policy(preferred_batch_sizes=(4,), max_queue_delay_us=10_000_000))
    for _ in range(10):
        s.add(request(1, 0.0))
    assert s.schedule(0.0).batch.rows == 4


def test_the_clients_deadline_rejects_even_under_delay_and_never_reaches_a_batch():
    s = BatchScheduler(policy(max_queue_delay_us=1_000_000))
    late = request(1, 0.0, deadline=5.0, action=TimeoutAction.DELAY)
    late.client_deadline_s = 0.5
    s.add(late)
    s.add(request(1, 0.0))
    plan = s.schedule(0.1, can_dispatch=False)
    assert plan.wake_at_s == pytest.approx(0.5)  # the loop is woken for the client's deadline
    plan = s.schedule(0.6)
    assert plan.expired == [late]  # rejected, not delayed
    assert plan.batch is None and len(s) == 1  # the other one keeps waiting for its delay
    plan = s.schedule(1.0)
    assert plan.batch is not None and late not in plan.batch.requests


def test_each_batch_says_why_it_was_closed():
    def closed(p: BatchPolicy, rows: list[int], now: float, widths: list[int] | None = None) -> str:
        s = BatchScheduler(p)
        for i, r in enumerate(rows):
            s.add(request(r, 0.0, width=(widths or [4] * len(rows))[i]))
        plan = s.schedule(now)
        return plan.batch.reason if plan.batch else "waits"

    assert closed(policy(), [2, 3], 0.0) == "queue_empty"  # no delay: everything queued went at once
    assert closed(policy(), [2, 3], 0.0, widths=[4, 5]) == "instance_idle"  # another shape stays queued
    assert closed(policy(max_queue_delay_us=1000), [1], 0.0005) == "waits"
    assert closed(policy(max_queue_delay_us=1000), [1], 0.001) == "max_queue_delay"
    assert closed(policy(max_queue_delay_us=10**7), [4, 4], 0.0) == "max_batch_size"
    assert closed(policy(max_queue_delay_us=10**7), [4, 3, 3], 0.0) == "max_batch_size"  # the third would overflow
    assert closed(policy(max_queue_delay_us=10**7, preferred_batch_sizes=(2,)), [1, 1, 1], 0.0) == "preferred_size"
    assert closed(policy(batching=False, max_batch_size=0), [1, 1], 0.0) == "instance_idle"  # no batching: one at a time
