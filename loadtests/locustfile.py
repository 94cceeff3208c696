"""Locust scenarios for the default ``digits`` classifier (input FP32 [-1, 1, 8, 8] -> logits [-1, 10]).

For users who want Locust's web UI, ramp-up shapes or distributed workers. The figures in
``docs/benchmarks.md`` come from ``loadtests.bench`` instead (one generator for every
server, on the same cores). Two user classes, pick one or both:

* ``BinaryUser``  the v2 binary tensor extension, the body ``tritonclient.http`` sends:
                  JSON header + raw FP32 bytes, ``Inference-Header-Content-Length``;
* ``JsonUser``    the plain v2 JSON body (``"data": [...]``).

    .venv/bin/python -m server.cli models build-default --out /tmp/repo
    .venv/bin/python -m server.cli serve --model-repository /tmp/repo --http-port 8000 --no-grpc &
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 1m BinaryUser

Checked with locust 2.47.0 (installed in /work/peer-venv, not in the shared venv): 0 failures.

Knobs (environment): ``DIGITS_MODEL`` (default ``digits``), ``DIGITS_BATCH`` (rows per
request, default 1). Only numpy and locust are needed (no tritonclient).
"""

from __future__ import annotations

import json
import os

import numpy as np
from locust import FastHttpUser, task

MODEL = os.environ.get("DIGITS_MODEL", "digits")
BATCH = int(os.environ.get("DIGITS_BATCH", "1"))
PATH = f"/v2/models/{MODEL}/infer"
_X = np.random.default_rng(0).random((BATCH, 1, 8, 8), dtype=np.float32) * 16.0  # pixel range of the digits set


def binary_body(x: np.ndarray) -> tuple[bytes, int]:
    """(body, JSON header length), byte for byte what tritonclient.http builds."""
    header = json.dumps({
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }, separators=(",", ":")).encode()
    return header + np.ascontiguousarray(x).tobytes(), len(header)


_BINARY, _HEADER_LEN = binary_body(_X)
_JSON = json.dumps({"inputs": [{"name": "input", "shape": list(_X.shape), "datatype": "FP32",
                                "data": _X.reshape(-1).tolist()}]}).encode()


def _check_binary(response) -> str | None:
    length = int(response.headers.get("Inference-Header-Content-Length", "-1"))
    if length < 0:
        return "no Inference-Header-Content-Length in the answer"
    (out,) = json.loads(response.content[:length])["outputs"]
    if out["shape"] != [BATCH, 10] or len(response.content) - length != BATCH * 10 * 4:
        return f"unexpected output {out}"
    return None


def _check_json(response) -> str | None:
    (out,) = response.json()["outputs"]
    if out["shape"] != [BATCH, 10] or len(out["data"]) != BATCH * 10:
        return f"unexpected output shape {out['shape']}"
    return None


class BinaryUser(FastHttpUser):
    @task
    def infer_binary(self) -> None:
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(_HEADER_LEN)}
        with self.client.post(PATH, data=_BINARY, headers=headers, name=f"{PATH} [binary]",
                              catch_response=True) as response:
            problem = f"HTTP {response.status_code}" if response.status_code != 200 else _check_binary(response)
            if problem:
                response.failure(problem)


class JsonUser(FastHttpUser):
    @task
    def infer_json(self) -> None:
        with self.client.post(PATH, data=_JSON, headers={"Content-Type": "application/json"},
                              name=f"{PATH} [json]", catch_response=True) as response:
            problem = f"HTTP {response.status_code}" if response.status_code != 200 else _check_json(response)
            if problem:
                response.failure(problem)
