"""The endpoint a typical user writes around ONNX Runtime: FastAPI + one ``session.run``
per request, no batching. The baseline of the request-overhead benchmark.

* ``POST /predict``      JSON ``{"input": [[...], ...]}`` (a pydantic model with
                         ``list[list[float]]``, so 2-D inputs like mlp_tiny's), a sync ``def``
                         endpoint (FastAPI runs it in its thread pool), answers
                         ``{"logits": [[...]]}`` built with ``.tolist()``.
* ``POST /predict_raw``  the body is the FP32 bytes (reshaped to (-1, *input dims)), an
                         ``async def`` endpoint that calls ``session.run`` inline, answers the
                         output's FP32 bytes.

The session is ONNX Runtime's defaults (``InferenceSession(path,
providers=["CPUExecutionProvider"])``) unless ``FASTAPI_NAIVE_SERVER_OPTIONS=1``, which
copies deepserve's session options (see ``server/runtimes/onnxruntime.py``).

    FASTAPI_NAIVE_MODEL=repo/mlp_tiny/1/model.onnx .venv/bin/uvicorn \
        loadtests.baselines.fastapi_naive:app --host 127.0.0.1 --port 8100
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel


def _session() -> ort.InferenceSession:
    path = os.environ["FASTAPI_NAIVE_MODEL"]
    if os.environ.get("FASTAPI_NAIVE_SERVER_OPTIONS") != "1":
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = os.cpu_count() or 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


session = _session()
input_name = session.get_inputs()[0].name
row_shape = [d if isinstance(d, int) else -1 for d in session.get_inputs()[0].shape[1:]]
app = FastAPI()


class PredictRequest(BaseModel):
    input: list[list[float]]


@app.get("/health")
def health() -> dict:
    return {"ok": True}


@app.post("/predict")
def predict(request: PredictRequest) -> dict:
    x = np.asarray(request.input, dtype=np.float32)
    logits = session.run(None, {input_name: x})[0]
    return {"logits": logits.tolist()}


@app.post("/predict_raw")
async def predict_raw(request: Request) -> Response:
    x = np.frombuffer(await request.body(), dtype=np.float32).reshape(-1, *row_shape)
    logits = session.run(None, {input_name: x})[0]
    return Response(logits.tobytes(), media_type="application/octet-stream")
