"""Version policy, instance devices and provider choice (no server, no GPU)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from server.core.errors import InvalidInput
from server.repository import model as repo_model
from server.repository.model import LoadOptions, instance_devices, runtime_options, select_versions
from server.runtimes.base import RuntimeOptions
from server.runtimes.onnxruntime import choose_providers


@pytest.fixture
def model_dir(tmp_path):
    for v in ("1", "2", "10", "notes"):
        (tmp_path / v).mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("", ["10"]),
        ("version_policy { latest { num_versions: 2 } }", ["2", "10"]),
        ("version_policy { all { } }", ["1", "2", "10"]),
        ("version_policy { specific { versions: [1, 10] } }", ["1", "10"]),
    ],
)
def test_version_policy(model_dir, policy, expected):
    assert select_versions(model_dir, text_format.Parse(policy, mc.ModelConfig())) == expected


def test_version_policy_naming_a_missing_version_is_refused(model_dir):
    with pytest.raises(InvalidInput, match=r"\[3\]"):
        select_versions(model_dir, text_format.Parse("version_policy { specific { versions: [3] } }", mc.ModelConfig()))


def test_instance_groups_and_gpu_fallback(monkeypatch):
    config = text_format.Parse(
        "instance_group [{ kind: KIND_CPU count: 2 }, { kind: KIND_GPU count: 1 gpus: [0, 1] }]", mc.ModelConfig()
    )
    monkeypatch.setattr(repo_model, "gpu_count", lambda: 2)
    assert instance_devices(config) == ["cpu", "cpu", "cuda:0", "cuda:1"]
    monkeypatch.setattr(repo_model, "gpu_count", lambda: 0)
    assert instance_devices(config) == ["cpu"] * 3  # no GPU here: the CPU twin, `count` instances
    assert instance_devices(mc.ModelConfig()) == ["cpu"]


def test_threads_are_split_across_cpu_instances():
    options = runtime_options(mc.ModelConfig(), "1", "cpu", cpu_instances=2, options=LoadOptions(cpu_threads=8))
    assert options.intra_op_threads == 4


def test_providers_from_the_host_and_from_the_config():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    gpu = choose_providers(RuntimeOptions(device="cuda:1"), available)
    assert [p[0] for p in gpu[:2]] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"] and gpu[1][1]["device_id"] == 1
    assert choose_providers(RuntimeOptions(device="cpu"), available) == ["CPUExecutionProvider"]
    assert choose_providers(RuntimeOptions(providers=("CPUExecutionProvider",)), available) == ["CPUExecutionProvider"]
    with pytest.raises(InvalidInput, match="not available"):
        choose_providers(RuntimeOptions(providers=("CUDAExecutionProvider",)), ["CPUExecutionProvider"])
    config = text_format.Parse(
        'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" }] } }', mc.ModelConfig()
    )
    assert runtime_options(config, "1", "cuda:0", 0, LoadOptions()).providers[0] == "TensorrtExecutionProvider"


def test_inline_execution_is_for_onnx_and_tensorrt_batches_only():
    from server import runtimes
    from server.scheduling.policy import BatchPolicy

    def inline(backend: str, text: str = "", **policy) -> float:
        config = text_format.Parse(text, mc.ModelConfig())
        return repo_model._inline_below_s(config, runtimes.kind_for("", backend), BatchPolicy(**policy))

    assert inline("onnxruntime") == repo_model.DEFAULT_INLINE_EXECUTION_US / 1e6
    assert inline("onnxruntime", 'parameters { key: "inline_execution_us" value { string_value: "0" } }') == 0.0
    assert inline("onnxruntime", decoupled=True) == 0.0
    assert inline("onnxruntime", execution_timeout_s=1.0) == 0.0  # a hung batch must stay killable
    assert inline("python") == 0.0 and inline("pytorch") == 0.0
    with pytest.raises(ValueError, match="inline_execution_us"):
        inline("onnxruntime", 'parameters { key: "inline_execution_us" value { string_value: "fast" } }')
