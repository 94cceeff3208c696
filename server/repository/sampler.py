"""Loading a diffusion model: a noise-predicting network behind the step-level sampler.

A config selects it with ``parameters { key: "scheduler" value: { string_value: "diffusion" } }``.
The model file (ONNX, TorchScript / ExportedProgram or a TensorRT plan, whatever the
``backend`` loads) is the network ``eps = f(x, t, y)``: ``x`` (batch, *image) float32 in
[-1, 1], ``t`` (batch,) int64 training timesteps, ``y`` (batch,) int64 classes (the
``null_class`` for the unconditional rows of classifier-free guidance). Clients never see
those tensors: a request asks for one image with the tensors in ``REQUEST_INPUTS``
(only ``label`` required) and receives ``image`` ([0, 1], the network's image shape) and
``step`` responses, previews first if asked. Hence the model is decoupled and does not
batch requests (``max_batch_size: 0``): the sampler batches their steps.

Parameters (strings, as every config parameter): ``train_steps``, ``beta_start``,
``beta_end`` (the training noise schedule), ``classes``, ``null_class``,
``default_steps``, ``max_steps``, ``default_guidance_scale``, ``max_step_rows`` (network
rows per call). The waiting queue is ``dynamic_batching``'s ``max_queue_size`` (or the
server default).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from server import runtimes
from server.core.errors import InvalidInput
from server.observability.stats import ModelTelemetry
from server.pipelines.ddim import NoiseSchedule
from server.repository.config import ModelConfig, complete_io, datatype_enum, parameters, tensor_specs
from server.repository.loaded import LoadedModel
from server.repository.model import LoadOptions, find_kind, instance_devices, model_file, runtime_options
from server.runtimes.base import Signature
from server.scheduling.diffusion import NETWORK_INPUTS, NETWORK_OUTPUT, REQUEST_INPUTS, DiffusionSampler, SamplerConfig
from server.scheduling.policy import batch_policy_from_config

SCHEDULER = "diffusion"


def is_diffusion(config: ModelConfig | None) -> bool:
    return config is not None and parameters(config).get("scheduler") == SCHEDULER


def load_diffusion(name: str, version: str, model_dir: Path, config: ModelConfig, options: LoadOptions,
                   telemetry: ModelTelemetry) -> LoadedModel:
    """Load the network's one instance and build the sampler (blocking)."""
    where = f"diffusion model '{name}'"
    if config.name and config.name != name:
        raise InvalidInput(f"config name '{config.name}' does not match the model folder '{name}'")
    if not config.model_transaction_policy.decoupled:
        raise InvalidInput(f"{where} must be decoupled (model_transaction_policy {{ decoupled: true }}): it streams previews")
    if config.max_batch_size:
        raise InvalidInput(f"{where} takes one image per request (max_batch_size: 0); "
                           "the sampler batches steps itself up to the max_step_rows parameter")
    devices = instance_devices(config)
    if len(devices) != 1:
        raise InvalidInput(f"{where}: the sampler drives one network instance, not {len(devices)}")
    version_dir = model_dir / version
    kind = find_kind(config, version_dir)
    network_options = replace(runtime_options(config, version, devices[0], 1, options), inputs=(), outputs=())
    runtime = runtimes.create(kind)
    signature = runtime.load(model_file(kind, config, version_dir), network_options)
    try:
        sampler_config = _sampler_config(config, signature, batch_policy_from_config(config, options.default_max_queue_size))
        completed = _complete(config, name, kind, sampler_config.image_shape)
    except (InvalidInput, ValueError) as exc:
        runtime.unload()
        raise InvalidInput(f"{where}: {exc}") from None
    inputs, outputs = tensor_specs(completed)
    sampler = DiffusionSampler(sampler_config, runtime, telemetry, on_image=telemetry.image_generated)
    return LoadedModel(name, version, completed, inputs, outputs, {}, telemetry, sampler, instances=[runtime])


def _sampler_config(config: ModelConfig, signature: Signature, policy) -> SamplerConfig:
    found = {t.name: t for t in signature.inputs}
    missing = [n for n in NETWORK_INPUTS if n not in found]
    outputs = {t.name for t in signature.outputs}
    if missing or NETWORK_OUTPUT not in outputs:
        raise InvalidInput(f"the network must take {list(NETWORK_INPUTS)} and return '{NETWORK_OUTPUT}'; "
                           f"its file takes {sorted(found)} and returns {sorted(outputs)}")
    image = found["x"].shape[1:]
    if not image or any(d < 1 for d in image):
        raise InvalidInput(f"the network's 'x' needs a fixed image shape after the batch axis, not {found['x'].shape}")
    p = parameters(config)
    defaults = SamplerConfig(NoiseSchedule(), tuple(image))
    schedule = NoiseSchedule(int(p.get("train_steps", 1000)), float(p.get("beta_start", 1e-4)), float(p.get("beta_end", 0.02)))
    return SamplerConfig(
        schedule=schedule,
        image_shape=tuple(image),
        classes=int(p.get("classes", defaults.classes)),
        null_class=int(p.get("null_class", defaults.null_class)),
        max_rows=max(2, int(p.get("max_step_rows", defaults.max_rows))),
        max_queue=policy.default_queue_policy.max_queue_size,
        default_steps=int(p.get("default_steps", defaults.default_steps)),
        max_steps=min(schedule.train_steps, int(p.get("max_steps", defaults.max_steps))),
        default_guidance=float(p.get("default_guidance_scale", defaults.default_guidance)),
    )


def _complete(config: ModelConfig, name: str, kind, image_shape: tuple[int, ...]) -> ModelConfig:
    """The request-facing tensors: filled in when the config leaves them out, checked when
    it declares them."""
    canonical_in = [mc.ModelInput(name=n, data_type=datatype_enum(d), dims=[1], optional=n != "label") for n, d in REQUEST_INPUTS.items()]
    canonical_out = [mc.ModelOutput(name="image", data_type=datatype_enum("FP32"), dims=list(image_shape)),
                     mc.ModelOutput(name="step", data_type=datatype_enum("INT32"), dims=[1])]
    out = complete_io(config, name, canonical_in, canonical_out, "the sampler")
    out.platform = out.platform or kind.platform
    out.backend = out.backend or kind.backend
    if "label" not in {t.name for t in out.input}:
        raise InvalidInput("config input 'label' is required: it is the class to draw")
    return out

