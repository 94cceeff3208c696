"""The peer: Ray Serve with its own batching (``@serve.batch``) over ONNX Runtime.

Runs in its own virtual environment (``.venv/bin/python -m loadtests.peers setup rayserve``,
i.e. ``/work/peer-venvs/rayserve`` with ``ray[serve] onnxruntime numpy``), so it imports
nothing from deepserve.

One deployment, one replica, behind Ray Serve's HTTP proxy (a separate actor process, as
Ray Serve always runs it); the route is ``/predict``:

* ``POST /predict``  ``{"input": [[...]]}`` -> ``{"logits": [[...]]}``  (JSON list, the body
  format of the FastAPI and LitServe baselines)
* ``GET /predict``   ``{"ok": true}`` once the replica is up (the benchmark's readiness probe)

Batching: ``@serve.batch(max_batch_size=..., batch_wait_timeout_s=...)`` on the method that
runs the session: Ray Serve collects the concurrent calls into a list, the method
concatenates their rows, runs the session once and splits the answer back. The replica
takes up to ``max_ongoing_requests`` (set above the largest client count) at once so that
the batcher can see them. The ONNX Runtime session copies deepserve's options (graph
optimisation ALL, sequential, 1 inter-op thread, ``--intra-op-threads``, no spinning), as
the LitServe baseline does.

    /work/peer-venvs/rayserve/bin/python loadtests/baselines/rayserve_onnx.py --model m.onnx \
        --port 8300 --max-batch-size 64 --batch-timeout 0.0005
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np


def build_app(model_path: str, intra_op_threads: int, max_batch_size: int, batch_timeout: float,
              max_ongoing: int):
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(num_replicas=1, max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": 0})
    class OnnxDeployment:
        def __init__(self) -> None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.inter_op_num_threads = 1
            so.intra_op_num_threads = intra_op_threads
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_timeout)
        async def infer(self, xs: list[np.ndarray]) -> list[np.ndarray]:
            rows = [len(x) for x in xs]
            logits = self.session.run(None, {self.input_name: np.concatenate(xs)})[0]
            return np.split(logits, np.cumsum(rows)[:-1])

        async def __call__(self, request: Request) -> dict:
            if request.method == "GET":
                return {"ok": True}
            body = await request.json()
            logits = await self.infer(np.asarray(body["input"], dtype=np.float32))
            return {"logits": logits.tolist()}

    return OnnxDeployment.bind()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.0005, help="seconds")
    parser.add_argument("--max-ongoing-requests", type=int, default=128)
    parser.add_argument("--intra-op-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="Ray's CPU resource count")
    args = parser.parse_args()

    import ray
    from ray import serve

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    serve.start(http_options={"host": args.host, "port": args.port}, logging_config={"log_level": "WARNING"})
    app = build_app(args.model, args.intra_op_threads, args.max_batch_size, args.batch_timeout,
                    args.max_ongoing_requests)
    serve.run(app, name="onnx", route_prefix="/predict", blocking=False)
    # Ray starts the proxy, controller and replica in process groups of their own: on SIGTERM
    # shut Serve and Ray down so that none of them outlives the benchmark's point.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
