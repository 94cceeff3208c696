"""Model residency on a real server: load-on-demand models (one load for concurrent first
requests), LRU eviction under ``--memory-budget-bytes``, the RSS given back by an unload
(read from /proc of the server's pid: a memory figure, no timing), and unloads racing with
traffic (every request answered 200 with the right outputs, or 503)."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.integration.server_fixtures import _save, server_process, write_simple

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="RSS is read from /proc (Linux)")

ON_DEMAND = '\nparameters { key: "load_on_demand" value: { string_value: "true" } }\n'
BIG_ROWS = 12_500_000  # a 50 MB FP32 initializer
BIG_BYTES = BIG_ROWS * 4
BUDGET = 100_000_000  # one big model fits, two do not
BIG_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "IDX" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ }}
"""


def write_big(repo: Path, name: str) -> None:
    """OUT = W[IDX] with W = 0, 1, 2, ... (50 MB): the initializer stays resident (a
    Gather by an input cannot be folded away), and every answer shows which row it read."""
    weights = numpy_helper.from_array(np.arange(BIG_ROWS, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["W", "IDX"], ["OUT"], axis=0)],
        name,
        [helper.make_tensor_value_info("IDX", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["batch", 1])],
        [weights],
    )
    _save(graph, repo / name / "1" / "model.onnx")
    (repo / name / "config.pbtxt").write_text(BIG_CONFIG.format(name=name) + ON_DEMAND)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("residency")
    write_big(repo, "big_a")
    write_big(repo, "big_b")
    write_simple(repo, "lazy")
    write_simple(repo, "steady")  # loaded at startup: counts for the budget, never evicted
    (repo / "lazy" / "config.pbtxt").write_text((repo / "lazy" / "config.pbtxt").read_text() + ON_DEMAND)
    args = ("--log-level", "info", "--memory-budget-bytes", str(BUDGET), "--no-grpc")
    with server_process(repo, extra_args=args) as (handle, _):
        yield handle


def call(handle, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{handle.http_url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
            return response.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def infer_big(handle, name: str, index: int) -> tuple[int, dict]:
    body = {"inputs": [{"name": "IDX", "shape": [1, 1], "datatype": "INT64", "data": [index]}]}
    return call(handle, "POST", f"/v2/models/{name}/infer", body)


def infer_simple(handle, name: str, value: float) -> tuple[int, dict]:
    data = [value] * 16
    body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": data} for n in ("INPUT0", "INPUT1")],
            "outputs": [{"name": "OUTPUT0"}]}
    return call(handle, "POST", f"/v2/models/{name}/infer", body)


def index(handle) -> dict[str, dict]:
    _, rows = call(handle, "POST", "/v2/repository/index", {})
    return {r["name"]: r for r in rows}


def rss(handle) -> int:
    text = Path(f"/proc/{handle.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024


def resident_gauge(handle, name: str) -> float | None:
    with urllib.request.urlopen(f"http://{handle.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf'deepserve_model_resident_bytes{{model="{name}",version="1"}} (\S+)', text)
    return float(match.group(1)) if match else None


def loads_logged(handle, name: str) -> int:
    return len(re.findall(rf"loaded {name} version 1 ", handle.log()))


def test_on_demand_budget_eviction_and_the_rss_an_unload_gives_back(server):
    rows = index(server)
    for name in ("big_a", "big_b", "lazy"):
        assert rows[name]["state"] == "UNAVAILABLE" and "load on demand" in rows[name]["reason"], rows[name]
    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200  # on-demand models do not count for readiness

    # eight concurrent first requests: one load, all answered from the loaded model
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: infer_big(server, "big_a", 1000 + i), range(8)))
    assert [status for status, _ in answers] == [200] * 8, answers
    assert [body["outputs"][0]["data"] for _, body in answers] == [[1000.0 + i] for i in range(8)]
    assert loads_logged(server, "big_a") == 1
    size_a = resident_gauge(server, "big_a")
    assert size_a is not None and size_a >= 0.8 * BIG_BYTES

    # big_b does not fit beside big_a: the idle big_a goes
    before = rss(server)
    status, body = infer_big(server, "big_b", 7)
    assert status == 200 and body["outputs"][0]["data"] == [7.0]
    rows = index(server)
    assert rows["big_a"]["state"] == "UNAVAILABLE" and "evicted" in rows["big_a"]["reason"]
    assert rows["big_b"]["state"] == "READY" and resident_gauge(server, "big_a") is None
    print(f"\nbig_a resident (RSS delta at load): {size_a / 1e6:.1f} MB; RSS across evicting big_a and "
          f"loading big_b: {(rss(server) - before) / 1e6:+.1f} MB")

    # the evicted model reloads on its next request (big_b is evicted in turn)
    status, body = infer_big(server, "big_a", 42)
    assert status == 200 and body["outputs"][0]["data"] == [42.0]
    assert loads_logged(server, "big_a") == 2 and index(server)["big_b"]["state"] == "UNAVAILABLE"

    # an unload really frees the model's memory
    loaded = rss(server)
    status, _ = call(server, "POST", "/v2/repository/models/big_a/unload", {})
    assert status == 200
    unloaded = rss(server)
    print(f"RSS with big_a loaded: {loaded / 1e6:.1f} MB; after its unload: {unloaded / 1e6:.1f} MB "
          f"(dropped {(loaded - unloaded) / 1e6:.1f} MB; the model's initializer is {BIG_BYTES / 1e6:.0f} MB)")
    assert loaded - unloaded >= 0.6 * BIG_BYTES
    assert "load on demand" in index(server)["big_a"]["reason"]


def test_unload_and_load_racing_with_traffic(server):
    """``lazy`` (on demand: a request during its unload waits and loads it again) and
    ``steady`` (a request during its unload, or while it is unloaded, gets 503)."""
    results: list[tuple[tuple[int, dict], float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        count = 0
        while not stop.is_set() or count < 10:
            value = float(seed * 1000 + count)
            answer = infer_simple(server, ("lazy", "steady")[count % 2], value)
            with lock:
                results.append((answer, value))
            count += 1

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            for name in ("lazy", "steady"):
                assert call(server, "POST", f"/v2/repository/models/{name}/unload", {})[0] == 200
            for name in ("lazy", "steady"):
                assert call(server, "POST", f"/v2/repository/models/{name}/load", {})[0] == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request was never answered"
    statuses = [status for (status, _), _ in results]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 40
    for (status, body), value in results:
        if status == 200:  # never an answer from a half-loaded model: the right sum, every time
            assert body["outputs"][0]["data"] == [2 * value] * 16
        else:
            assert "error" in body
    print(f"\nunload/load under traffic: {statuses.count(200)} x 200, {statuses.count(503)} x 503")
