"""``--frontend-processes 2`` (issue #9): a real server whose HTTP frontend runs in two
processes that hand tensors to the model process over shared memory.

One server for the module (the SIGTERM test starts its own): v2 infer with binary
tensors and JSON through tritonclient, raw binary bodies, a large tensor, model
metadata / config / readiness, statistics, generate and a decoupled generate_stream,
bad input still 4xx and counted once in /metrics (a client that leaves too), repository
unload / load, gRPC (served by the frontend processes: unary, errors, a decoupled
stream), concurrent requests land on both frontend processes, SIGTERM drains (HTTP and
gRPC) and every process exits, a killed model process takes its frontends with it.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration import server_fixtures as fx

ARGS = ("--frontend-processes", "2")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return fx.build_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repo):
    with fx.server_process(repo, extra_args=ARGS) as (handle, proc):
        yield handle, proc


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server[0].http_url, concurrency=8)
    yield c
    c.close()


@pytest.fixture
def raw(server):
    with httpx.Client(base_url=f"http://{server[0].http_url}", timeout=30) as c:
        yield c


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def _simple_inputs(binary: bool, batch: int = 3):
    a = np.arange(16 * batch, dtype=np.float32).reshape(batch, 16)
    b = np.ones((batch, 16), dtype=np.float32)
    inputs = []
    for name, x in (("INPUT0", a), ("INPUT1", b)):
        i = httpclient.InferInput(name, list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        inputs.append(i)
    return a, b, inputs


@pytest.mark.parametrize("binary", [True, False])
def test_infer_binary_and_json(client, binary):
    a, b, inputs = _simple_inputs(binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer("simple", inputs, outputs=outputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "r1"


def test_classification_and_types(client):
    _, _, inputs = _simple_inputs(True, batch=1)
    result = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT0", class_count=2)])
    top = result.as_numpy("OUTPUT0")
    assert top.shape == (1, 2) and top[0, 0].decode().endswith(":label15")
    inputs, expected = [], {}
    for name, datatype, array in (
        ("S", "BYTES", np.array([b"ab", b"", b"\x00z"], dtype=object)),
        ("H", "FP16", np.array([1.5, -2], dtype=np.float16)),
        ("B", "BOOL", np.array([True, False])),
        ("I64", "INT64", np.array([2**40, -1], dtype=np.int64)),
        ("I8", "INT8", np.array([-8, 7], dtype=np.int8)),
        ("U16", "UINT16", np.array([65535], dtype=np.uint16)),
        ("F64", "FP64", np.array([0.25], dtype=np.float64)),
    ):
        i = httpclient.InferInput(name, list(array.shape), datatype)
        i.set_data_from_numpy(array, binary_data=True)
        inputs.append(i)
        expected[f"{name}_OUT"] = array
    result = client.infer("types", inputs)
    for name, array in expected.items():
        np.testing.assert_array_equal(result.as_numpy(name), array)


def test_large_tensor_and_concurrency_across_both_processes(client, server):
    handle, proc = server
    big = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    i0 = httpclient.InferInput("INPUT0", list(big.shape), "FP32")
    i0.set_data_from_numpy(big)
    i1 = httpclient.InferInput("INPUT1", list(big.shape), "FP32")
    i1.set_data_from_numpy(big)
    np.testing.assert_allclose(client.infer("simple", [i0, i1]).as_numpy("OUTPUT0"), 2 * big)

    # Many fresh connections: SO_REUSEPORT spreads them over both frontends (CPU time shows it).
    frontends = _children(proc.pid)
    assert len(frontends) >= 2, frontends
    before = {pid: fx_cpu(pid) for pid in frontends}

    def one(k: int) -> bool:
        with httpx.Client(base_url=f"http://{handle.http_url}", timeout=30) as c:
            x = np.full((1, 16), k, dtype=np.float32)
            body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}
                               for n in ("INPUT0", "INPUT1")]}
            for _ in range(10):
                r = c.post("/v2/models/simple/infer", json=body)
                if r.status_code != 200 or r.json()["outputs"][0]["data"][0] != 2 * k:
                    return False
            return True

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(64)))
    used = [fx_cpu(pid) - before[pid] for pid in frontends]
    assert sum(1 for u in used if u > 0) >= 2, used


def fx_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _listeners(port: int, pid: int) -> set[int]:
    """Of ``pid`` and its children, the processes holding a listening TCP socket on ``port``."""
    from loadtests.frontend_scaling import connections

    pids = [pid, *_children(pid)]
    return {p for p, n in zip(pids, connections(port, pids, "0A"), strict=True) if n}


def test_grpc_is_served_by_every_frontend_process(server):
    import tritonclient.grpc as grpcclient

    handle, proc = server
    grpc_port = int(handle.grpc_url.rsplit(":", 1)[1])
    serving = _listeners(grpc_port, proc.pid)  # ready means every frontend listens on both ports
    assert len(serving) == 2 and serving <= set(_children(proc.pid))  # the model process only reserves the port
    assert _listeners(int(handle.http_url.rsplit(":", 1)[1]), proc.pid) == serving

    a, b = np.ones((2, 16), np.float32), np.full((2, 16), 2, np.float32)
    inputs = [grpcclient.InferInput("INPUT0", [2, 16], "FP32"), grpcclient.InferInput("INPUT1", [2, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    with grpcclient.InferenceServerClient(handle.grpc_url) as c:
        assert c.is_server_ready() and c.is_model_ready("simple")
        assert c.get_model_metadata("simple", as_json=True)["name"] == "simple"
        np.testing.assert_array_equal(c.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)
        bad = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
        bad.set_data_from_numpy(a)
        with pytest.raises(InferenceServerException, match="INPUT1") as error:
            c.infer("simple", [bad])
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as error:
            c.infer("no_such_model", inputs)
        assert error.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_decoupled_stream_through_a_frontend(server):
    import queue

    import tritonclient.grpc as grpcclient

    answers: queue.Queue = queue.Queue()
    x = np.array([1.0, 2.0, 3.0], np.float32)
    inp = grpcclient.InferInput("INPUT", [3], "FP32")
    inp.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(server[0].grpc_url) as c:
        c.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=30)
        for i in range(3):
            c.async_stream_infer("decoupled", [inp], request_id=str(i))
        got = [answers.get(timeout=30) for _ in range(3)]
        c.stop_stream()
    assert all(error is None for _, error in got), got
    assert sorted(r.get_response().id for r, _ in got) == ["0", "1", "2"]
    for result, _ in got:
        np.testing.assert_array_equal(result.as_numpy("INPUT_OUT"), x)


def test_raw_binary_body(raw):
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    # "queued" waits 20 s to batch; "types" has many inputs: use a one-input model through the
    # raw path, with a timeout that expires (the queue rejects it: a 503, not a hang).
    r = raw.post("/v2/models/queued/infer", content=x.tobytes(),
                 headers={"Inference-Header-Content-Length": "0", "X-Request-Timeout-Ms": "200"})
    assert r.status_code in (503, 504, 400), r.text


def test_metadata_config_readiness_statistics(client, raw):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata("simple")
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    assert client.get_model_config("simple")["max_batch_size"] == 64
    assert client.is_model_ready("simple") and not client.is_model_ready("nope")
    assert client.get_server_metadata()["name"] == "deepserve"
    stats = client.get_inference_statistics("simple")["model_stats"]
    assert stats and stats[0]["name"] == "simple"
    assert raw.post("/v2/repository/index").status_code == 200


def test_generate_and_decoupled_stream(raw):
    r = raw.post("/v2/models/simple/generate", json={"INPUT0": [1.0] * 16, "INPUT1": [2.0] * 16})
    assert r.status_code == 200, r.text
    assert r.json()["OUTPUT0"] == [3.0] * 16
    with raw.stream("POST", "/v2/models/decoupled/generate_stream", json={"INPUT": [1.0, 2.0]}) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) == 1 and "INPUT_OUT" in events[0]


def test_bad_input_is_4xx_and_counted_once(client, raw, server):
    url = f"http://{server[0].http_url}"

    def failures(reason: str) -> float:
        return sum(v for labels, v in fx.metric_samples(url, "deepserve_request_failure_total")
                   if labels.get("model") == "simple" and labels.get("reason") == reason)

    invalid0 = failures("INVALID")
    bad = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple", [bad])
    assert "400" in str(info.value.status()) or info.value.status() is None
    assert raw.post("/v2/models/simple/infer", content=b"{not json").status_code == 400
    nope = raw.post("/v2/models/nope/infer", json={
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]})
    assert nope.status_code == 404, nope.text
    assert failures("INVALID") == invalid0 + 2


def test_metrics_count_successes(raw, server):
    url = f"http://{server[0].http_url}"
    def successes() -> float:
        return sum(v for labels, v in fx.metric_samples(url, "deepserve_request_success_total")
                   if labels.get("model") == "simple")

    before = successes()
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16} for n in ("INPUT0", "INPUT1")]}
    for _ in range(7):  # over fresh connections: whichever frontend answers, one registry counts
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.post("/v2/models/simple/infer", json=body).status_code == 200
    assert successes() == before + 7


def test_repository_unload_and_load(client):
    assert client.is_model_ready("reloadable")
    client.unload_model("reloadable")
    deadline = time.monotonic() + 5  # the frontends' metadata caches follow the model process's state
    while client.is_model_ready("reloadable") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.is_model_ready("reloadable")
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("reloadable")
    client.load_model("reloadable")
    assert client.is_model_ready("reloadable")
    assert client.get_model_metadata("reloadable")["name"] == "reloadable"


def test_client_gone_is_counted_once(server):
    url = f"http://{server[0].http_url}"

    def failures(reason: str) -> float:
        return sum(v for labels, v in fx.metric_samples(url, "deepserve_request_failure_total")
                   if labels.get("model") == "queued" and labels.get("reason") == reason)

    canceled0 = failures("CANCELED")
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    with pytest.raises(httpx.TimeoutException):  # "queued" waits 20 s to batch: the client leaves first
        httpx.post(f"{url}/v2/models/queued/infer", json=body, timeout=0.5)
    deadline = time.monotonic() + 10
    while failures("CANCELED") == canceled0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # a second count would land by now
    assert failures("CANCELED") == canceled0 + 1
    assert sum(v for labels, v in fx.metric_samples(url, "deepserve_inflight_requests")
               if labels.get("model") == "queued") == 0


def test_sigterm_drains_and_every_process_exits(repo):
    with fx.server_process(repo, extra_args=ARGS, extra_env={"DEEPSERVE_DRAIN_SECONDS": "1"}) as (handle, proc):
        frontends = _children(proc.pid)
        assert len(frontends) >= 2
        url = f"http://{handle.http_url}"
        # A request queued in "queued" (20 s batching delay) is in flight when SIGTERM comes.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v2/models/queued/infer", timeout=30, json={
                "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            ready = httpx.get(f"{url}/v2/health/ready", timeout=5)
            assert ready.status_code == 400  # draining: not ready, still listening
            r = httpx.post(f"{url}/v2/models/simple/infer", timeout=5, json={
                "inputs": [{"name": n, "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}
                           for n in ("INPUT0", "INPUT1")]})
            assert r.status_code == 503 and "retry-after" in r.headers
            assert r.headers.get("connection") == "close"
            _grpc_is_draining(handle.grpc_url)
            # the queued request: 20 s queue delay > 30 s drain timeout? No: the drain waits for
            # it up to the timeout (default 30 s); end the drain with a second signal.
            proc.send_signal(signal.SIGTERM)
            answer = pending.result(timeout=30)
            assert answer.status_code == 503, answer.text
        assert proc.wait(timeout=30) == 0
        for pid in frontends:
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                try:
                    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                        break
                except OSError:
                    break
                time.sleep(0.1)
            assert not _alive(pid), f"frontend {pid} is still running"
        log = handle.log()
        assert "Traceback" not in log and "leaked" not in log, log


def _grpc_is_draining(url: str) -> None:
    """Health NOT_SERVING, ServerReady false, a new inference UNAVAILABLE, on every frontend
    (one channel per connection attempt: the kernel picks the process)."""
    import grpc
    import tritonclient.grpc as grpcclient
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for _ in range(4):
        with grpc.insecure_channel(url) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpcclient.InferenceServerClient(url) as c:
            assert not c.is_server_ready()
            inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
            for i in inputs:
                i.set_data_from_numpy(np.zeros((1, 16), np.float32))
            with pytest.raises(InferenceServerException) as error:
                c.infer("simple", inputs)
            assert error.value.status() == "StatusCode.UNAVAILABLE"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_model_process_killed_frontends_exit(repo):
    with fx.server_process(repo, extra_args=ARGS) as (handle, proc):
        frontends = _children(proc.pid)
        assert len(frontends) >= 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in frontends) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in frontends)


def test_default_is_one_process(repo):
    with fx.server_process(repo, extra_args=("--no-grpc",)) as (handle, proc):
        assert _children(proc.pid) == [] or all(
            "frontend" not in Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in _children(proc.pid))
        assert subprocess.run(["true"]).returncode == 0
