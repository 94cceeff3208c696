"""Exact accounting through the real server: every failed inference request is counted
once, with its reason, on every route and protocol — decoding failures included — and a
request for an unknown model is counted without a model label."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration import server_fixtures as fx


def failures(url: str) -> dict[tuple[str, str], float]:
    """(model, reason) -> count, summed over versions, from /metrics."""
    counts: dict[tuple[str, str], float] = {}
    for labels, value in fx.metric_samples(url, "deepserve_request_failure_total"):
        key = (labels["model"], labels["reason"])
        counts[key] = counts.get(key, 0.0) + value
    return counts


def delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after) if after.get(k, 0.0) != before.get(k, 0.0)}


@pytest.fixture(scope="module")
def url(http_server) -> str:
    return f"http://{http_server.http_url}"


DIGIT = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}
HTTP_FAILURES = [
    # (method, path, body, status, (model label, reason))
    ("post", "/v2/models/digits/infer", {"inputs": [{**DIGIT, "data": [0.5] * 63}]}, 400, ("digits", "INVALID")),
    ("post", "/v2/models/digits/infer", b"{not json", 400, ("digits", "INVALID")),
    ("post", "/v2/models/digits/infer", {"inputs": [{**DIGIT, "datatype": "INT8", "data": [1] * 64}]}, 400, ("digits", "INVALID")),
    ("post", "/v2/models/nope/infer", {"inputs": [{**DIGIT, "data": [0.5] * 64}]}, 404, ("", "NOT_FOUND")),
    ("post", "/v2/models/digits/generate", {"bogus": 1}, 400, ("digits", "INVALID")),
    ("post", "/v2/models/digits/generate_stream", b"[1, 2]", 400, ("digits", "INVALID")),
    ("post", "/v1/classify", {"image": "not base64!"}, 400, ("", "INVALID")),
    ("post", "/v1/classify", {"image": "aGVsbG8=", "top_k": "x"}, 400, ("digits_classify", "INVALID")),
    ("post", "/v1/images/generations", {"prompt": "a cat"}, 400, ("digits_diffusion", "INVALID")),
    ("post", "/v1/images/generations", {"prompt": "3", "model": "nope"}, 404, ("", "NOT_FOUND")),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "counted"), HTTP_FAILURES)
def test_every_http_failure_is_counted_once_with_its_reason(url, method, path, body, status, counted):
    before = failures(url)
    content = body if isinstance(body, bytes) else None
    response = httpx.request(method, f"{url}{path}", content=content, json=None if content else body, timeout=30)
    assert response.status_code == status, response.text
    assert delta(before, failures(url)) == {counted: 1.0}


def test_grpc_failures_are_counted_once_unary_and_streamed(http_server, url):
    client = grpcclient.InferenceServerClient(http_server.grpc_url)
    bad = grpcclient.InferInput("input", [1, 1, 8, 7], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 8, 7), np.float32))
    before = failures(url)
    with pytest.raises(InferenceServerException):
        client.infer("digits", [bad])
    with pytest.raises(InferenceServerException):
        client.infer("nope", [bad])
    errors = []
    client.start_stream(callback=lambda result, error: errors.append(error))
    client.async_stream_infer("digits", [bad])
    client.stop_stream()  # waits for the stream's answers
    assert len(errors) == 1 and errors[0] is not None
    assert delta(before, failures(url)) == {("digits", "INVALID"): 2.0, ("", "NOT_FOUND"): 1.0}


def test_a_success_is_not_counted_as_a_failure(url):
    before = failures(url)
    response = httpx.post(f"{url}/v2/models/digits/infer", json={"inputs": [{**DIGIT, "data": [0.5] * 64}]}, timeout=30)
    assert response.status_code == 200
    assert delta(before, failures(url)) == {}


def test_deadlines_from_the_http_header_and_grpc_are_enforced_in_the_queue(http_server, url):
    """``bounded`` waits up to 30 s for a batch to fill: a request with a shorter deadline
    is answered (503, TIMEOUT) when its deadline passes, and is never run."""
    body = {"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    before = failures(url)
    response = httpx.post(f"{url}/v2/models/bounded/infer", json=body, headers={"X-Request-Timeout-Ms": "200"}, timeout=30)
    assert response.status_code == 503 and "deadline" in response.json()["error"], response.text
    assert response.headers["Retry-After"]
    bad = httpx.post(f"{url}/v2/models/bounded/infer", json=body, headers={"X-Request-Timeout-Ms": "soon"}, timeout=30)
    assert bad.status_code == 400 and "x-request-timeout-ms" in bad.json()["error"]
    assert delta(before, failures(url)) == {("bounded", "TIMEOUT"): 1.0, ("bounded", "INVALID"): 1.0}

    client = grpcclient.InferenceServerClient(http_server.grpc_url)
    tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    before = failures(url)
    with pytest.raises(InferenceServerException, match="(?i)deadline"):
        client.infer("bounded", [tensor], client_timeout=0.3)
    deadline = time.monotonic() + 30  # the server answers (or is cancelled) around the deadline
    while not delta(before, failures(url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    counted = delta(before, failures(url))
    assert counted in ({("bounded", "TIMEOUT"): 1.0}, {("bounded", "CANCELED"): 1.0})
    stats = httpx.get(f"{url}/v2/models/bounded/stats").json()["model_stats"][0]
    assert stats["execution_count"] == 0  # neither request ever reached the runtime


def test_past_the_servers_inflight_limit_requests_are_refused_at_once(tmp_path):
    """``--max-inflight 2``: with two requests held in ``bounded``'s 30 s batching window, a
    third is refused with 503 + Retry-After before its body is read, counted OVERLOAD."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.conftest import BOUNDED_CONFIG

    fx._save(fx.identity_model({"INPUT": (fx.TensorProto.FLOAT, ["batch", 4])}), tmp_path / "bounded" / "1" / "model.onnx")
    (tmp_path / "bounded" / "config.pbtxt").write_text(BOUNDED_CONFIG)
    body = {"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    with fx.running_server(tmp_path, extra_env={"DEEPSERVE_MAX_INFLIGHT": "2"}) as server:
        url = f"http://{server.http_url}"
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, f"{url}/v2/models/bounded/infer", json=body,
                                headers={"X-Request-Timeout-Ms": "3000"}, timeout=30) for _ in range(2)]
            deadline = time.monotonic() + 20  # until both are queued (a bound, not a timing)
            while time.monotonic() < deadline:
                stats = httpx.get(f"{url}/v2/models/bounded/stats").json()["model_stats"][0]
                if httpx.get(f"{url}/metrics").text.count('deepserve_pending_requests{model="bounded",version="1"} 2.0'):
                    break
                time.sleep(0.02)
            before = failures(url)
            refused = httpx.post(f"{url}/v2/models/bounded/infer", json=body, timeout=30)
            assert refused.status_code == 503 and "in flight" in refused.json()["error"], refused.text
            assert refused.headers["Retry-After"] == "1"
            assert delta(before, failures(url)) == {("bounded", "OVERLOAD"): 1.0}
            assert [f.result().status_code for f in held] == [503, 503]  # their own deadlines passed
        assert stats["execution_count"] == 0
        ok = httpx.post(f"{url}/v2/models/bounded/infer", json={"inputs": [
            {"name": "INPUT", "shape": [8, 4], "datatype": "FP32", "data": [0.5] * 32}]}, timeout=30)
        assert ok.status_code == 200  # a full batch runs at once; the places were given back


def test_a_client_that_leaves_is_counted_once_as_canceled(url):
    """A request waiting in ``bounded``'s 30 s batching window whose client gives up: the
    server drops it (it never runs) and counts it once, CANCELED."""
    body = {"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    before = failures(url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v2/models/bounded/infer", json=body, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 30  # the server notices the closed connection (a bound, not a timing)
    while not delta(before, failures(url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    full = {"inputs": [{"name": "INPUT", "shape": [8, 4], "datatype": "FP32", "data": [0.5] * 32}]}
    assert httpx.post(f"{url}/v2/models/bounded/infer", json=full, timeout=30).status_code == 200  # a later request's round trip
    assert delta(before, failures(url)) == {("bounded", "CANCELED"): 1.0}
