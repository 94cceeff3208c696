"""Loading a generation model: a Hugging Face causal-LM checkpoint behind the engine.

A version folder holding ``config.json`` (with a ``model_type``), ``*.safetensors`` and
``tokenizer.json`` is a generation model; ``config.pbtxt`` is optional (``backend:
"generation"`` says so explicitly). The model is decoupled and does not batch requests
(``max_batch_size: 0``): the engine batches their tokens itself.

Parameters (strings, as every config parameter), each with its default:
``device`` (``cuda`` when a GPU is present and the instance group allows it, else
``cpu``), ``dtype`` (``float32``; ``float16``/``bfloat16`` on CUDA), ``block_size``
(16 tokens), ``kv_cache_bytes`` (the runner's default: 256 MiB on CPU) or
``num_kv_blocks``, ``max_model_len`` (the checkpoint's), ``max_num_seqs`` (64),
``max_num_batched_tokens`` (512), ``cpu_threads`` (torch's threads in the engine's thread:
1 for a hidden size up to 512, else every core), ``max_waiting`` (``dynamic_batching``'s
``max_queue_size``, else the server's default queue size), ``enable_prefix_caching``
(``true``). ``torch`` is imported only here, when a generation model loads.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from server.core.errors import InvalidInput
from server.observability.stats import ModelTelemetry
from server.pipelines.grammar import Grammars
from server.pipelines.text import TextCodec, TextModel
from server.repository.config import ModelConfig, complete_io, datatype_enum, parameters, tensor_specs
from server.repository.loaded import LoadedModel
from server.repository.model import LoadOptions, instance_devices
from server.scheduling.generation.engine import EngineConfig, GenerationEngine
from server.scheduling.generation.planner import Budget
from server.scheduling.policy import batch_policy_from_config

BACKEND = "generation"
# The model runner (torch) is imported by name when a generation model loads, as the runtime
# registry imports its runtimes: no import on the serving path reaches torch.
RUNNER_MODULE = "server.scheduling.generation.runner"
INPUTS = {"text_input": ("BYTES", [1]), "input_ids": ("INT32", [-1]), "max_tokens": ("INT32", [1]), "stream": ("BOOL", [1])}
OUTPUTS = {
    "text_output": ("BYTES", [1]), "index": ("INT32", [1]), "finish_reason": ("BYTES", [1]),
    "token_ids": ("INT32", [-1]), "logprobs": ("FP32", [-1]), "top_logprob_ids": ("INT32", [-1, -1]),
    "top_logprobs": ("FP32", [-1, -1]), "prompt_tokens": ("INT32", [1]), "cached_tokens": ("INT32", [1]),
    "completion_tokens": ("INT32", [1]),
}


def is_checkpoint(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file() or not (folder / "tokenizer.json").is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False


def is_generation(config: ModelConfig | None, model_dir: Path) -> bool:
    if config is not None and (config.backend or config.platform):
        return config.backend == BACKEND
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return bool(versions) and all(is_checkpoint(v) for v in versions)


def _int(p: dict[str, str], key: str, default: int | None) -> int | None:
    value = p.get(key)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(f"parameter '{key}' must be an integer, not {value!r}") from None
    if number < 1:
        raise InvalidInput(f"parameter '{key}' must be at least 1, not {number}")
    return number


def _device(config: ModelConfig, p: dict[str, str]) -> str:
    """The ``device`` parameter, else the instance group's first device (Triton's defaults:
    the first GPU when one is present, else the CPU)."""
    return p.get("device") or instance_devices(config)[0]


def load_generation(name: str, version: str, model_dir: Path, config: ModelConfig | None, options: LoadOptions,
                    telemetry: ModelTelemetry) -> LoadedModel:
    """Load the checkpoint onto its device and build the engine (blocking)."""
    config = config if config is not None else ModelConfig()
    if config.name and config.name != name:
        raise InvalidInput(f"config name '{config.name}' does not match the model folder '{name}'")
    if config.max_batch_size:
        raise InvalidInput(f"generation model '{name}' takes one prompt per request (max_batch_size: 0); "
                           "the engine batches tokens itself up to max_num_batched_tokens")
    folder = model_dir / version
    if not is_checkpoint(folder):
        raise InvalidInput(f"generation model '{name}' version {version} needs config.json (with model_type) "
                           "and tokenizer.json beside its *.safetensors")
    p = parameters(config)
    ModelRunner = importlib.import_module(RUNNER_MODULE).ModelRunner  # noqa: N806 (a class)

    cache_bytes = _int(p, "kv_cache_bytes", None)
    try:
        runner = ModelRunner(folder, block_size=_int(p, "block_size", 16), kv_cache_bytes=cache_bytes,
                             num_blocks=_int(p, "num_kv_blocks", None), device=_device(config, p),
                             dtype=p.get("dtype", "float32"), max_model_len=_int(p, "max_model_len", None),
                             threads=_int(p, "cpu_threads", None))
    except ValueError as exc:
        raise InvalidInput(f"generation model '{name}': {exc}") from None
    try:
        codec = TextCodec(folder)
        spec = runner.spec
        eos = tuple(dict.fromkeys((*codec.eos_token_ids, *spec.eos_token_ids)))
        policy = batch_policy_from_config(config, options.default_max_queue_size)
        engine_config = EngineConfig(
            vocab_size=spec.vocab_size, max_model_len=spec.max_model_len, block_size=spec.block_size,
            num_blocks=spec.num_blocks, eos_token_ids=eos,
            budget=Budget(max_batched_tokens=_int(p, "max_num_batched_tokens", 512), max_seqs=_int(p, "max_num_seqs", 64)),
            max_waiting=_int(p, "max_waiting", policy.default_queue_policy.max_queue_size),
            prefix_caching=p.get("enable_prefix_caching", "true").lower() != "false",
        )
        grammars = Grammars(codec.tokenizer_json, eos[0] if eos else -1, spec.vocab_size)
        completed = _complete(config, name)
    except Exception:
        runner.close()
        raise
    inputs, outputs = tensor_specs(completed)
    engine = GenerationEngine(runner, codec, grammars, engine_config, telemetry.metrics.generation(), observer=telemetry)
    model = LoadedModel(name, version, completed, inputs, outputs, {}, telemetry, engine,
                        text_inputs=frozenset({"text_input"}))
    model.text = TextModel(codec, spec.max_model_len)
    return model


def _complete(config: ModelConfig, name: str) -> ModelConfig:
    canonical_in = [mc.ModelInput(name=n, data_type=datatype_enum(d), dims=dims, optional=True) for n, (d, dims) in INPUTS.items()]
    canonical_out = [mc.ModelOutput(name=n, data_type=datatype_enum(d), dims=dims) for n, (d, dims) in OUTPUTS.items()]
    out = complete_io(config, name, canonical_in, canonical_out, "the generation engine")
    out.backend = BACKEND
    out.model_transaction_policy.decoupled = True
    if "task" not in out.parameters:
        out.parameters["task"].string_value = "text_generation"
    return out
