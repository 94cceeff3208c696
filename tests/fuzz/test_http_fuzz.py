"""Hypothesis-generated v2 infer requests over HTTP: random shapes, datatypes, binary sizes
(Inference-Header-Content-Length + raw bytes), parameters, encodings; truncated, lying and
oversized bodies. The server must answer every one without a 5xx other than 503, and stay
healthy."""

from __future__ import annotations

import gzip
import json
import socket
import urllib.parse
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import Tally, assert_healthy, fuzz_settings
from tests.fuzz.strategies import Tensor, json_values, model_requests
from tests.integration import server_fixtures as fx

ALLOWED = {200, 400, 404, 413, 503}


@pytest.fixture(scope="module")
def client(fuzz_server: fx.ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{fuzz_server.http_url}", timeout=30) as client:
        yield client
    assert_healthy(fuzz_server)


def infer_path(model: str, version: str) -> str:
    quoted = urllib.parse.quote(model, safe="")
    if version:
        return f"/v2/models/{quoted}/versions/{urllib.parse.quote(version, safe='')}/infer"
    return f"/v2/models/{quoted}/infer"


def _json_data(tensor: Tensor) -> list:
    if tensor.values.dtype == object:
        return [_text(b) for b in tensor.values]
    return tensor.values.tolist()


def _text(item: bytes) -> str:
    try:
        return item.decode()
    except UnicodeDecodeError:
        return item.decode("latin-1")


def build_body(
    data: st.DataObject, mutate: bool, inputs: list[Tensor], outputs, parameters, request_id
) -> tuple[dict[str, str], bytes]:
    """Headers and body of an infer request; without ``mutate`` a well-formed one."""
    entries, blobs = [], []
    for tensor in inputs:
        entry: dict = {"name": tensor.name, "shape": tensor.shape, "datatype": tensor.datatype}
        modes = ["json", "binary", "binary", "none", "junk"] if mutate else ["json", "binary"]
        if tensor.datatype in ("FP16", "BF16") and not mutate:
            modes = ["binary"]
        mode = data.draw(st.sampled_from(modes), label="mode")
        if mode == "json":
            entry["data"] = _json_data(tensor)
            if data.draw(st.integers(0, 7), label="nest") == 0 and tensor.shape and entry["data"]:
                try:
                    entry["data"] = np.asarray(entry["data"], dtype=object).reshape(tensor.shape).tolist()
                except ValueError:
                    pass
        elif mode == "binary":
            size = len(tensor.raw)
            if mutate and data.draw(st.integers(0, 7), label="lie") == 0:
                size = data.draw(st.sampled_from([size + 1, max(size - 1, 0), 0, 2**40]) | json_values, label="size")
            entry["parameters"] = {"binary_data_size": size}
            blobs.append(tensor.raw)
        elif mode == "junk":
            entry["data"] = data.draw(json_values, label="junk data")
            if data.draw(st.booleans(), label="junk params"):
                entry["parameters"] = data.draw(json_values, label="junk tensor parameters")
        entries.append(entry)
    header: dict = {"inputs": entries}
    if outputs:
        header["outputs"] = [{"name": n, "parameters": p} for n, p in outputs]
    if parameters:
        header["parameters"] = parameters
    if request_id != "":
        header["id"] = request_id
    for key in data.draw(st.lists(st.sampled_from(["inputs", "outputs", "parameters", "id"]), max_size=int(mutate)), label="junk keys"):
        header[key] = data.draw(json_values, label=f"junk {key}")
    if mutate and data.draw(st.integers(0, 29), label="not an object") == 0:
        header = data.draw(json_values, label="top level")
    json_part = json.dumps(header).encode()  # stdlib: ints past 64 bits and NaN go out as they are
    body = json_part + b"".join(blobs)
    headers = {"content-type": "application/json"}
    if blobs or data.draw(st.integers(0, 5), label="header anyway") == 0:
        length = str(len(json_part))
        if mutate and data.draw(st.integers(0, 7), label="lie header") == 0:
            length = data.draw(st.sampled_from(["0", "-1", "abc", "+3", "0x10", "1e3", str(len(body) + 10), str(len(json_part) - 1)]))
        headers["inference-header-content-length"] = length
    if mutate and data.draw(st.integers(0, 9), label="truncate") == 0:
        body = body[: data.draw(st.integers(0, len(body)), label="cut")]
    encodings = [None, None, None, None, "gzip", "deflate", "br", "gzip-bad"] if mutate else [None, None, "gzip", "deflate"]
    encoding = data.draw(st.sampled_from(encodings), label="encoding")
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "gzip-bad":
        body, encoding = gzip.compress(body)[:-5], "gzip"
    if encoding:
        headers["content-encoding"] = encoding
    if data.draw(st.integers(0, 5), label="accept-encoding") == 0:
        headers["accept-encoding"] = data.draw(st.sampled_from(["gzip", "deflate", "br", "gzip;q=0, deflate", "*"]))
    return headers, body


def check(tally: Tally, target: str, response: httpx.Response, request: str) -> None:
    bad = response.status_code >= 500 and response.status_code != 503
    tally.record(target, response.status_code, bad)
    assert not bad, f"{response.status_code} {response.text[:500]!r} for {request}"
    assert response.status_code in ALLOWED, f"{response.status_code} {response.text[:500]!r} for {request}"
    if response.status_code == 200:
        length = response.headers.get("inference-header-content-length")
        head = response.content[: int(length)] if length is not None else response.content
        assert "outputs" in json.loads(head)
    else:
        assert "error" in response.json()


@fuzz_settings(200)
@given(request=model_requests(), data=st.data())
def test_infer_requests(client: httpx.Client, tally: Tally, request, data) -> None:
    mutate, model, version, inputs, outputs, parameters, request_id = request
    headers, body = build_body(data, mutate, inputs, outputs, parameters, request_id)
    path = infer_path(model, version)
    response = client.post(path, content=body, headers=headers)
    check(tally, "http_infer", response, f"POST {path} {headers} {body[:2000]!r}")
    if not mutate:  # a well-formed request to a model that serves it
        assert response.status_code == 200, f"{response.status_code} {response.text[:500]} for POST {path} {headers} {body[:2000]!r}"


@fuzz_settings(100)
@given(
    model=st.sampled_from(["simple", "types", "strings", "decoupled", "add_sub_twice", "no_such_model"]),
    body=st.binary(max_size=512) | st.sampled_from([b"", b"{}", b"[]", b"null", b'{"inputs": []}']),
    header=st.sampled_from([None, "0", "1", "4", "17", "99999"]),
    content_type=st.sampled_from(["application/json", "application/octet-stream", "text/plain", ""]),
)
def test_raw_bodies(client: httpx.Client, tally: Tally, model: str, body: bytes, header, content_type: str) -> None:
    """Random bytes, raw binary requests (Inference-Header-Content-Length: 0) of any length."""
    headers = {"content-type": content_type} if content_type else {}
    if header is not None:
        headers["inference-header-content-length"] = header
    response = client.post(infer_path(model, ""), content=body, headers=headers)
    check(tally, "http_raw", response, f"{model} {headers} {body!r}")


def _raw_exchange(port: int, head: bytes, body: bytes, half_close: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


@fuzz_settings(40)
@given(
    body=st.binary(min_size=1, max_size=256),
    declared_extra=st.integers(1, 10_000),
    chunked=st.booleans(),
    model=st.sampled_from(["simple", "strings"]),
)
def test_truncated_bodies(fuzz_server: fx.ServerHandle, tally: Tally, body: bytes, declared_extra: int, chunked: bool, model: str) -> None:
    """The client promises more than it sends (Content-Length, or an unfinished chunked body)
    and stops: the server must drop the request (or answer 400), never hang or crash."""
    path = infer_path(model, "").encode()
    if chunked:
        head = b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        payload = f"{len(body) + declared_extra:x}\r\n".encode() + body
    else:
        head = b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-length: " + str(len(body) + declared_extra).encode() + b"\r\nconnection: close\r\n\r\n"
        payload = body
    answer = _raw_exchange(fuzz_server.http_port, head, payload, half_close=True)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else "closed"
    bad = isinstance(status, int) and status >= 500 and status != 503
    tally.record("http_truncated", status, bad)
    assert not bad, answer[:500]
    with httpx.Client(timeout=30) as client:
        assert client.get(f"http://{fuzz_server.http_url}/v2/health/live").status_code == 200


@fuzz_settings(6)
@given(kind=st.sampled_from(["content-length", "chunked", "gzip-bomb", "binary-size"]), extra=st.integers(1, 4096))
def test_oversized_bodies(client: httpx.Client, tally: Tally, kind: str, extra: int) -> None:
    """Bodies over --max-request-bytes: 413 (from Content-Length, while reading a chunked
    body, or while decompressing); a binary_data_size past the body: 400."""
    limit = fx.SMALL_MESSAGE_BYTES
    headers: dict[str, str] = {"content-type": "application/json"}
    expected = 413
    if kind == "content-length":
        response = client.post(infer_path("simple", ""), content=b"x" * (limit + extra), headers=headers)
    elif kind == "chunked":
        chunk = b"y" * (1 << 20)
        response = client.post(infer_path("simple", ""), content=iter([chunk] * (limit // len(chunk) + 1)), headers=headers)
    elif kind == "gzip-bomb":
        headers["content-encoding"] = "gzip"
        response = client.post(infer_path("simple", ""), content=gzip.compress(b"{" + b" " * (limit + extra)), headers=headers)
    else:
        header = json.dumps(
            {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": limit + extra}}]}
        ).encode()
        headers["inference-header-content-length"] = str(len(header))
        response = client.post(infer_path("simple", ""), content=header + b"\0" * 64, headers=headers)
        expected = 400
    check(tally, "http_oversized", response, kind)
    assert response.status_code == expected, (kind, response.status_code, response.text)
