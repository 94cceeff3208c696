"""Model configuration: Triton's ``ModelConfig`` message, read, auto-completed and checked.

There is one schema — the generated ``ModelConfig`` that ``tritonclient`` ships — read from
protobuf text (``config.pbtxt``) or from ``config.yaml`` mapped onto the same message.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from server.core.datatypes import config_to_wire, wire_to_config
from server.core.errors import InvalidInput
from server.core.types import TensorSpec
from server.runtimes import RuntimeKind
from server.runtimes.base import Signature

ModelConfig = mc.ModelConfig


def read_config(model_dir: Path) -> ModelConfig | None:
    """The config in ``model_dir`` (config.pbtxt, else config.yaml), or None when absent."""
    pbtxt, yaml_path = model_dir / "config.pbtxt", model_dir / "config.yaml"
    if pbtxt.is_file():
        try:
            return text_format.Parse(pbtxt.read_text(), ModelConfig())
        except text_format.ParseError as exc:
            raise InvalidInput(f"config.pbtxt does not parse: {exc}") from None
    if yaml_path.is_file():
        import yaml

        try:
            data = yaml.safe_load(yaml_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InvalidInput(f"config.yaml does not parse: {exc}") from None
        return config_from_dict(data)
    return None


def config_from_dict(data: dict) -> ModelConfig:
    try:
        return json_format.ParseDict(data, ModelConfig())
    except json_format.ParseError as exc:
        raise InvalidInput(f"model config is not a valid ModelConfig: {exc}") from None


def config_from_json(text: str) -> ModelConfig:
    """A config given as a JSON string (repository load with a config override)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"config override is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("config override must be a JSON object")
    return config_from_dict(data)


def config_to_json(config: ModelConfig) -> dict:
    """The JSON shape Triton returns for a config: proto field names, defaults printed,
    int64 fields as JSON numbers (protobuf's JSON mapping would print them as strings)."""
    data = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _int64_strings_to_numbers(data)


def _int64_strings_to_numbers(value):
    if isinstance(value, dict):
        return {k: _int64_strings_to_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int64_strings_to_numbers(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


# ---- auto-complete -----------------------------------------------------------------


def complete_config(
    config: ModelConfig, name: str, kind: RuntimeKind, signature: Signature, default_max_batch_size: int
) -> ModelConfig:
    """Fill what the config leaves out from the model file's signature, as Triton does.

    - name / platform / backend from the folder and the runtime;
    - ``max_batch_size``: when the config gives no inputs and no ``max_batch_size`` and every
      tensor of the file has a dynamic first dimension, the model batches with
      ``default_max_batch_size`` and gets a dynamic batcher;
    - inputs / outputs from the file, without the batch dimension when the model batches.
    """
    out = ModelConfig()
    out.CopyFrom(config)
    out.name = out.name or name
    if out.name != name:
        raise InvalidInput(f"config name '{out.name}' does not match the model folder '{name}'")
    out.platform = out.platform or kind.platform
    out.backend = out.backend or kind.backend
    tensors = signature.inputs + signature.outputs
    batchable = bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)
    if not out.input and out.max_batch_size == 0 and batchable and default_max_batch_size > 0:
        out.max_batch_size = default_max_batch_size
        if not out.HasField("dynamic_batching") and not out.HasField("sequence_batching"):
            out.dynamic_batching.SetInParent()
    skip = 1 if out.max_batch_size > 0 else 0
    if not out.input:
        for spec in signature.inputs:
            out.input.append(mc.ModelInput(name=spec.name, data_type=datatype_enum(spec.datatype), dims=list(spec.shape[skip:])))
    if not out.output:
        for spec in signature.outputs:
            out.output.append(mc.ModelOutput(name=spec.name, data_type=datatype_enum(spec.datatype), dims=list(spec.shape[skip:])))
    _check_against_signature(out, signature)
    return out


def complete_io(config: ModelConfig, name: str, inputs: list, outputs: list, owner: str) -> ModelConfig:
    """A copy of ``config`` named ``name`` whose tensors are the canonical ``inputs`` /
    ``outputs`` (``mc.ModelInput`` / ``mc.ModelOutput``) of a model whose scheduler fixes
    them: filled in when the config leaves them out, checked when it declares them."""
    out = ModelConfig()
    out.CopyFrom(config)
    out.name = name
    if not out.input:
        out.input.extend(inputs)
    if not out.output:
        out.output.extend(outputs)
    for declared, canonical, what in ((out.input, inputs, "input"), (out.output, outputs, "output")):
        known = {t.name: t for t in canonical}
        for tensor in declared:
            want = known.get(tensor.name)
            if want is None:
                raise InvalidInput(f"config {what} '{tensor.name}' is not one {owner} knows ({sorted(known)})")
            if tensor.data_type != want.data_type or list(tensor.dims) != list(want.dims):
                raise InvalidInput(f"config {what} '{tensor.name}' must be {config_to_wire(mc.DataType.Name(want.data_type))} "
                                   f"with dims {list(want.dims)}")
    return out


def datatype_enum(datatype: str) -> int:
    """A wire datatype (``FP32``) as the config's ``DataType`` enum value (``TYPE_FP32``)."""
    return mc.DataType.Value(wire_to_config(datatype))


def _check_against_signature(config: ModelConfig, signature: Signature) -> None:
    if config.max_batch_size < 0:
        raise InvalidInput("max_batch_size must be >= 0")
    file_inputs = {t.name: t for t in signature.inputs}
    file_outputs = {t.name: t for t in signature.outputs}
    for declared, actual, what in ((config.input, file_inputs, "input"), (config.output, file_outputs, "output")):
        for tensor in declared:
            if actual and tensor.name not in actual:
                raise InvalidInput(
                    f"config {what} '{tensor.name}' is not in the model file, which has {sorted(actual)}"
                )
            if actual:
                wire = config_to_wire(mc.DataType.Name(tensor.data_type))
                if actual[tensor.name].datatype != wire:
                    raise InvalidInput(
                        f"config {what} '{tensor.name}' is {wire} but the model file has {actual[tensor.name].datatype}"
                    )
    missing = [n for n in file_inputs if n not in {t.name for t in config.input}]
    if config.input and missing:
        raise InvalidInput(f"config leaves out model input(s) {missing}")


# ---- views the rest of the server uses ----------------------------------------------


def tensor_specs(config: ModelConfig) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as clients see them (leading -1 batch dim when the model batches)."""
    batch = (-1,) if config.max_batch_size > 0 else ()

    def spec(t, optional: bool = False) -> TensorSpec:
        return TensorSpec(t.name, config_to_wire(mc.DataType.Name(t.data_type)), batch + tuple(t.dims), optional)

    return (
        tuple(spec(t, t.optional) for t in config.input),
        tuple(spec(t) for t in config.output),
    )


def parameters(config: ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}
