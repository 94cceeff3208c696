"""The peer: KServe's Python model server (``kserve.ModelServer``) over ONNX Runtime.

Runs in its own virtual environment (``.venv/bin/python -m loadtests.peers setup kserve``,
i.e. ``/work/peer-venvs/kserve`` with ``kserve onnxruntime numpy``), so it imports nothing
from deepserve.

KServe's server speaks the v2 (Open Inference Protocol) REST API itself, so the benchmark
sends it exactly what it sends deepserve: ``POST /v2/models/{name}/infer`` with the tensor
as a JSON list (``v2-json``) or with the binary tensor extension, tritonclient's body
(``v2-binary``; the answer is binary when the request asks for it with
``binary_data_output``, as tritonclient's default body does).

Batching: none. KServe's Python server has no request batcher; KServe's batcher is the
Go agent sidecar (``agent --enable-batcher --max-batchsize --max-latency``, switched on
by ``spec.predictor.batcher`` in an InferenceService on Kubernetes), which pip does not
install and which is not part of ``kserve.ModelServer``. So every request is one
``session.run``; ``predict`` is a coroutine that runs the session inline (what KServe's
own examples do), under one uvicorn worker (``--workers 1``, KServe's default). The ONNX
Runtime session copies deepserve's options (graph optimisation ALL, sequential,
1 inter-op thread, ``--intra-op-threads``, no spinning), as the LitServe baseline does.

    /work/peer-venvs/kserve/bin/python loadtests/baselines/kserve_onnx.py --model m.onnx \
        --model_name mlp_tiny --http_port 8400 --grpc_port 8401 --enable_grpc false \
        --enable_latency_logging false
"""

from __future__ import annotations

import argparse
import logging
import os

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid


class OnnxModel(kserve.Model):
    def __init__(self, name: str, model_path: str, intra_op_threads: int) -> None:
        super().__init__(name)
        self.model_path = model_path
        self.intra_op_threads = intra_op_threads
        self.load()

    def load(self) -> bool:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = self.intra_op_threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.model_path, sess_options=so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        logits = self.session.run(None, {self.input_name: x})[0]
        output = InferOutput(name=self.output_name, shape=list(logits.shape), datatype="FP32")
        output.set_data_from_numpy(logits)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or generate_uuid(),
                             use_binary_outputs=payload.use_binary_outputs)


def main() -> None:
    # kserve.model_server's own parser reads --http_port, --grpc_port, --workers, ... from argv.
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], conflict_handler="resolve")
    parser.add_argument("--model", required=True, help="the ONNX file")
    parser.add_argument("--intra-op-threads", type=int, default=os.cpu_count() or 1)
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name, args.model, args.intra_op_threads)
    server = kserve.ModelServer()  # configures logging from its own arguments
    # As the FastAPI baseline runs uvicorn with --no-access-log: no log line per request.
    # (--enable_latency_logging false drops the model's timing lines; the REST app's timing
    # middleware, always installed, still times every request but logs to kserve.trace.)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
