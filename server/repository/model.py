"""Loading one model version: a runtime model (its instances and dynamic batcher) or
an ensemble (its checked plan and executor).

``load_version`` is the blocking half of a runtime model's load (runs in a worker
thread): it resolves the runtime, loads every instance, auto-completes the config from
the model file and reads the labels. The repository then starts the scheduler on the
event loop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from server import runtimes
from server.core.errors import InvalidInput
from server.observability.stats import ModelTelemetry
from server.repository.config import ModelConfig, complete_config, parameters, tensor_specs
from server.repository.loaded import LoadedModel
from server.runtimes import RuntimeKind
from server.runtimes.base import Runtime, RuntimeOptions, StreamingRuntime
from server.runtimes.devices import gpu_count
from server.scheduling.batcher import DynamicBatcher
from server.scheduling.ensemble import EnsembleScheduler, Resolve
from server.scheduling.policy import batch_policy_from_config, ensemble_plan_from_config

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
TRANSCRIPTION = "transcription"  # the backend of a transcription model (server/repository/transcriber.py)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """Server-wide knobs that shape every load."""

    default_max_batch_size: int = 4
    default_max_queue_size: int = 1024
    cpu_threads: int = 0  # cores the runtimes may use in all; 0 = os.cpu_count()

    @property
    def cores(self) -> int:
        return self.cpu_threads or os.cpu_count() or 1


def is_ensemble(config: ModelConfig | None) -> bool:
    return config is not None and config.platform == ENSEMBLE


def shown_path(path: Path, model_dir: Path) -> str:
    """``path`` as error messages show it: relative to the repository (``digits/1/model.onnx``),
    never the server's absolute path. ``model_dir`` is the model's folder."""
    try:
        return str(Path(model_dir.name) / path.relative_to(model_dir))
    except ValueError:
        return path.name


def file_in_model(model_dir: Path, base: Path, filename: str, what: str) -> Path:
    """``base / filename`` (``base``: the model folder or one of its version folders), refused
    with InvalidInput unless it stays inside the model's folder: ``filename`` comes from a
    config, which a client may send with a load request. An absolute name, a ``..`` part,
    NUL, or a symlink whose target lies outside the (real) model folder is refused. The
    model folder itself may be a symlink (the operator's layout)."""
    relative = Path(filename)
    if not filename or "\0" in filename or relative.is_absolute() or ".." in relative.parts:
        raise InvalidInput(f"{what} {filename!r} must be a file name inside the model's folder (no absolute path, no '..')")
    path = base / relative
    try:
        real, root = path.resolve(), model_dir.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise InvalidInput(f"{what} {filename!r} cannot be resolved") from None
    if not real.is_relative_to(root):
        raise InvalidInput(f"{what} {filename!r} ({shown_path(path, model_dir)}) points outside the model's folder")
    return path


def find_kind(config: ModelConfig | None, version_dir: Path) -> RuntimeKind:
    if config is not None and (config.platform or config.backend):
        return runtimes.kind_for(config.platform, config.backend)
    for kind in runtimes.KINDS:
        if any((version_dir / name).exists() for name in kind.filenames):
            return kind
    expected = [name for kind in runtimes.KINDS for name in kind.filenames]
    raise InvalidInput(
        f"no model file in {shown_path(version_dir, version_dir.parent)}: expected one of {expected} "
        "or a config naming the platform/backend"
    )


def model_file(kind: RuntimeKind, config: ModelConfig, version_dir: Path) -> Path:
    """The file to load: ``default_model_filename``, else the first of the kind's names
    that exists. A python model named by its ``processor`` parameter has no file.
    The file must lie inside the model's folder (see :func:`file_in_model`)."""
    model_dir = version_dir.parent
    if config.default_model_filename:
        path = file_in_model(model_dir, version_dir, config.default_model_filename, "default_model_filename")
    else:
        path = next((version_dir / n for n in kind.filenames if (version_dir / n).exists()), version_dir / kind.default_filename)
        path = file_in_model(model_dir, version_dir, path.name, "model file")
    if not path.exists() and not (kind.backend == "python" and parameters(config).get("processor")):
        raise InvalidInput(f"model file {shown_path(path, model_dir)} does not exist")
    return path


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


def runtime_options(
    config: ModelConfig, version: str, device: str, cpu_instances: int, options: LoadOptions
) -> RuntimeOptions:
    params = parameters(config)
    threads = int(params.get("intra_op_thread_count", 0)) or max(1, options.cores // max(1, cpu_instances))
    providers = tuple(p.strip() for p in params.get("execution_providers", "").split(",") if p.strip())
    if not providers and config.HasField("optimization"):
        accelerators = [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
        if accelerators and device.startswith("cuda"):
            names = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}
            providers = tuple(names.get(a.lower(), a) for a in accelerators) + ("CUDAExecutionProvider", "CPUExecutionProvider")
    inputs, outputs = tensor_specs(config)
    return RuntimeOptions(
        device=device,
        model_name=config.name,
        version=version,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=config.max_batch_size,
        intra_op_threads=threads,
        parameters=tuple(sorted(params.items())),
        providers=providers,
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
    base.name = base.name or name
    model_path = model_file(kind, base, version_dir)
    devices = instance_devices(base)
    cpu_instances = sum(d == "cpu" for d in devices)
    instances: list[Runtime] = []
    try:
        signature = None
        for device in devices:
            runtime = runtimes.create(kind)
            signature = runtime.load(model_path, runtime_options(base, version, device, cpu_instances, options))
            instances.append(runtime)
        completed = complete_config(base, name, kind, signature, options.default_max_batch_size)
        if not completed.input or not completed.output:
            raise InvalidInput(f"the {kind.backend} model file carries no signature: its config must declare input and output")
        if completed.model_transaction_policy.decoupled and not isinstance(instances[0], StreamingRuntime):
            raise InvalidInput(f"decoupled models need a backend that answers several responses (python); {kind.backend} answers one")
        inputs, outputs = tensor_specs(completed)
        labels = read_labels(model_dir, completed)
        try:
            policy = batch_policy_from_config(completed, options.default_max_queue_size)
            policy = replace(policy, inline_below_s=_inline_below_s(completed, kind, policy))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    except Exception:
        for runtime in instances:
            runtime.unload()
        raise

    def reload(index: int) -> Runtime:
        """A fresh instance in place of a hung or failing one (blocking; the batcher's call)."""
        runtime = runtimes.create(kind)
        runtime.load(model_path, runtime_options(base, version, devices[index], cpu_instances, options))
        return runtime

    text_inputs = frozenset(s.name for s in inputs if s.datatype == "BYTES") if kind.backend == "onnxruntime" else frozenset()
    batcher = DynamicBatcher(policy, instances, telemetry, reload=reload, outputs=outputs)
    return LoadedModel(
        name, version, completed, inputs, outputs, labels, telemetry,
        scheduler=batcher, instances=instances, text_inputs=text_inputs,
    )


def load_ensemble(name: str, version: str, config: ModelConfig, telemetry: ModelTelemetry, resolve: Resolve) -> LoadedModel:
    """An ensemble version: Triton requires its config to declare inputs and outputs."""
    if config.name and config.name != name:
        raise InvalidInput(f"config name '{config.name}' does not match the model folder '{name}'")
    if not config.input or not config.output:
        raise InvalidInput("an ensemble's config must declare its input and output tensors")
    try:
        plan = ensemble_plan_from_config(config)
    except ValueError as exc:
        raise InvalidInput(f"ensemble '{name}': {exc}") from None
    completed = ModelConfig()
    completed.CopyFrom(config)
    completed.name = name
    inputs, outputs = tensor_specs(completed)
    scheduler = EnsembleScheduler(name, plan, resolve, telemetry)
    return LoadedModel(name, version, completed, inputs, outputs, {}, telemetry, scheduler, steps=plan.models)


def read_labels(model_dir: Path, config: ModelConfig) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for output in config.output:
        if output.label_filename:
            path = file_in_model(model_dir, model_dir, output.label_filename, f"label_filename of output '{output.name}'")
            if not path.is_file():
                raise InvalidInput(f"label file {shown_path(path, model_dir)} of output '{output.name}' does not exist")
            labels[output.name] = path.read_text().splitlines()
    return labels


INLINE_RUNTIMES = ("onnxruntime", "tensorrt")  # whose execute releases the GIL and runs no user code
DEFAULT_INLINE_EXECUTION_US = 100.0


def _inline_below_s(config: ModelConfig, kind: RuntimeKind, policy) -> float:
    """Batches of a runtime faster than this run on the event loop (parameter
    ``inline_execution_us``; 0 turns it off): no Python models, no decoupled ones."""
    if kind.backend not in INLINE_RUNTIMES or policy.decoupled or policy.execution_timeout_s is not None:
        return 0.0
    value = parameters(config).get("inline_execution_us", "")
    try:
        us = float(value) if value else DEFAULT_INLINE_EXECUTION_US
    except ValueError:
        raise ValueError(f"parameter inline_execution_us must be a number of microseconds, not {value!r}") from None
    if not 0 <= us <= 10_000:
        raise ValueError(f"parameter inline_execution_us must be between 0 and 10000, not {us:g}")
    return us / 1e6


def select_versions(model_dir: Path, config: ModelConfig | None) -> list[str]:
    """Numeric version folders chosen by ``version_policy`` (default: the latest one).
    An ensemble (or a transcription model: no file of its own) without a version folder is version 1."""
    available = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit())
    if not available and (is_ensemble(config) or (config is not None and config.backend == TRANSCRIPTION)):
        return ["1"]
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


def check_wiring(ensemble: LoadedModel, get) -> None:
    """Each step's maps name real tensors of its step model, every required step input is
    fed, and no step is decoupled. ``get(name, version)`` returns a loaded model."""
    scheduler = ensemble.scheduler
    if not isinstance(scheduler, EnsembleScheduler):  # a scheduler with steps of its own (transcription)
        scheduler.check_steps(get)
        return
    for step in scheduler.plan.steps:
        target: LoadedModel = get(step.model, step.version)
        where = f"ensemble '{ensemble.name}' step '{step.model}'"
        if target.decoupled:
            raise InvalidInput(f"{where}: decoupled models cannot be ensemble steps")
        mapped = {name for name, _ in step.inputs}
        unknown = sorted(mapped - target.input_index.keys())
        if unknown:
            raise InvalidInput(f"{where}: input_map names {unknown}, not inputs of the model ({sorted(target.input_index)})")
        unfed = sorted(n for n, spec in target.input_index.items() if not spec.optional and n not in mapped)
        if unfed:
            raise InvalidInput(f"{where}: the model's input(s) {unfed} are not in its input_map")
        outputs = {spec.name for spec in target.outputs}
        unknown = sorted({name for name, _ in step.outputs} - outputs)
        if unknown:
            raise InvalidInput(f"{where}: output_map names {unknown}, not outputs of the model ({sorted(outputs)})")
