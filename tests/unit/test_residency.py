"""Model residency in the repository: load on demand (one shared load, bounded wait, failures
to every waiter), LRU eviction of idle on-demand models under a memory budget, and unloads
that wait for the requests holding a version. Real ONNX models; the RSS readings are faked
so that every model has a known size."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.core.errors import Unavailable
from server.observability.metrics import Metrics
from server.repository import manager
from server.repository.manager import ModelRepository
from server.repository.model import LoadOptions
from tests.integration.server_fixtures import write_simple

ON_DEMAND = '\nparameters { key: "load_on_demand" value: { string_value: "true" } }\n'
MB = 1_000_000
SIZE = 40 * MB  # every model "takes" this much (faked RSS)


@pytest.fixture
def loads(monkeypatch):
    """Counts loads per model; each load raises the faked RSS by SIZE."""
    counts: dict[str, int] = {}
    rss = {"bytes": 500 * MB}
    real = manager.load_version

    def load_version(name, *args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        model = real(name, *args, **kwargs)
        rss["bytes"] += SIZE
        return model

    monkeypatch.setattr(manager, "load_version", load_version)
    monkeypatch.setattr(manager, "_rss_bytes", lambda: rss["bytes"])
    return counts


def repository(tmp_path, eager=(), on_demand=(), budget=0, timeout_s=60.0) -> ModelRepository:
    for name in (*eager, *on_demand):
        write_simple(tmp_path, name)
        if name in on_demand:
            config = tmp_path / name / "config.pbtxt"
            config.write_text(config.read_text() + ON_DEMAND)
    return ModelRepository(tmp_path, LoadOptions(cpu_threads=1), Metrics(), budget, timeout_s)


def row(repo: ModelRepository, name: str) -> dict:
    return next(r for r in repo.index() if r["name"] == name)


def resident(repo: ModelRepository, name: str) -> float | None:
    return repo.metrics.registry.get_sample_value("deepserve_model_resident_bytes", {"model": name, "version": "1"})


async def use(repo: ModelRepository, name: str) -> None:
    repo.release(await repo.acquire(name))


async def test_on_demand_model_loads_once_for_concurrent_first_requests(tmp_path, loads):
    repo = repository(tmp_path, eager=("eager",), on_demand=("lazy",))
    await repo.load_all()
    try:
        assert loads == {"eager": 1}
        assert row(repo, "lazy")["state"] == "UNAVAILABLE" and "load on demand" in row(repo, "lazy")["reason"]
        assert repo.ready()  # an on-demand model does not count for readiness
        with pytest.raises(Unavailable) as error:
            repo.get("lazy")  # metadata-like reads do not load it
        assert error.value.retry_after_s
        models = await asyncio.gather(*(repo.acquire("lazy") for _ in range(8)))
        assert loads == {"eager": 1, "lazy": 1}
        assert len({id(m) for m in models}) == 1 and models[0].refs == 8
        for model in models:
            repo.release(model)
        assert models[0].refs == 0 and row(repo, "lazy")["state"] == "READY" and repo.ready()
        assert models[0].resident_bytes == SIZE and resident(repo, "lazy") == SIZE
        assert models[0].telemetry.snapshot()["memory_usage"] == [{"type": "CPU", "id": 0, "byte_size": SIZE}]
    finally:
        await repo.aclose()
    assert resident(repo, "lazy") is None  # the series goes with the model


async def test_a_failed_on_demand_load_answers_every_waiter_with_its_reason(tmp_path, loads):
    repo = repository(tmp_path, on_demand=("broken",))
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    await repo.load_all()
    results = await asyncio.gather(*(repo.acquire("broken") for _ in range(4)), return_exceptions=True)
    assert loads == {"broken": 1}
    assert all(isinstance(r, Unavailable) and "failed to load on demand" in r.message for r in results)
    assert len({id(r) for r in results}) == 4  # each waiter its own error (counted once each)
    assert row(repo, "broken")["state"] == "UNAVAILABLE" and row(repo, "broken")["reason"]
    assert repo.ready()
    await repo.aclose()


async def test_waiting_for_an_on_demand_load_is_bounded(tmp_path, loads, monkeypatch):
    gate = threading.Event()
    counting = manager.load_version

    def blocked(*args, **kwargs):
        gate.wait(30)
        return counting(*args, **kwargs)

    monkeypatch.setattr(manager, "load_version", blocked)
    repo = repository(tmp_path, on_demand=("slow",), timeout_s=0.2)
    await repo.load_all()
    with pytest.raises(Unavailable) as error:
        await repo.acquire("slow")
    assert error.value.retry_after_s and "not ready within" in error.value.message
    assert row(repo, "slow")["state"] == "LOADING"
    gate.set()
    await repo._entries["slow"].loading  # the load went on without its waiter
    await use(repo, "slow")
    assert loads == {"slow": 1}
    await repo.aclose()


async def test_the_budget_evicts_the_least_recently_used_idle_model(tmp_path, loads):
    repo = repository(tmp_path, on_demand=("a", "b", "c"), budget=100 * MB)
    await repo.load_all()
    for name in ("a", "b", "a"):
        await use(repo, name)
    assert repo.resident_bytes() == 2 * SIZE
    await use(repo, "c")  # 120 MB > 100 MB: b is the least recently used
    assert row(repo, "b")["state"] == "UNAVAILABLE" and "evicted" in row(repo, "b")["reason"]
    assert {row(repo, n)["state"] for n in ("a", "c")} == {"READY"}
    assert resident(repo, "b") is None and repo.resident_bytes() == 2 * SIZE
    await use(repo, "b")  # its next request loads it again; now a is the LRU one
    assert loads == {"a": 1, "b": 2, "c": 1}
    assert row(repo, "a")["state"] == "UNAVAILABLE" and row(repo, "b")["state"] == "READY"
    await repo.aclose()


async def test_busy_models_are_never_evicted(tmp_path, loads):
    repo = repository(tmp_path, eager=("pinned",), on_demand=("a", "b"), budget=90 * MB)
    await repo.load_all()  # pinned (not on demand) takes 40 MB and is never evicted
    await use(repo, "b")
    held = await repo.acquire("a")  # 120 MB: b (idle) goes, a (being acquired) stays
    assert row(repo, "b")["state"] == "UNAVAILABLE" and row(repo, "pinned")["state"] == "READY"
    with pytest.raises(Unavailable) as error:
        await repo.acquire("b")  # b takes 40 MB (measured before): a is busy, nothing can go
    assert "memory budget" in error.value.message and error.value.retry_after_s
    assert loads == {"pinned": 1, "a": 1, "b": 1}
    repo.release(held)
    await use(repo, "b")  # a is idle now: evicted for b
    assert row(repo, "a")["state"] == "UNAVAILABLE" and row(repo, "b")["state"] == "READY"
    await repo.aclose()


async def _until(condition) -> None:
    """Let the loop run until ``condition()`` holds (bounded)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_an_unload_waits_for_the_requests_holding_the_model(tmp_path, loads):
    repo = repository(tmp_path, eager=("eager",), on_demand=("lazy",))
    await repo.load_all()
    held = await repo.acquire("eager")
    unload = asyncio.create_task(repo.unload("eager"))
    await _until(lambda: row(repo, "eager")["state"] == "UNLOADING")
    for _ in range(50):
        await asyncio.sleep(0)
    assert not unload.done() and held.instances[0]._session is not None  # still alive for its request
    with pytest.raises(Unavailable):
        await repo.acquire("eager")  # new requests: 503 while it unloads
    repo.release(held)
    await unload
    assert held.instances[0]._session is None and row(repo, "eager")["reason"] == "unloaded"

    # an on-demand model: a request during its unload waits, then loads it again
    held = await repo.acquire("lazy")
    unload = asyncio.create_task(repo.unload("lazy"))
    await _until(lambda: row(repo, "lazy")["state"] == "UNLOADING")
    again = asyncio.create_task(repo.acquire("lazy"))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not unload.done() and not again.done()
    repo.release(held)
    await unload
    model = await again
    assert model is not held and loads["lazy"] == 2 and row(repo, "lazy")["state"] == "READY"
    repo.release(model)
    await repo.unload("lazy")
    assert "load on demand" in row(repo, "lazy")["reason"]  # unloaded: back to loading on demand
    await repo.aclose()
