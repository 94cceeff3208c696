"""TensorRT engines built from the exported ONNX, checked and served (GPU machines only)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.markers import requires_tensorrt

pytestmark = requires_tensorrt


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    import os

    os.environ["DEEPSERVE_TRT_CACHE"] = str(tmp_path_factory.mktemp("trt-cache"))
    from export.families import get_family
    from export.variants import VariantBuilder

    return VariantBuilder(get_family("digits"))


@pytest.mark.parametrize("variant", ["trt-fp16", "trt-int8"])
def test_engine_passes_parity(digits, variant) -> None:
    art = digits.build(variant)
    assert art.platform == "tensorrt_plan" and art.parity.passed
    if variant == "trt-int8":
        assert art.parity.reference_metric - art.parity.metric <= 0.01


def test_engine_cache_means_no_rebuild(digits, tmp_path) -> None:
    from export.tensorrt import BatchProfile, EngineSpec, build_engine

    spec = EngineSpec(precision="fp16", profile=BatchProfile(1, 32, 64), cache_dir=tmp_path)
    start = time.monotonic()
    first = build_engine(digits.fp32, spec)
    built_s = time.monotonic() - start
    start = time.monotonic()
    assert build_engine(digits.fp32, spec) == first
    assert time.monotonic() - start < built_s / 5
    assert any(p.name == "timing.cache" for p in tmp_path.rglob("*"))


def test_runtime_serves_dynamic_batches(digits, tmp_path) -> None:
    from server.runtimes.base import RuntimeOptions
    from server.runtimes.tensorrt import create

    art = digits.build("trt-fp16")
    path = tmp_path / "model.plan"
    path.write_bytes(art.data)
    runtime = create()
    signature = runtime.load(path, RuntimeOptions(device="cuda:0"))
    assert [s.name for s in signature.inputs] == ["input"] and signature.inputs[0].shape[0] == -1
    x = digits.family.held_out()[0]["input"]
    for batch in (1, 7, 64):
        out = runtime.execute({"input": x[:batch]})["logits"]
        assert out.shape == (batch, 10) and np.isfinite(out).all()
    runtime.unload()


def test_served_over_http(digits, tmp_path) -> None:
    import tritonclient.http as httpclient

    from export.variants import write_variant
    from tests.integration.server_fixtures import running_server

    write_variant(tmp_path, digits.family, digits.build("trt-fp16"), "digits_trt")
    feed, labels = digits.family.held_out()
    with running_server(tmp_path, timeout_s=120) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        inp = httpclient.InferInput("input", [16, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(feed["input"][:16])
        logits = client.infer("digits_trt", [inp]).as_numpy("logits")
    assert (logits.argmax(axis=1) == labels[:16]).mean() >= 0.9
