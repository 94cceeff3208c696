"""``deepserve export model --onnx`` / ``--pt2``: a tiny CNN exported to an ONNX file and to a
torch.export program inside the test, turned into variants by the CLI, served by the real
server, and compared over HTTP with ONNX Runtime on the original file / the program itself."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.repository import read_config
from tests.integration.export_helpers import closeness as _closeness
from tests.integration.export_helpers import export as _export
from tests.integration.export_helpers import infer as _infer
from tests.integration.server_fixtures import running_server


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net




@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("onnx_input")
    net, x = _cnn(), torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(work / "cnn.onnx"), dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(work / "cnn.pt2"))
    repo = work / "repo"
    outputs = {
        "onnx": _export(repo, "--onnx", str(work / "cnn.onnx"), "--name", "cnn", "--variants", "fp32,fp16,int8-dynamic"),
        "pt2": _export(repo, "--pt2", str(work / "cnn.pt2"), "--name", "prog", "--variants", "fp32,int8-dynamic"),
    }
    session = ort.InferenceSession(str(work / "cnn.onnx"), providers=["CPUExecutionProvider"])
    with running_server(repo) as server:
        yield server, session, torch.export.load(str(work / "cnn.pt2")).module(), outputs






@pytest.mark.parametrize("model, atol", [("cnn", 1e-4), ("cnn_fp16", 2e-2), ("cnn_int8_dynamic", None)])
@pytest.mark.parametrize("batch", [1, 6])
def test_an_onnx_file_serves_what_onnx_runtime_computes_on_it(served, model, atol, batch) -> None:
    server, session, _, outputs = served
    config = read_config(server.repository / model)
    assert config.max_batch_size > 0 and list(config.input[0].dims) == [3, 16, 16]
    x = np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 16, 16)).astype(np.float32)
    got = _infer(server, model, "image", x, "logits")
    want = session.run(["logits"], {"image": x})[0]
    assert got.shape == (batch, 4)
    if atol is not None:  # the element-wise bars of fp32 and fp16
        np.testing.assert_allclose(got, want, atol=atol, rtol=atol)
    else:  # int8: the closeness bars it was checked against (10 % of max |fp32|, cosine >= 0.98)
        rel, cos = _closeness(got, want)
        assert rel <= 0.1 and cos >= 0.98, (rel, cos)
    assert "int8-dynamic: PASS closeness to fp32 on 256 random inputs" in outputs["onnx"]


@pytest.mark.parametrize("model, atol", [("prog", 1e-4), ("prog_int8_dynamic", None)])
def test_a_torch_export_program_serves_what_the_program_computes(served, model, atol) -> None:
    server, _, program, outputs = served
    config = read_config(server.repository / model)
    name = config.input[0].name  # from the program's signature
    x = np.random.default_rng(7).uniform(-1, 1, (5, 3, 16, 16)).astype(np.float32)
    got = _infer(server, model, name, x, "output")
    with torch.no_grad():
        want = program(torch.from_numpy(x)).numpy()
    if atol is not None:
        np.testing.assert_allclose(got, want, atol=atol, rtol=atol)
    else:
        rel, cos = _closeness(got, want)
        assert rel <= 0.1 and cos >= 0.98, (rel, cos)
    assert "fp32: PASS element-wise" in outputs["pt2"]
