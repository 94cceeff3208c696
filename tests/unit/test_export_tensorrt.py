"""TensorRT export and runtime on a host without a GPU: clear refusals, and the pure parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from export import tensorrt as trt_export
from export.cli import root
from export.tensorrt import BatchProfile, EngineSpec, GpuUnavailable, engine_cache_key
from server.core.errors import Unavailable
from server.runtimes.base import RuntimeOptions
from server.runtimes.tensorrt import create, host_problem


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(trt_export.shutil, "which", lambda _name: None)


def test_build_refuses_in_one_sentence_without_a_gpu(no_gpu) -> None:
    with pytest.raises(GpuUnavailable) as err:
        trt_export.require_gpu()
    message = str(err.value)
    assert "NVIDIA GPU" in message and message.count(". ") == 0 and message.endswith(".")


def test_cli_exits_nonzero_with_the_sentence(no_gpu, tmp_path) -> None:
    result = CliRunner().invoke(root, ["export", "tensorrt", "mlp_tiny", "-r", str(tmp_path)])
    assert result.exit_code == 2
    assert "TensorRT needs an NVIDIA GPU" in result.output
    assert not any(tmp_path.iterdir())


def test_runtime_load_raises_unavailable_on_cpu(tmp_path) -> None:
    with pytest.raises(Unavailable, match="only on an NVIDIA GPU"):
        create().load(tmp_path / "model.plan", RuntimeOptions(device="cpu"))
    assert host_problem("cpu") is not None


def test_runtime_and_export_modules_import_no_gpu_packages() -> None:
    import subprocess
    import sys

    code = ("import sys, server.runtimes.tensorrt, export.tensorrt, export.variants; "
            "print(sorted(m for m in ('tensorrt', 'cuda', 'pycuda') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_batch_profile_from_config() -> None:
    assert BatchProfile.from_config(64, (16, 32)) == BatchProfile(1, 32, 64)
    assert BatchProfile.from_config(8, ()) == BatchProfile(1, 8, 8)
    assert BatchProfile.from_config(8, (4, 16)) == BatchProfile(1, 4, 8)


def test_engine_cache_key_covers_device_and_options() -> None:
    spec = EngineSpec(precision="fp16", cache_dir=Path("/nonexistent"))
    key = engine_cache_key(b"onnx", spec, "NVIDIA_H100-sm90-trt10.9")
    assert key == engine_cache_key(b"onnx", spec, "NVIDIA_H100-sm90-trt10.9")
    assert key != engine_cache_key(b"onnx", spec, "NVIDIA_A10-sm86-trt10.9")
    assert key != engine_cache_key(b"onnx", spec, "NVIDIA_H100-sm90-trt10.10")
    assert key != engine_cache_key(b"onnx2", spec, "NVIDIA_H100-sm90-trt10.9")
    int8 = EngineSpec(precision="int8", cache_dir=Path("/nonexistent"))
    assert key != engine_cache_key(b"onnx", int8, "NVIDIA_H100-sm90-trt10.9")


def test_cli_with_an_onnx_file_refuses_without_a_gpu_and_writes_nothing(no_gpu, tmp_path) -> None:
    import numpy as np
    import torch

    from export.onnx import export_onnx
    from export.quantize import save
    from export.spec import ExportSpec, IOSpec

    spec = ExportSpec(inputs=(IOSpec("x", ("batch", 6)),), outputs=(IOSpec("y", ("batch", 3)),))
    save(export_onnx(torch.nn.Sequential(torch.nn.Linear(6, 3)).eval(), spec), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.zeros((8, 6), np.float32))
    repo = tmp_path / "repo"
    result = CliRunner().invoke(root, ["export", "tensorrt", "--onnx", str(tmp_path / "net.onnx"), "-r", str(repo),
                                       "--name", "net", "--precision", "int8",
                                       "--calibration-data", str(tmp_path / "calib.npy")])
    assert result.exit_code == 2, result.output
    assert "TensorRT needs an NVIDIA GPU" in result.output and "Traceback" not in result.output
    assert not repo.exists()
    neither = CliRunner().invoke(root, ["export", "tensorrt", "-r", str(repo)])
    assert neither.exit_code == 2 and "--onnx" in neither.output
