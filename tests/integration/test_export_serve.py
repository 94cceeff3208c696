"""Export, quantize and prune the default classifier, then serve every variant from a
real server (``python -m server.cli serve``) and check it over HTTP with tritonclient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from export.families import get_family
from export.onnx import ort_runner
from export.repository import read_config
from export.variants import export_variants
from tests.integration.server_fixtures import running_server

VARIANTS = ["fp32", "fp16", "int8-static", "int8-dynamic", "sparse50", "pruned50"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = tmp_path_factory.mktemp("variants")
    family = get_family("digits")
    written, failed = export_variants(repo, family, VARIANTS, name="digits")
    assert not failed, [str(f) for f in failed]
    with running_server(repo) as server:
        yield server, {a.variant: a for a in written}, family


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_serves_and_classifies(served, variant) -> None:
    server, artifacts, family = served
    name = "digits" if variant == "fp32" else f"digits_{variant.replace('-', '_')}"
    feed, labels = family.held_out()
    x = feed["input"][:32]
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready(name)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
    logits = result.as_numpy("logits")
    assert logits.shape == (32, 10) and logits.dtype == np.float32
    assert (logits.argmax(axis=1) == labels[:32]).mean() >= 0.9
    # What is served is the very artifact that passed parity before it was written.
    want = ort_runner(artifacts[variant].onnx_model, family.spec)({"input": x})[0]
    np.testing.assert_allclose(logits, want, atol=1e-3)
    if variant in ("fp32", "fp16"):  # and, element-wise, still the torch network
        with torch.no_grad():
            np.testing.assert_allclose(logits, artifacts[variant].module(torch.from_numpy(x)).numpy(), atol=2e-2)
    config = read_config(server.repository / name)
    assert config.parameters["deepserve_variant"].string_value == variant
    assert "PASS" in config.parameters["deepserve_parity"].string_value


def test_labels_reach_the_classification_extension(served) -> None:
    server, _, family = served
    feed, labels = family.held_out()
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(feed["input"][:1])
    result = client.infer("digits_int8_static", [inp], outputs=[httpclient.InferRequestedOutput("logits", class_count=1)])
    top = result.as_numpy("logits")[0][0]
    top = top.decode() if isinstance(top, bytes) else top
    assert top.split(":")[-1] == str(labels[0])
