"""Bad input of every kind gets a clear 4xx and the server keeps serving; overload is
refused fast with Retry-After; a client that disconnects is dropped from the queue."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import httpx
import pytest

from tests.integration import server_fixtures as fx

DIGIT = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}


@pytest.fixture
def raw(http_server):
    with httpx.Client(base_url=f"http://{http_server.http_url}", timeout=30) as c:
        yield c


def binary_body(header: dict, payload: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + payload, {"Inference-Header-Content-Length": str(len(head))}


CASES = {
    "wrong datatype": ({"inputs": [{**DIGIT, "datatype": "INT32", "data": [0] * 64}]}, 400, "datatype"),
    "wrong shape": ({"inputs": [{**DIGIT, "shape": [1, 64]}]}, 400, "shape"),
    "count not matching the shape": ({"inputs": [{**DIGIT, "data": [0.0] * 63}]}, 400, "elements"),
    "missing input": ({"inputs": []}, 400, "inputs"),
    "unknown input": ({"inputs": [DIGIT, {**DIGIT, "name": "other"}]}, 400, "other"),
    "negative dim": ({"inputs": [{**DIGIT, "shape": [1, -1, 8, 8]}]}, 400, "non-negative"),
    "absurd dims": ({"inputs": [{**DIGIT, "shape": [2**40, 2**40, 8, 8]}]}, 400, "elements"),
    "batch over max_batch_size": ({"inputs": [{**DIGIT, "shape": [65, 1, 8, 8], "data": [0.0] * 64 * 65}]}, 400, "max_batch_size"),
    "strings where numbers go": ({"inputs": [{**DIGIT, "data": ["a"] * 64}]}, 400, "FP32"),
    "unknown datatype": ({"inputs": [{**DIGIT, "datatype": "FLOAT"}]}, 400, "datatype"),
    "unknown output": ({"inputs": [DIGIT], "outputs": [{"name": "nope"}]}, 400, "nope"),
    "bad priority": ({"inputs": [DIGIT], "parameters": {"priority": "high"}}, 400, "priority"),
    "ragged data": ({"inputs": [{**DIGIT, "data": [[0.0], [0.0, 1.0]]}]}, 400, "ragged"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_json_requests_get_a_clear_400(raw, case):
    body, status, word = CASES[case]
    r = raw.post("/v2/models/digits/infer", json=body)
    assert r.status_code == status, r.text
    assert word in r.json()["error"]


def test_malformed_json(raw):
    r = raw.post("/v2/models/digits/infer", content=b'{"inputs": [')
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_unknown_model_and_version_are_404(raw):
    assert raw.post("/v2/models/nope/infer", json={"inputs": [DIGIT]}).status_code == 404
    r = raw.post("/v2/models/digits/versions/9/infer", json={"inputs": [DIGIT]})
    assert r.status_code == 404 and "version" in r.json()["error"]
    assert raw.get("/v2/models/nope").status_code == 404
    assert raw.post("/v2/models/digits/versions/x1/infer", json={"inputs": [DIGIT]}).status_code == 400


def test_binary_header_longer_than_the_body(raw):
    r = raw.post("/v2/models/digits/infer", content=b"{}", headers={"Inference-Header-Content-Length": "500"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_binary_size_larger_than_what_the_body_holds(raw):
    header = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}
    body, headers = binary_body(header, b"\0" * 100)
    r = raw.post("/v2/models/digits/infer", content=body, headers=headers)
    assert r.status_code == 400 and "remain" in r.json()["error"]


def test_binary_size_not_matching_the_shape(raw):
    header = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": 128}}]}
    body, headers = binary_body(header, b"\0" * 128)
    r = raw.post("/v2/models/digits/infer", content=body, headers=headers)
    assert r.status_code == 400 and "needs 256" in r.json()["error"]


def test_invalid_bytes_tensors(raw):
    # a length prefix that claims more than there is
    header = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}
    body, headers = binary_body(header, struct.pack("<I", 50) + b"ab")
    r = raw.post("/v2/models/strings/infer", content=body, headers=headers)
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    # valid framing but not UTF-8, where the model takes strings
    payload = struct.pack("<I", 2) + b"\xff\xfe"
    header["inputs"][0]["parameters"]["binary_data_size"] = len(payload)
    body, headers = binary_body(header, payload)
    r = raw.post("/v2/models/strings/infer", content=body, headers=headers)
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    # JSON numbers where strings are expected
    r = raw.post("/v2/models/strings/infer", json={"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [1]}]})
    assert r.status_code == 400 and "strings" in r.json()["error"]
    # and a good one, through the auto-completed config
    r = raw.post("/v2/models/strings/infer", json={"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["hé"]}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["hé"]


def test_fp16_in_json_is_refused(raw):
    r = raw.post("/v2/models/types/infer", json={"inputs": [{"name": "H", "shape": [1], "datatype": "FP16", "data": [1.0]}]})
    assert r.status_code == 400 and "binary" in r.json()["error"]


def test_body_over_the_limit_is_refused_before_it_is_read(http_server):
    # Announce a body far over the limit, send only the headers: the answer must come
    # without the server waiting for the body.
    with socket.create_connection(("127.0.0.1", http_server.http_port), timeout=10) as s:
        s.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {fx.SMALL_MESSAGE_BYTES * 4}\r\n\r\n".encode()
        )
        reply = b""
        while b"limit" not in reply and (chunk := s.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"limit" in reply


def test_chunked_body_over_the_limit_is_refused(raw):
    def chunks():
        for _ in range(fx.SMALL_MESSAGE_BYTES // (1 << 20) + 2):
            yield b" " * (1 << 20)

    r = raw.post("/v2/models/digits/infer", content=chunks())
    assert r.status_code == 413


def test_wrong_method_and_unknown_path(raw):
    r = raw.get("/v2/models/digits/infer")
    assert r.status_code == 405 and r.json()["error"]
    assert raw.get("/v2/nothing/here").status_code == 404


def test_server_still_serves_after_all_that(raw):
    r = raw.post("/v2/models/digits/infer", json={"inputs": [DIGIT]})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 10]


# ---- overload, timeouts, disconnects (model "bounded": 30 s delay, max_batch 8, queue of 4) ----

ROW = {"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}


def bounded_stats(raw) -> dict:
    return raw.get("/v2/models/bounded/stats").json()["model_stats"][0]


async def test_full_queue_is_refused_at_once_with_retry_after(http_server):
    url = f"http://{http_server.http_url}/v2/models/bounded/infer"
    async with httpx.AsyncClient(timeout=60) as client:
        # four requests wait in the queue (30 s batching delay), each for at most 2 s
        patient = {"inputs": [ROW], "parameters": {"timeout": 2_000_000}}
        queued = [asyncio.create_task(client.post(url, json=patient)) for _ in range(4)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        refused = await client.post(url, json={"inputs": [ROW]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "full" in refused.json()["error"] and time.monotonic() - started < 1.0
        # every queued request still gets exactly one answer: its timeout
        for r in await asyncio.gather(*queued):
            assert r.status_code == 503 and "timed out" in r.json()["error"]


def test_request_timeout_rejects_with_503(raw):
    started = time.monotonic()
    r = raw.post("/v2/models/bounded/infer", json={"inputs": [ROW], "parameters": {"timeout": 200_000}})
    assert r.status_code == 503 and "timed out" in r.json()["error"]
    assert 0.15 < time.monotonic() - started < 5


def test_disconnected_client_is_dropped_before_it_runs(raw, http_server):
    before = bounded_stats(raw)
    body = json.dumps({"inputs": [ROW]}).encode()
    with socket.create_connection(("127.0.0.1", http_server.http_port)) as s:
        s.sendall(b"POST /v2/models/bounded/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)  # queued now (30 s batching delay)
    time.sleep(0.3)
    # A batch of exactly 8 rows runs at once: had the dropped row still been queued,
    # it would have joined (8 + 1 > 8 means it runs first as its own batch instead).
    r = raw.post("/v2/models/bounded/infer", json={"inputs": [{**ROW, "shape": [8, 4], "data": [0.0] * 32}]})
    assert r.status_code == 200
    after = bounded_stats(raw)
    assert after["inference_count"] - before["inference_count"] == 8
    assert after["execution_count"] - before["execution_count"] == 1
    assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
