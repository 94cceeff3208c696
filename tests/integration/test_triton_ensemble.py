"""A Triton ensemble repository (an ensemble of ONNX steps, written as Triton users write
it) loads unchanged and answers tritonclient over HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_ensemble_of_onnx_steps(server, module):
    client = module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((3, 16)).astype(np.float32) for _ in range(2))
    inputs = [module.InferInput("A", [3, 16], "FP32"), module.InferInput("B", [3, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub_twice", inputs)
    np.testing.assert_allclose(result.as_numpy("TWO_A"), 2 * a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("TWO_B"), 2 * b, rtol=1e-6, atol=1e-6)
    metadata = client.get_model_metadata("add_sub_twice", as_json=True) if module is grpcclient else client.get_model_metadata("add_sub_twice")
    assert metadata["platform"] == "ensemble"
    stats = client.get_inference_statistics("simple", as_json=True) if module is grpcclient else client.get_inference_statistics("simple")
    assert int(stats["model_stats"][0]["inference_stats"]["success"]["count"]) >= 2  # each step is a request to simple


def test_an_ensemble_with_a_wrong_map_is_unavailable_with_the_reason(server):
    client = httpclient.InferenceServerClient(server.http_url)
    folder = server.repository / "miswired"
    folder.mkdir()
    (folder / "config.pbtxt").write_text(
        (server.repository / "add_sub_twice" / "config.pbtxt").read_text()
        .replace('"add_sub_twice"', '"miswired"').replace('key: "INPUT1" value: "B"', 'key: "NOT_AN_INPUT" value: "B"')
    )
    with pytest.raises(InferenceServerException) as info:
        client.load_model("miswired")
    assert info.value.status() == "400"
    assert "NOT_AN_INPUT" in info.value.message() and "step 'simple'" in info.value.message()
    row = {r["name"]: r for r in client.get_model_repository_index()}["miswired"]
    assert row["state"] == "UNAVAILABLE" and "NOT_AN_INPUT" in row["reason"]


def test_an_ensemble_whose_step_is_missing_says_which(server):
    client = httpclient.InferenceServerClient(server.http_url)
    folder = server.repository / "orphan"
    folder.mkdir()
    (folder / "config.pbtxt").write_text(
        (server.repository / "add_sub_twice" / "config.pbtxt").read_text()
        .replace('"add_sub_twice"', '"orphan"').replace('model_name: "simple"\n      model_version: 1', 'model_name: "nowhere"\n      model_version: 1')
    )
    with pytest.raises(InferenceServerException) as info:
        client.load_model("orphan")
    assert "step model 'nowhere' failed to load: no model folder 'nowhere'" in info.value.message()
    assert "nowhere" not in {r["name"] for r in client.get_model_repository_index()}
