"""One loaded model version: its config, its runtime instances and its batcher.

``load_version`` is the blocking half of a load (runs in a worker thread): it resolves
the runtime, loads every instance, auto-completes the config from the model file and
reads the labels. The repository then starts the batcher on the event loop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from server import runtimes
from server.core.errors import InvalidInput
from server.core.types import TensorSpec
from server.observability.stats import ModelTelemetry
from server.repository.config import ModelConfig, complete_config, parameters, tensor_specs
from server.runtimes import RuntimeKind
from server.runtimes.base import Runtime, RuntimeOptions
from server.runtimes.devices import gpu_count
from server.scheduling.batcher import DynamicBatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """Server-wide knobs that shape every load."""

    default_max_batch_size: int = 4
    default_max_queue_size: int = 1024
    cpu_threads: int = 0  # cores the runtimes may use in all; 0 = os.cpu_count()


@dataclass(slots=True)
class LoadedModel:
    name: str
    version: str
    config: ModelConfig
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: dict[str, list[str]]  # output name -> class labels
    instances: list[Runtime]
    telemetry: ModelTelemetry
    batcher: DynamicBatcher | None = None
    text_inputs: frozenset[str] = frozenset()  # BYTES inputs the runtime reads as UTF-8 text
    input_index: dict[str, TensorSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_index = {spec.name: spec for spec in self.inputs}

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    def unload_instances(self) -> None:
        for instance in self.instances:
            instance.unload()


def find_kind(config: ModelConfig | None, version_dir: Path) -> RuntimeKind:
    if config is not None and (config.platform or config.backend):
        return runtimes.kind_for(config.platform, config.backend)
    for kind in runtimes.KINDS:
        if (version_dir / kind.default_filename).exists():
            return kind
    raise InvalidInput(
        f"no model file in {version_dir}: expected one of {[k.default_filename for k in runtimes.KINDS]} "
        "or a config naming the platform/backend"
    )


def instance_devices(config: ModelConfig) -> list[str]:
    """One device string per instance, from ``instance_group`` (Triton's defaults)."""
    gpus = gpu_count()
    groups = list(config.instance_group) or [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_AUTO, count=1)]
    devices: list[str] = []
    for group in groups:
        count = group.count or 1
        on_gpu = group.kind == mc.ModelInstanceGroup.KIND_GPU or (
            group.kind == mc.ModelInstanceGroup.KIND_AUTO and gpus > 0
        )
        if on_gpu and gpus == 0:
            log.warning("model %s asks for KIND_GPU but this host has no GPU; running on the CPU", config.name)
            on_gpu = False
        if on_gpu:
            ids = list(group.gpus) or list(range(gpus))
            devices += [f"cuda:{i}" for i in ids for _ in range(count)]
        else:
            devices += ["cpu"] * count
    return devices


def runtime_options(config: ModelConfig, device: str, cpu_instances: int, options: LoadOptions) -> RuntimeOptions:
    params = parameters(config)
    cores = options.cpu_threads or os.cpu_count() or 1
    threads = int(params.get("intra_op_thread_count", 0)) or max(1, cores // max(1, cpu_instances))
    providers = tuple(p.strip() for p in params.get("execution_providers", "").split(",") if p.strip())
    if not providers and config.HasField("optimization"):
        accelerators = [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
        if accelerators and device.startswith("cuda"):
            names = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}
            providers = tuple(names.get(a.lower(), a) for a in accelerators) + ("CUDAExecutionProvider", "CPUExecutionProvider")
    return RuntimeOptions(
        device=device, intra_op_threads=threads, parameters=tuple(sorted(params.items())), providers=providers
    )


def load_version(
    name: str,
    version: str,
    model_dir: Path,
    config: ModelConfig | None,
    options: LoadOptions,
    telemetry: ModelTelemetry,
) -> LoadedModel:
    """Load every instance of one version (blocking). Raises InvalidInput on a broken model."""
    version_dir = model_dir / version
    kind = find_kind(config, version_dir)
    base = config if config is not None else ModelConfig(name=name)
    filename = base.default_model_filename or kind.default_filename
    model_path = version_dir / filename
    if not model_path.exists():
        raise InvalidInput(f"model file {model_path} does not exist")
    devices = instance_devices(base)
    cpu_instances = sum(d == "cpu" for d in devices)
    instances: list[Runtime] = []
    try:
        signature = None
        for device in devices:
            runtime = runtimes.create(kind)
            signature = runtime.load(model_path, runtime_options(base, device, cpu_instances, options))
            instances.append(runtime)
        completed = complete_config(base, name, kind, signature, options.default_max_batch_size)
        inputs, outputs = tensor_specs(completed)
        labels = read_labels(model_dir, completed)
    except Exception:
        for runtime in instances:
            runtime.unload()
        raise
    model = LoadedModel(name, version, completed, inputs, outputs, labels, instances, telemetry)
    if kind.backend == "onnxruntime":  # ONNX string tensors are text
        model.text_inputs = frozenset(s.name for s in inputs if s.datatype == "BYTES")
    return model


def read_labels(model_dir: Path, config: ModelConfig) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for output in config.output:
        if output.label_filename:
            path = model_dir / output.label_filename
            if not path.is_file():
                raise InvalidInput(f"label file {output.label_filename} of output '{output.name}' does not exist")
            labels[output.name] = path.read_text().splitlines()
    return labels


def select_versions(model_dir: Path, config: ModelConfig | None) -> list[str]:
    """Numeric version folders chosen by ``version_policy`` (default: the latest one)."""
    available = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not available:
        raise InvalidInput(f"model folder {model_dir.name} has no numeric version folder (e.g. {model_dir.name}/1/)")
    policy = config.version_policy if config is not None else mc.ModelVersionPolicy()
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        chosen = available
    elif which == "specific":
        chosen = [v for v in available if v in set(policy.specific.versions)]
        missing = sorted(set(policy.specific.versions) - set(available))
        if missing:
            raise InvalidInput(f"version_policy names version(s) {missing} that have no folder")
    else:
        n = policy.latest.num_versions if which == "latest" else 1
        chosen = available[-max(1, n):]
    return [str(v) for v in chosen]
