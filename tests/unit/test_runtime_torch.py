"""The PyTorch runtime: torch.export programs (.pt2) and TorchScript (.pt), on the CPU.

The digits CNN is built from the shipped weights, written with ``export.torch_program``
and checked against ONNX Runtime on the ONNX export, on real held-out digits.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.families import get_family
from export.onnx import export_verified
from export.torch_program import write_torch_program, write_torchscript
from server.core.errors import InvalidInput, ModelError, Unavailable
from server.core.types import TensorSpec
from server.runtimes import onnxruntime as ort_runtime
from server.runtimes import torch as torch_runtime
from server.runtimes.base import RuntimeOptions, Signature

CPU = RuntimeOptions(device="cpu")
FP32 = get_family("digits").spec.tolerance("fp32")  # the export package's fp32 parity bar


@pytest.fixture(scope="module")
def digits():
    family = get_family("digits")
    inputs, labels = family.held_out()
    return family, family.build(None), inputs["input"], labels


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits) -> dict[str, Path]:
    family, module, x_test, _ = digits
    root = tmp_path_factory.mktemp("torch_models")
    example = (torch.from_numpy(x_test[:2]),)
    paths = {"pt2": root / "model.pt2", "pt": root / "model.pt", "onnx": root / "model.onnx"}
    write_torch_program(module, example, paths["pt2"])
    write_torchscript(module, example, paths["pt"])
    export_verified(module, family.spec, paths["onnx"])
    return paths


def load(path: Path, options: RuntimeOptions = CPU) -> torch_runtime.TorchRuntime:
    runtime = torch_runtime.create()
    runtime.load(path, options)
    return runtime


def bound_torchscript(path: Path) -> torch_runtime.TorchRuntime:
    runtime = load(path)
    runtime.bind(["INPUT__0"], ["OUTPUT__0"])
    return runtime


def within_fp32(got: np.ndarray, want: np.ndarray) -> bool:
    return bool(np.all(np.abs(got - want) <= FP32.atol + FP32.rtol * np.abs(want)))


def test_importing_the_runtime_does_not_import_torch() -> None:
    code = "import sys, server.runtimes, server.runtimes.torch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_program_signature_comes_from_the_program(files) -> None:
    signature = torch_runtime.create().load(files["pt2"], CPU)
    assert signature.inputs == (TensorSpec("x", "FP32", (-1, 1, 8, 8)),)
    assert signature.outputs == (TensorSpec("output", "FP32", (-1, 10)),)


def test_program_matches_onnx_runtime_on_held_out_digits(files, digits) -> None:
    _, _, x_test, labels = digits
    onnx = ort_runtime.create()
    onnx.load(files["onnx"], CPU)
    want = onnx.execute({"input": x_test})["logits"]
    got = load(files["pt2"]).execute({"x": x_test})["output"]
    assert got.shape == want.shape == (len(labels), 10)
    assert within_fp32(got, want), f"max |err| {np.abs(got - want).max():.3g} exceeds {FP32}"
    assert (got.argmax(axis=1) == labels).mean() >= 0.98


@pytest.mark.parametrize("batch", [1, 64])
def test_batches_of_1_and_64(files, digits, batch) -> None:
    x = digits[2][:batch]
    program = load(files["pt2"]).execute({"x": x})["output"]
    script = bound_torchscript(files["pt"]).execute({"INPUT__0": x})["OUTPUT__0"]
    assert program.shape == script.shape == (batch, 10)
    assert within_fp32(script, program)


def test_torchscript_declares_nothing_and_needs_bind(files, digits) -> None:
    runtime = torch_runtime.create()
    assert runtime.load(files["pt"], CPU) == Signature((), ())
    with pytest.raises(ModelError, match="not bound to its config's names"):
        runtime.execute({"INPUT__0": digits[2][:4]})
    with pytest.raises(InvalidInput, match="names 2 input.*forward takes 1$"):
        runtime.bind(["a", "b"], ["out"])
    runtime.bind(["INPUT__0"], ["OUTPUT__0"])
    assert runtime.execute({"INPUT__0": digits[2][:4]})["OUTPUT__0"].shape == (4, 10)


def test_bind_renames_a_program_positionally_or_keeps_its_names(files, digits) -> None:
    x = digits[2][:3]
    runtime = load(files["pt2"])
    runtime.bind(["INPUT__0"], ["OUTPUT__0"])
    assert runtime.execute({"INPUT__0": x}).keys() == {"OUTPUT__0"}
    runtime.bind(["x"], ["output"])
    assert runtime.execute({"x": x}).keys() == {"output"}
    with pytest.raises(InvalidInput, match="do not match the model's"):
        runtime.bind(["x", "y"], ["output"])


@pytest.mark.parametrize("name", ["model.pt2", "model.pt"])
def test_a_garbage_or_truncated_file_is_invalid_input(tmp_path, files, name) -> None:
    garbage = tmp_path / "garbage" / name
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not a model" * 50)
    with pytest.raises(InvalidInput, match=f"{name} is not a"):
        torch_runtime.create().load(garbage, CPU)
    data = files["pt2" if name.endswith("2") else "pt"].read_bytes()
    truncated = tmp_path / name
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput, match=name):
        torch_runtime.create().load(truncated, CPU)


def test_torchscript_file_named_pt2_is_invalid_input(tmp_path, files) -> None:
    wrong = tmp_path / "model.pt2"
    wrong.write_bytes(files["pt"].read_bytes())
    with pytest.raises(InvalidInput, match="cannot load model.pt2 as a torch.export program"):
        torch_runtime.create().load(wrong, CPU)


def test_wrong_dtype_shape_or_name_is_invalid_input(files, digits) -> None:
    runtime = load(files["pt2"])
    x = digits[2][:2]
    with pytest.raises(InvalidInput, match="input 'x' is FP64; the model takes FP32"):
        runtime.execute({"x": x.astype(np.float64)})
    with pytest.raises(InvalidInput, match=r"shape \[2, 8, 8\]"):
        runtime.execute({"x": x[:, 0]})
    with pytest.raises(InvalidInput, match="input 'x' is missing"):
        runtime.execute({"input": x})
    with pytest.raises(InvalidInput, match="BYTES"):
        bound_torchscript(files["pt"]).execute({"INPUT__0": np.array([b"7"], dtype=object)})


def test_a_torchscript_failure_is_a_model_error(files) -> None:
    with pytest.raises(ModelError, match="PyTorch failed"):
        bound_torchscript(files["pt"]).execute({"INPUT__0": np.zeros((2, 3, 8, 8), np.float32)})


def test_read_only_request_buffers_are_served(files, digits) -> None:
    x = digits[2][:5]
    frozen = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)
    assert not frozen.flags.writeable
    got = load(files["pt2"]).execute({"x": frozen})["output"]
    # Not bit-equal: the kernels pick their code path by the buffer's memory alignment.
    assert within_fp32(got, load(files["pt2"]).execute({"x": x})["output"])


class TwoHeads(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, (a * b).to(torch.bfloat16)


class NamedHeads(torch.nn.Module):
    def forward(self, a: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"double": a * 2, "count": (a > 0).sum(dim=1)}


def test_tuple_outputs_are_positional_and_bf16_travels_as_uint16(tmp_path) -> None:
    path = tmp_path / "model.pt2"
    write_torch_program(TwoHeads(), (torch.ones(1, 3), torch.ones(1, 3)), path)  # a batch of 1 still exports dynamic
    runtime = torch_runtime.create()
    signature = runtime.load(path, CPU)
    assert [(s.name, s.datatype, s.shape) for s in signature.inputs] == [("a", "FP32", (-1, 3)), ("b", "FP32", (-1, 3))]
    assert [(s.name, s.datatype) for s in signature.outputs] == [("output", "FP32"), ("output_1", "BF16")]
    a = np.full((4, 3), 1.5, np.float32)
    out = runtime.execute({"a": a, "b": a})
    np.testing.assert_array_equal(out["output"], a + a)
    assert out["output_1"].dtype == np.uint16
    got = torch.from_numpy(out["output_1"]).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(got, a * a)


def test_dict_outputs_are_named_by_their_keys(tmp_path) -> None:
    program, script = tmp_path / "model.pt2", tmp_path / "model.pt"
    example = (torch.tensor([[1.0, -1.0], [2.0, 3.0]]),)
    write_torch_program(NamedHeads(), example, program)
    write_torchscript(NamedHeads(), example, script)
    runtime = torch_runtime.create()
    signature = runtime.load(program, CPU)
    assert [(s.name, s.datatype, s.shape) for s in signature.outputs] == [("double", "FP32", (-1, 2)), ("count", "INT64", (-1,))]
    x = example[0].numpy()
    out = runtime.execute({"a": x})
    np.testing.assert_array_equal(out["count"], [1, 2])
    scripted = load(script)
    scripted.bind(["INPUT__0"], ["count", "double"])  # a dict is read by key, whatever the config's order
    out = scripted.execute({"INPUT__0": x})
    np.testing.assert_array_equal(out["count"], [1, 2])
    np.testing.assert_array_equal(out["double"], x * 2)


class BakedDevice(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + torch.ones(3, device="cpu")  # a device baked into the graph


def test_place_program_moves_weights_and_graph_baked_devices(tmp_path) -> None:
    path = tmp_path / "model.pt2"
    write_torch_program(BakedDevice(), (torch.ones(2, 3),), path)
    # "meta" stands in for a GPU: nothing on the CPU may be left behind.
    placed = torch_runtime.place_program(torch.export.load(str(path)), "meta")
    assert {t.device.type for t in (*placed.parameters(), *placed.buffers())} == {"meta"}
    assert placed(torch.ones(4, 3, device="meta")).device.type == "meta"
    moved_naively = torch.export.load(str(path)).module().to("meta")
    with pytest.raises(RuntimeError):
        moved_naively(torch.ones(4, 3, device="meta"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_cuda_without_a_gpu_is_unavailable_and_odd_devices_invalid(files) -> None:
    with pytest.raises(Unavailable, match="sees 0 CUDA GPU"):
        torch_runtime.create().load(files["pt2"], RuntimeOptions(device="cuda:0"))
    with pytest.raises(InvalidInput, match="'cpu' or 'cuda:<index>'"):
        torch_runtime.create().load(files["pt2"], RuntimeOptions(device="meta"))


def test_intra_op_threads_set_torch_threads(files, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    load(files["pt2"], RuntimeOptions(device="cpu", intra_op_threads=3))
    load(files["pt2"], CPU)
    assert calls == [3]


def test_unload_then_execute_is_a_model_error(files, digits) -> None:
    runtime = load(files["pt2"])
    runtime.unload()
    with pytest.raises(ModelError, match="not loaded"):
        runtime.execute({"x": digits[2][:1]})


def test_a_torchscript_model_without_a_config_is_refused_with_the_reason(tmp_path, files) -> None:
    from server.observability.metrics import Metrics
    from server.observability.stats import ModelTelemetry
    from server.repository.model import LoadOptions, load_version

    (tmp_path / "ts" / "1").mkdir(parents=True)
    (tmp_path / "ts" / "1" / "model.pt").write_bytes(files["pt"].read_bytes())
    telemetry = ModelTelemetry(Metrics().model("ts", "1"), "ts", "1")
    with pytest.raises(InvalidInput, match="carries no signature: its config must declare input and output"):
        load_version("ts", "1", tmp_path / "ts", None, LoadOptions(), telemetry)


def test_a_torchscript_model_with_a_config_is_bound_to_its_names(tmp_path, files, digits) -> None:
    from server.observability.metrics import Metrics
    from server.observability.stats import ModelTelemetry
    from server.repository.config import read_config
    from server.repository.model import LoadOptions, load_version

    (tmp_path / "ts" / "1").mkdir(parents=True)
    (tmp_path / "ts" / "1" / "model.pt").write_bytes(files["pt"].read_bytes())
    (tmp_path / "ts" / "config.pbtxt").write_text(
        'backend: "pytorch"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1, 8, 8 ] } ]\n'
        'output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]\n'
    )
    telemetry = ModelTelemetry(Metrics().model("ts", "1"), "ts", "1")
    model = load_version("ts", "1", tmp_path / "ts", read_config(tmp_path / "ts"), LoadOptions(), telemetry)
    _, _, x, y = digits
    logits = model.instances[0].execute({"INPUT__0": x[:8]})["OUTPUT__0"]
    assert logits.shape == (8, 10) and (logits.argmax(axis=1) == y[:8]).mean() >= 0.75
    model.unload_instances()
