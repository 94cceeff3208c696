"""ONNX Runtime on the GPU through the real server: CUDA provider chosen from the host,
results equal to the CPU path, and GPU metrics exposed (GPU machines only)."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

from tests.integration import server_fixtures as fx
from tests.markers import requires_cuda

pytestmark = requires_cuda

GPU_CONFIG = fx.SIMPLE_CONFIG + 'instance_group [ { kind: KIND_GPU count: 2 } ]\n'


def test_gpu_instances_serve_the_same_results_as_the_cpu(tmp_path):
    repo = tmp_path / "repo"
    fx.write_simple(repo, "simple")
    (repo / "simple" / "config.pbtxt").write_text(GPU_CONFIG.format(name="simple"))
    a = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    b = np.ones((8, 16), np.float32)
    cpu = ort.InferenceSession(str(repo / "simple" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = cpu.run(None, {"INPUT0": a, "INPUT1": b})[0]
    with fx.running_server(repo) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        inputs = [httpclient.InferInput("INPUT0", [8, 16], "FP32"), httpclient.InferInput("INPUT1", [8, 16], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        np.testing.assert_allclose(client.infer("simple", inputs).as_numpy("OUTPUT0"), expected, rtol=1e-5, atol=1e-5)
        client.close()
        metrics = httpx.get(f"http://{server.http_url}/metrics").text
        assert "deepserve_gpu_memory_total_bytes" in metrics
