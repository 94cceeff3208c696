"""The ensemble executor with fake step targets: plan checks, DAG order, errors, draining."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from server.core.errors import InvalidInput, ModelError, Unavailable
from server.scheduling.base import Job
from server.scheduling.ensemble import EnsemblePlan, EnsembleScheduler, Step, check_plan
from server.scheduling.policy import ensemble_plan_from_config


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> Step:
    return Step(model, "", tuple(inputs.items()), tuple(outputs.items()))


class Fn:
    """A step target computing ``{"y": fn(x)}``; optionally held until ``gate`` is set."""

    def __init__(self, fn, gate: asyncio.Event | None = None) -> None:
        self.fn = fn
        self.gate = gate
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0

    async def run(self, inputs, deadline_s=None):
        self.calls += 1
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return self.fn(inputs)


class Fails:
    def __init__(self, error: Exception, after: asyncio.Event | None = None) -> None:
        self.error = error
        self.after = after

    async def run(self, inputs, deadline_s=None):
        if self.after is not None:
            await self.after.wait()
        raise self.error


class Recorder:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.ensembles: list[tuple[int, bool]] = []

    def step_done(self, step: str, duration_s: float) -> None:
        assert duration_s >= 0
        self.steps.append(step)

    def ensemble_done(self, rows: int, steps_s: float, ok: bool) -> None:
        self.ensembles.append((rows, ok))


def scheduler(plan: EnsemblePlan, targets: dict, observer: Recorder | None = None) -> EnsembleScheduler:
    check_plan(plan)
    ensemble = EnsembleScheduler("ens", plan, lambda model, version: targets[model], observer or Recorder())
    ensemble.start()
    return ensemble


def job(x) -> Job:
    return Job({"IN": np.asarray(x, np.float32)}, rows=1)


def add(n: float):
    return lambda inputs: {"y": inputs["x"] + n}


CHAIN = EnsemblePlan(
    inputs=("IN",),
    outputs=("OUT",),
    steps=(step("plus1", {"x": "IN"}, {"y": "A"}), step("plus10", {"x": "A"}, {"y": "OUT"})),
)
FAN = EnsemblePlan(
    inputs=("IN",),
    outputs=("L", "R"),
    steps=(step("left", {"x": "IN"}, {"y": "L"}), step("right", {"x": "IN"}, {"y": "R"})),
)

# -- check_plan ------------------------------------------------------------------------


def test_check_plan_accepts_a_dag_with_fan_out_and_fan_in():
    check_plan(
        EnsemblePlan(
            inputs=("IN",),
            outputs=("OUT",),
            steps=(
                step("join", {"a": "L", "b": "R"}, {"y": "OUT"}),  # listed first: order does not matter
                step("left", {"x": "IN"}, {"y": "L"}),
                step("right", {"x": "IN"}, {"y": "R"}),
            ),
        )
    )


def test_check_plan_refuses_a_tensor_produced_twice():
    plan = EnsemblePlan(("IN",), ("T",), (step("a", {"x": "IN"}, {"y": "T"}), step("b", {"x": "IN"}, {"y": "T"})))
    with pytest.raises(ValueError, match=r"tensor 'T' is produced twice \(step 'a' and step 'b'\)"):
        check_plan(plan)


def test_check_plan_refuses_a_step_that_overwrites_an_ensemble_input():
    plan = EnsemblePlan(("IN",), ("IN",), (step("a", {"x": "IN"}, {"y": "IN"}),))
    with pytest.raises(ValueError, match="'IN' is produced twice"):
        check_plan(plan)


def test_check_plan_refuses_a_step_reading_a_tensor_nobody_produces():
    plan = EnsemblePlan(("IN",), ("OUT",), (step("a", {"x": "GHOST"}, {"y": "OUT"}),))
    with pytest.raises(ValueError, match=r"step 'a' reads \['GHOST'\], which no step"):
        check_plan(plan)


def test_check_plan_refuses_an_output_nobody_produces():
    plan = EnsemblePlan(("IN",), ("OUT", "EXTRA"), (step("a", {"x": "IN"}, {"y": "OUT"}),))
    with pytest.raises(ValueError, match=r"output\(s\) \['EXTRA'\] are produced by no step"):
        check_plan(plan)


def test_check_plan_refuses_a_cycle():
    plan = EnsemblePlan(
        ("IN",),
        ("B",),
        (step("a", {"x": "IN", "z": "B"}, {"y": "A"}), step("b", {"x": "A"}, {"y": "B"})),
    )
    with pytest.raises(ValueError, match=r"steps \['a', 'b'\] form a cycle"):
        check_plan(plan)


# -- ensemble_plan_from_config ---------------------------------------------------------

PBTXT = """
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "LABELS" data_type: TYPE_STRING dims: [ 1 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "preprocess"
      model_version: -1
      input_map { key: "RAW" value: "IMAGE" }
      output_map { key: "PIXELS" value: "pixels" }
    },
    {
      model_name: "digits"
      model_version: 2
      input_map { key: "input" value: "pixels" }
      input_map { key: "extra" value: "IMAGE" }
      output_map { key: "labels" value: "LABELS" }
    }
  ]
}
"""


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_plan_from_config_maps_steps_versions_and_tensors():
    plan = ensemble_plan_from_config(parse(PBTXT))
    assert plan.inputs == ("IMAGE",) and plan.outputs == ("LABELS",)
    assert plan.steps == (
        Step("preprocess", "", (("RAW", "IMAGE"),), (("PIXELS", "pixels"),)),
        Step("digits", "2", (("extra", "IMAGE"), ("input", "pixels")), (("labels", "LABELS"),)),
    )
    assert plan.models == ("preprocess", "digits")


def test_plan_from_config_refuses_an_ensemble_without_steps():
    with pytest.raises(ValueError, match="at least one step"):
        ensemble_plan_from_config(parse('name: "e" platform: "ensemble"'))


def test_plan_from_config_checks_the_plan():
    broken = PBTXT.replace('value: "LABELS"', 'value: "OTHER"')
    with pytest.raises(ValueError, match=r"\['LABELS'\] are produced by no step"):
        ensemble_plan_from_config(parse(broken))


# -- running ---------------------------------------------------------------------------


async def test_a_chain_computes_each_step_on_the_previous_result():
    observer = Recorder()
    ensemble = scheduler(CHAIN, {"plus1": Fn(add(1)), "plus10": Fn(add(10))}, observer)
    out = await ensemble.infer(job([[1.0, 2.0]]))
    assert list(out) == ["OUT"]
    np.testing.assert_array_equal(out["OUT"], [[12.0, 13.0]])
    assert observer.steps == ["plus1", "plus10"] and observer.ensembles == [(1, True)]


async def test_independent_steps_run_at_the_same_time():
    # Each step waits until the other has started: run one after the other, they would never finish.
    left_started, right_started = asyncio.Event(), asyncio.Event()

    class Meet:
        def __init__(self, mine: asyncio.Event, other: asyncio.Event, n: float) -> None:
            self.mine, self.other, self.n = mine, other, n

        async def run(self, inputs, deadline_s=None):
            self.mine.set()
            await self.other.wait()
            return {"y": inputs["x"] + self.n}

    ensemble = scheduler(
        FAN, {"left": Meet(left_started, right_started, 1), "right": Meet(right_started, left_started, 2)}
    )
    out = await asyncio.wait_for(ensemble.infer(job([0.0])), 5)
    np.testing.assert_array_equal(out["L"], [1.0])
    np.testing.assert_array_equal(out["R"], [2.0])


async def test_a_step_reading_two_steps_outputs_waits_for_both():
    gate = asyncio.Event()
    plan = EnsemblePlan(
        inputs=("IN",),
        outputs=("OUT",),
        steps=(
            step("left", {"x": "IN"}, {"y": "L"}),
            step("right", {"x": "IN"}, {"y": "R"}),
            step("join", {"a": "L", "b": "R"}, {"y": "OUT"}),
        ),
    )
    right = Fn(add(100), gate)
    join = Fn(lambda inputs: {"y": inputs["a"] * inputs["b"]})
    ensemble = scheduler(plan, {"left": Fn(add(1)), "right": right, "join": join})
    task = asyncio.create_task(ensemble.infer(job([2.0])))
    await right.started.wait()
    for _ in range(5):
        await asyncio.sleep(0)  # let `left` finish; `join` must still wait for `right`
    assert join.calls == 0
    gate.set()
    out = await asyncio.wait_for(task, 5)
    np.testing.assert_array_equal(out["OUT"], [(2.0 + 1) * (2.0 + 100)])


@pytest.mark.parametrize(
    "error",
    [InvalidInput("bad pixel"), ModelError("kernel died"), Unavailable("reloading", retry_after_s=3.0)],
    ids=lambda e: type(e).__name__,
)
async def test_a_failing_step_keeps_its_error_kind_and_names_the_step(error):
    ensemble = scheduler(CHAIN, {"plus1": Fn(add(1)), "plus10": Fails(error)})
    with pytest.raises(type(error)) as caught:
        await ensemble.infer(job([1.0]))
    assert type(caught.value) is type(error)
    assert caught.value.message == f"ensemble 'ens' step 'plus10': {error.message}"
    assert str(caught.value) == caught.value.message
    assert error.message in ("bad pixel", "kernel died", "reloading")  # the step's own error is left as it was
    if isinstance(error, Unavailable):
        assert caught.value.retry_after_s == 3.0


async def test_a_step_that_cannot_be_resolved_fails_with_the_step_named():
    def resolve(model, version):
        raise Unavailable(f"model '{model}' is not ready", retry_after_s=1.5)

    ensemble = EnsembleScheduler("ens", CHAIN, resolve, Recorder())
    ensemble.start()
    with pytest.raises(Unavailable, match=r"^ensemble 'ens' step 'plus1': model 'plus1' is not ready$") as caught:
        await ensemble.infer(job([1.0]))
    assert caught.value.retry_after_s == 1.5


async def test_a_failing_step_cancels_its_running_sibling():
    right = Fn(add(2), gate=asyncio.Event())  # never released
    ensemble = scheduler(FAN, {"left": Fails(ModelError("boom"), after=right.started), "right": right})
    with pytest.raises(ModelError, match="step 'left': boom"):
        await ensemble.infer(job([0.0]))
    await asyncio.wait_for(right.cancelled.wait(), 5)


async def test_a_caller_that_goes_away_cancels_the_running_steps():
    left, right = Fn(add(1), asyncio.Event()), Fn(add(2), asyncio.Event())  # neither is ever released
    observer = Recorder()
    ensemble = scheduler(FAN, {"left": left, "right": right}, observer)
    task = asyncio.create_task(ensemble.infer(job([0.0])))
    await left.started.wait()
    await right.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(asyncio.gather(left.cancelled.wait(), right.cancelled.wait()), 5)
    assert observer.ensembles == [(1, False)]
    await asyncio.wait_for(ensemble.aclose(), 5)  # nothing is left in flight


async def test_a_step_that_omits_a_mapped_output_is_a_model_error():
    ensemble = scheduler(CHAIN, {"plus1": Fn(lambda inputs: {"other": inputs["x"]}), "plus10": Fn(add(10))})
    with pytest.raises(ModelError, match=r"step 'plus1' did not return output\(s\) \['y'\]"):
        await ensemble.infer(job([1.0]))


async def test_observer_hears_a_failed_ensemble():
    observer = Recorder()
    ensemble = scheduler(CHAIN, {"plus1": Fn(add(1)), "plus10": Fails(InvalidInput("no"))}, observer)
    with pytest.raises(InvalidInput):
        await ensemble.infer(job([1.0]))
    assert observer.ensembles == [(1, False)]
    assert observer.steps == ["plus1", "plus10"]


async def test_aclose_waits_for_running_requests_then_refuses_new_ones():
    gate = asyncio.Event()
    first = Fn(add(1), gate)
    ensemble = scheduler(CHAIN, {"plus1": first, "plus10": Fn(add(10))})
    running = asyncio.create_task(ensemble.infer(job([1.0])))
    await first.started.wait()
    closing = asyncio.create_task(ensemble.aclose())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not closing.done()
    with pytest.raises(Unavailable, match="unloading") as caught:
        await ensemble.infer(job([1.0]))
    assert caught.value.retry_after_s is not None
    gate.set()
    np.testing.assert_array_equal((await running)["OUT"], [12.0])
    await asyncio.wait_for(closing, 5)
    with pytest.raises(Unavailable):
        await ensemble.infer(job([1.0]))


async def test_stream_yields_the_one_result():
    ensemble = scheduler(CHAIN, {"plus1": Fn(add(1)), "plus10": Fn(add(10))})
    results = [out async for out in ensemble.stream(job([0.0]))]
    assert len(results) == 1
    np.testing.assert_array_equal(results[0]["OUT"], [11.0])
