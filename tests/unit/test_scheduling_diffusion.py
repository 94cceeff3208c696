"""The step-level diffusion sampler: the planner with a fake network, then its asyncio driver."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.core.errors import InvalidInput, ModelError, QueueFull
from server.pipelines import ddim
from server.scheduling.base import Job
from server.scheduling.diffusion import DiffusionSampler, SamplerConfig, StepPlanner

SHAPE = (1, 4, 4)
SCHEDULE = ddim.NoiseSchedule(train_steps=100)


def fake_net(x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise and depends on every input, so a mixed-up row changes the result."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (0.5 * x + 0.01 * t.reshape(shape) - 0.1 * y.reshape(shape)).astype(np.float32)


def planner(**overrides) -> StepPlanner:
    return StepPlanner(SamplerConfig(SCHEDULE, SHAPE, **overrides))


def run_turn(p: StepPlanner):
    plan = p.plan()
    return plan, p.account(plan, fake_net(**plan.feed))


def test_requests_at_different_steps_share_one_call_and_match_the_lock_step_reference():
    p = planner()
    a = p.new_sample(label=3, seed=1, steps=6, guidance=2.0, preview_every=0, now=0.0)
    b = p.new_sample(label=7, seed=2, steps=4, guidance=1.0, preview_every=0, now=0.0)
    p.add(a)
    run_turn(p)
    run_turn(p)
    p.add(b)  # joins while a is at step 2
    plan, _ = run_turn(p)
    assert plan.samples == (a, b) and plan.admitted == (b,)
    assert plan.rows == 3  # a is guided: its class row, b's row, then a's null-class row
    assert plan.feed["t"].tolist() == [a.timesteps[2], b.timesteps[0], a.timesteps[2]]
    assert plan.feed["y"].tolist() == [3, 7, 10]
    finals = {}
    while len(p):
        _, events = run_turn(p)
        finals.update({id(e.sample): e.image for e in events if e.final})
    for sample, label, seed, steps, scale in ((a, 3, 1, 6, 2.0), (b, 7, 2, 4, 1.0)):
        reference = ddim.sample(fake_net, np.array([label]), np.array([seed]), steps, scale, SCHEDULE, 10, SHAPE)[0]
        np.testing.assert_array_equal(finals[id(sample)], reference)


def test_finished_requests_retire_at_once_and_waiting_ones_join_within_the_row_cap():
    p = planner(max_rows=4)
    samples = [p.new_sample(label=i, seed=i, steps=2 + i, guidance=2.0, preview_every=0, now=0.0) for i in range(3)]
    for s in samples:
        p.add(s)
    plan, events = run_turn(p)
    assert plan.samples == tuple(samples[:2]) and plan.rows == 4  # two guided requests fill 4 rows
    assert list(p.waiting) == [samples[2]]
    plan, events = run_turn(p)
    assert [e.sample for e in events if e.final] == [samples[0]]  # 2 steps: done, retired
    plan, _ = run_turn(p)
    assert plan.samples == (samples[1], samples[2]) and plan.admitted == (samples[2],)


def test_previews_every_k_steps_then_the_final_image():
    p = planner()
    p.add(p.new_sample(label=1, seed=0, steps=5, guidance=1.0, preview_every=2, now=0.0))
    seen = []
    while len(p):
        _, events = run_turn(p)
        seen += [(e.sample.index, e.final) for e in events]
    assert seen == [(2, False), (4, False), (5, True)]


def test_cancelled_requests_leave_at_the_next_turn():
    p = planner()
    a = p.new_sample(label=1, seed=0, steps=5, guidance=1.0, preview_every=0, now=0.0)
    b = p.new_sample(label=2, seed=0, steps=5, guidance=1.0, preview_every=0, now=0.0)
    p.add(a)
    p.add(b)
    run_turn(p)
    a.cancelled = True
    plan, _ = run_turn(p)
    assert plan.samples == (b,)
    b.cancelled = True
    assert p.plan() is None and len(p) == 0


def test_bounded_queue_and_bad_parameters():
    p = planner(max_queue=1, max_steps=50)
    p.add(p.new_sample(label=0, seed=0, steps=5, guidance=1.0, preview_every=0, now=0.0))
    with pytest.raises(QueueFull):
        p.add(p.new_sample(label=0, seed=0, steps=5, guidance=1.0, preview_every=0, now=0.0))
    for kwargs, message in (
        ({"label": 10}, "label"), ({"label": -1}, "label"), ({"steps": 0}, "steps"), ({"steps": 51}, "steps"),
        ({"guidance": -1.0}, "guidance"), ({"preview_every": -2}, "preview_every"), ({"seed": -5}, "seed"),
    ):
        args = {"label": 0, "seed": 0, "steps": 5, "guidance": 1.0, "preview_every": 0, "now": 0.0, **kwargs}
        with pytest.raises(InvalidInput, match=message):
            p.new_sample(**args)


def test_a_network_answer_of_the_wrong_shape_is_a_model_error():
    p = planner()
    p.add(p.new_sample(label=0, seed=0, steps=5, guidance=1.0, preview_every=0, now=0.0))
    plan = p.plan()
    with pytest.raises(ModelError, match="shape"):
        p.account(plan, np.zeros((1, 1, 2, 2), np.float32))


class FakeRuntime:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.fail = fail

    def execute(self, inputs):
        self.calls.append(len(inputs["t"]))
        if self.fail:
            raise RuntimeError("boom")
        return {"eps": fake_net(**inputs)}

    def unload(self) -> None:
        pass


def job(**inputs) -> Job:
    arrays = {k: np.array([v], np.float32 if k == "guidance_scale" else np.int64) for k, v in inputs.items()}
    return Job(arrays, 1)


async def collect(sampler, j):
    return [out async for out in sampler.stream(j)]


def test_driver_streams_previews_and_finals_for_concurrent_requests():
    async def main():
        runtime = FakeRuntime()
        sampler = DiffusionSampler(SamplerConfig(SCHEDULE, SHAPE), runtime)
        sampler.start()
        a, b = await asyncio.gather(
            collect(sampler, job(label=2, seed=5, steps=6, guidance_scale=1.0, preview_every=3)),
            collect(sampler, job(label=4, seed=6, steps=3, guidance_scale=1.0)),
        )
        await sampler.aclose()
        return runtime, a, b

    runtime, a, b = asyncio.run(main())
    assert [int(r["step"][0]) for r in a] == [3, 6] and [int(r["step"][0]) for r in b] == [3]
    assert max(runtime.calls) == 2  # the two requests shared calls
    reference = ddim.sample(fake_net, np.array([2]), np.array([5]), 6, 1.0, SCHEDULE, 10, SHAPE)[0]
    np.testing.assert_array_equal(a[-1]["image"], reference)
    assert a[-1]["image"].shape == SHAPE


def test_driver_frees_a_closed_stream_and_fails_every_request_of_a_failed_call():
    async def main():
        sampler = DiffusionSampler(SamplerConfig(SCHEDULE, SHAPE), FakeRuntime())
        sampler.start()
        stream = sampler.stream(job(label=1, seed=0, steps=50, guidance_scale=1.0, preview_every=1))
        first = await stream.__anext__()
        await stream.aclose()
        for _ in range(500):  # the loop drops it at its next turn (bounded wait, nothing timed)
            if not len(sampler.planner):
                break
            await asyncio.sleep(0.01)
        left = len(sampler.planner)
        await sampler.aclose()
        broken = DiffusionSampler(SamplerConfig(SCHEDULE, SHAPE), FakeRuntime(fail=True))
        broken.start()
        results = await asyncio.gather(*(collect(broken, job(label=1, seed=i, steps=3)) for i in range(3)),
                                       return_exceptions=True)
        await broken.aclose()
        return first, left, results

    first, left, results = asyncio.run(main())
    assert int(first["step"][0]) == 1 and left == 0
    assert all(isinstance(r, ModelError) for r in results)
