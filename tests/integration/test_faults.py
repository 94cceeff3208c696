"""Fault isolation through the real server: a Python model told to raise, hang, or answer
garbage fails only the requests of that batch, with a 500 / INTERNAL that says why; a hung
instance is answered at the execution timeout and replaced; the model and its neighbours
keep serving."""

from __future__ import annotations

import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration import server_fixtures as fx

MODEL = '''
import threading
import numpy as np

RELEASE = threading.Event()  # a hung batch waits here (the test never sets it)


class Faulty:
    def execute(self, inputs):
        mode = int(inputs["MODE"].reshape(-1)[0])
        x = inputs["X"]
        if mode == 1:
            raise RuntimeError("told to raise")
        if mode == 2:
            RELEASE.wait(120)
        if mode == 3:
            return {"Y": x.astype(np.int64)}
        if mode == 4:
            return {"Y": np.zeros((x.shape[0], 3), np.float32)}
        return {"Y": x * 2}
'''

CONFIG = '''
name: "faulty"
backend: "python"
max_batch_size: 8
input [ { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU count: 2 } ]
parameters [
  { key: "execution_timeout_ms" value: { string_value: "1000" } },
  { key: "reload_after_failures" value: { string_value: "2" } }
]
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo: Path = tmp_path_factory.mktemp("faults")
    fx.write_model(repo, "faulty", CONFIG, {"model.py": textwrap.dedent(MODEL)})
    fx.write_simple(repo, "simple")
    with fx.running_server(repo) as handle:
        yield handle


def call(url: str, mode: int) -> httpx.Response:
    body = {"inputs": [{"name": "MODE", "shape": [1, 1], "datatype": "INT32", "data": [mode]},
                       {"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]}
    return httpx.post(f"http://{url}/v2/models/faulty/infer", json=body, timeout=60)


@pytest.mark.parametrize(("mode", "message"), [
    (1, "told to raise"), (3, "is int64, but the model declares FP32"), (4, "has shape [1, 3], but the model declares [1, 2]"),
])
def test_a_faulty_batch_fails_alone_with_the_reason(server, mode, message):
    response = call(server.http_url, mode)
    assert response.status_code == 500 and message in response.json()["error"], response.text
    assert "Traceback" not in response.text
    good = call(server.http_url, 0)
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [3.0, 5.0]


def test_a_hung_instance_is_answered_at_the_timeout_and_replaced_while_others_serve(server):
    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(call, server.http_url, 2)
        # While one instance hangs, the other answers.
        answers = [call(server.http_url, 0) for _ in range(5)]
        response = hung.result()
    assert all(a.status_code == 200 for a in answers)
    assert response.status_code == 500 and "execution timeout (1000 ms)" in response.json()["error"], response.text
    # Every later request is served (the hung instance was replaced by a fresh one), over gRPC too.
    with ThreadPoolExecutor(8) as pool:
        later = list(pool.map(lambda _: call(server.http_url, 0), range(16)))
    assert all(r.status_code == 200 for r in later)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensors = [grpcclient.InferInput("MODE", [1, 1], "INT32"), grpcclient.InferInput("X", [1, 2], "FP32")]
    tensors[0].set_data_from_numpy(np.array([[1]], np.int32))
    tensors[1].set_data_from_numpy(np.ones((1, 2), np.float32))
    with pytest.raises(InferenceServerException, match="told to raise") as raised:
        client.infer("faulty", tensors)
    assert raised.value.status() == "StatusCode.INTERNAL"
    assert "replacing it" in server.log()


def test_neighbours_are_untouched(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    a, b = (grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1"))
    a.set_data_from_numpy(np.arange(16, dtype=np.float32).reshape(1, 16))
    b.set_data_from_numpy(np.ones((1, 16), np.float32))
    assert client.infer("simple", [a, b]).as_numpy("OUTPUT0").tolist() == [list(range(1, 17))]
    assert httpx.get(f"http://{server.http_url}/v2/health/ready").status_code == 200


def metric_counts(url: str, model: str) -> dict[str, float]:
    """success and failure{reason} totals of one model, from /metrics."""
    counts: dict[str, float] = {}
    for metric in ("deepserve_request_success_total", "deepserve_request_failure_total"):
        for labels, value in fx.metric_samples(f"http://{url}", metric):
            if labels["model"] == model:
                key = labels.get("reason", "SUCCESS")
                counts[key] = counts.get(key, 0.0) + value
    return counts


def test_under_concurrent_faults_every_request_is_answered_once_and_counted_exactly(server):
    """96 concurrent requests over HTTP and gRPC mixing good ones, raising and garbage-
    answering batches, a hang past the execution timeout and malformed inputs: what the
    clients saw equals what /metrics counted, reason by reason."""
    plan = [0] * 48 + [1] * 16 + [3] * 12 + [4] * 8 + [2] * 2 + [-1] * 10  # -1: a malformed request
    before = metric_counts(server.http_url, "faulty")
    grpc = grpcclient.InferenceServerClient(server.grpc_url)

    def one(args) -> str:
        index, mode = args
        if mode == -1:
            bad = {"inputs": [{"name": "MODE", "shape": [1, 1], "datatype": "INT32", "data": [0]},
                              {"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
            status = httpx.post(f"http://{server.http_url}/v2/models/faulty/infer", json=bad, timeout=60).status_code
            return {400: "INVALID"}.get(status, str(status))
        if index % 2:  # every other request over gRPC
            tensors = [grpcclient.InferInput("MODE", [1, 1], "INT32"), grpcclient.InferInput("X", [1, 2], "FP32")]
            tensors[0].set_data_from_numpy(np.array([[mode]], np.int32))
            tensors[1].set_data_from_numpy(np.array([[1.5, 2.5]], np.float32))
            try:
                result = grpc.infer("faulty", tensors, client_timeout=60)
            except InferenceServerException as exc:
                return {"StatusCode.INTERNAL": "BACKEND"}.get(exc.status(), exc.status())
            return "SUCCESS" if result.as_numpy("Y").tolist() == [[3.0, 5.0]] else "WRONG"
        response = call(server.http_url, mode)
        if response.status_code == 200:
            return "SUCCESS" if response.json()["outputs"][0]["data"] == [3.0, 5.0] else "WRONG"
        return {500: "BACKEND"}.get(response.status_code, str(response.status_code))

    with ThreadPoolExecutor(32) as pool:
        seen = list(pool.map(one, enumerate(plan)))
    clients: dict[str, float] = {}
    for outcome in seen:
        clients[outcome] = clients.get(outcome, 0.0) + 1
    assert clients == {"SUCCESS": 48.0, "BACKEND": 38.0, "INVALID": 10.0}, clients
    after = metric_counts(server.http_url, "faulty")
    counted = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if after.get(k, 0.0) != before.get(k, 0.0)}
    assert counted == clients
