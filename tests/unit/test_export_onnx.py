"""torch -> ONNX export, parity gating, and Triton repository entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.default_repository import build_benchmark_repository, build_default_repository
from export.onnx import export_onnx, export_verified, ort_runner, ort_session
from export.parity import ParityError
from export.repository import read_config
from export.spec import ExportSpec, IOSpec, Tolerance
from models.bench import mlp_tiny

SPEC = ExportSpec(inputs=(IOSpec("input", ("batch", 64), value_range=(-1.0, 1.0)),), outputs=(IOSpec("logits", ("batch", 10)),))


@pytest.fixture(scope="module")
def default_repo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("repo")
    build_default_repository(dest)
    return dest


def test_export_has_named_dynamic_batch_and_matches_torch() -> None:
    model = export_onnx(mlp_tiny(), SPEC)
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version >= 17
    run = ort_runner(model, SPEC)
    for batch in (1, 7):
        x = SPEC.random_inputs({"batch": batch}, seed=batch)
        want = mlp_tiny()(torch.from_numpy(x["input"])).detach().numpy()
        np.testing.assert_allclose(run(x)[0], want, atol=1e-5)


def test_failed_parity_writes_nothing(tmp_path, monkeypatch) -> None:
    import export.onnx as export_onnx_module

    real_runner = export_onnx_module.ort_runner

    def off_by_a_bit(model, spec, threads=0):
        run = real_runner(model, spec, threads)
        return lambda feed: [y + 1e-3 for y in run(feed)]

    monkeypatch.setattr(export_onnx_module, "ort_runner", off_by_a_bit)
    strict = ExportSpec(SPEC.inputs, SPEC.outputs, tolerances={"fp32": Tolerance(atol=1e-4)})
    model_path = tmp_path / "1" / "model.onnx"
    with pytest.raises(ParityError) as err:
        export_verified(mlp_tiny(), strict, model_path)
    assert "FAIL" in str(err.value) and "max |err| 0.001" in str(err.value)
    assert not model_path.exists()
    export_verified(mlp_tiny(), ExportSpec(SPEC.inputs, SPEC.outputs, tolerances={"fp32": Tolerance(atol=2e-3)}), model_path)
    assert model_path.is_file()


def test_default_repository_layout_and_config(default_repo) -> None:
    entry = default_repo / "digits"
    assert (entry / "1" / "model.onnx").is_file()
    assert (entry / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert (config.input[0].name, config.input[0].data_type, list(config.input[0].dims)) == ("input", mc.TYPE_FP32, [1, 8, 8])
    assert (config.output[0].name, list(config.output[0].dims), config.output[0].label_filename) == ("logits", [10], "labels.txt")
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]


def test_default_repository_serves_dynamic_batch_in_onnxruntime(default_repo) -> None:
    from models.digits_data import load_split

    session = ort_session(default_repo / "digits" / "1" / "model.onnx")
    x = load_split().x_test
    for batch in (1, 7):
        (logits,) = session.run(["logits"], {"input": x[:batch]})
        assert logits.shape == (batch, 10)


def test_default_repository_is_idempotent(default_repo) -> None:
    model_file = default_repo / "digits" / "1" / "model.onnx"
    before = model_file.stat().st_mtime_ns
    build_default_repository(default_repo)
    assert model_file.stat().st_mtime_ns == before
    build_default_repository(default_repo, force=True)
    assert model_file.stat().st_mtime_ns != before


def test_benchmark_repository(tmp_path) -> None:
    build_benchmark_repository(tmp_path)
    for name in ("resnet_bench", "mlp_tiny"):
        batched, plain = read_config(tmp_path / name), read_config(tmp_path / f"{name}_nobatch")
        assert batched.HasField("dynamic_batching") and not plain.HasField("dynamic_batching")
        assert batched.max_batch_size == plain.max_batch_size == 64
    assert list(read_config(tmp_path / "resnet_bench").input[0].dims) == [3, 64, 64]
    assert list(read_config(tmp_path / "mlp_tiny").input[0].dims) == [64]


def test_sequence_axis_is_named_and_dynamic() -> None:
    class Frames(torch.nn.Module):
        """(N, T, 16) features -> (N, T, 4) per-frame scores."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(16, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x.transpose(1, 2)).transpose(1, 2)

    spec = ExportSpec(inputs=(IOSpec("features", ("batch", "time", 16)),), outputs=(IOSpec("scores", ("batch", "time", 4)),),
                      trace_sizes={"batch": 2, "time": 12}, parity_sizes=({"batch": 1, "time": 5}, {"batch": 3, "time": 40}))
    torch.manual_seed(0)
    module = Frames().eval()
    model = export_onnx(module, spec)
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[:2]]
    assert dims == ["batch", "time"]
    assert [d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim[:2]] == ["batch", "time"]
    from export.parity import check_elementwise

    assert check_elementwise("fp32", module, ort_runner(model, spec), spec).passed


def test_any_module_exports_to_a_repository_entry(tmp_path) -> None:
    from export.families import Family
    from export.variants import export_variants

    family = Family.for_module("mine", mlp_tiny(seed=3), SPEC, max_batch_size=8, preferred_batch_size=(4,))
    written, failed = export_variants(tmp_path, family, ["fp32", "fp16"])
    assert not failed and [a.variant for a in written] == ["fp32", "fp16"]
    config = read_config(tmp_path / "mine")
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4]
    assert (tmp_path / "mine_fp16" / "1" / "model.onnx").is_file()
