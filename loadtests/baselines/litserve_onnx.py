"""The peer: LitServe with its dynamic batching, serving an ONNX file with ONNX Runtime.

Runs in its own virtual environment (``python3 -m venv /work/peer-venv && /work/peer-venv/bin/pip
install litserve onnxruntime numpy``), so it imports nothing from deepserve.

LitServe hands ``decode_request`` the parsed JSON body (its API process forwards the
payload to the inference worker process through a queue; the raw HTTP body never gets
there), so the two request formats are what its users send:

* ``{"input": [[...]]}``                      -> ``{"logits": [[...]]}``   (JSON list)
* ``{"input_b64": "...", "shape": [...]}``    -> ``{"logits_b64": "...", "shape": [...]}``
  (base64 of the FP32 bytes: LitServe's usual way to carry binary data)

Batching: ``LitAPI(max_batch_size=..., batch_timeout=...)``; ``batch`` concatenates the
requests' rows, ``unbatch`` splits them back. The ONNX Runtime session copies deepserve's
options (graph optimisation ALL, sequential, 1 inter-op thread, ``--intra-op-threads``,
no spinning) so that the two servers differ in the serving layer only.

    /work/peer-venv/bin/python loadtests/baselines/litserve_onnx.py --model m.onnx --port 8200 \
        --max-batch-size 32 --batch-timeout 0.0005
"""

from __future__ import annotations

import argparse
import base64
import os

import litserve as ls
import numpy as np


class OnnxAPI(ls.LitAPI):
    def __init__(self, model_path: str, intra_op_threads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path
        self.intra_op_threads = intra_op_threads

    def setup(self, device) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = self.intra_op_threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.model_path, sess_options=so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def decode_request(self, request):
        if "input_b64" in request:
            raw = base64.b64decode(request["input_b64"])
            return np.frombuffer(raw, np.float32).reshape(request["shape"]), "b64"
        return np.asarray(request["input"], dtype=np.float32), "json"

    def batch(self, inputs):
        return np.concatenate([x for x, _ in inputs]), [(len(x), mode) for x, mode in inputs]

    def predict(self, batch):
        if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], str):  # not batched
            x, mode = batch
            return self.session.run(None, {self.input_name: x})[0], [(len(x), mode)]
        x, parts = batch
        return self.session.run(None, {self.input_name: x})[0], parts

    def unbatch(self, output):
        logits, parts = output
        pieces, start = [], 0
        for rows, mode in parts:
            pieces.append((logits[start : start + rows], mode))
            start += rows
        return pieces

    def encode_response(self, output):
        if isinstance(output[1], list):  # not batched: (logits, [(rows, mode)])
            output = (output[0], output[1][0][1])
        logits, mode = output
        if mode == "b64":
            return {"logits_b64": base64.b64encode(logits.tobytes()).decode(), "shape": list(logits.shape)}
        return {"logits": logits.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.0005, help="seconds")
    parser.add_argument("--intra-op-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    api = OnnxAPI(args.model, args.intra_op_threads, max_batch_size=args.max_batch_size,
                  batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
