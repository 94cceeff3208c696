"""64 concurrent clients for 10 s against the default classifier: no errors, every answer
the one the model gives in-process. Bounded in time and count, loopback only."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import onnxruntime as ort
import tritonclient.http.aio as aioclient

CLIENTS = 64
DURATION_S = 10.0


async def test_64_clients_for_10_seconds_all_correct(http_server, digits):
    x, _ = digits
    session = ort.InferenceSession(str(http_server.repository / "digits" / "1" / "model.onnx"))
    expected = session.run(None, {"input": x})[0].argmax(1)
    client = aioclient.InferenceServerClient(http_server.http_url, conn_limit=CLIENTS)
    answered, wrong, errors = 0, 0, []
    deadline = time.monotonic() + DURATION_S

    async def worker(seed: int) -> None:
        nonlocal answered, wrong
        rng = np.random.default_rng(seed)
        while time.monotonic() < deadline:
            rows = rng.integers(0, len(x), size=int(rng.integers(1, 4)))
            inp = aioclient.InferInput("input", [len(rows), 1, 8, 8], "FP32")
            inp.set_data_from_numpy(x[rows])
            try:
                result = await client.infer("digits", [inp])
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                errors.append(repr(exc))
                continue
            answered += 1
            wrong += int((result.as_numpy("logits").argmax(1) != expected[rows]).sum())

    try:
        await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
    finally:
        await client.close()
    assert errors == [], errors[:3]
    assert wrong == 0
    assert answered > CLIENTS  # every client got answers, not just one each
