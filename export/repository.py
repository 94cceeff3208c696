"""Triton-layout repository entries, written with Triton's own ``ModelConfig`` message.

    DEST/NAME/config.pbtxt         text-format tritonclient.grpc.model_config_pb2.ModelConfig
    DEST/NAME/<version>/model.onnx (or model.plan)
    DEST/NAME/labels.txt           optional; referenced by an output's label_filename

An entry is assembled in a sibling temp folder and swapped in with a rename, so a
server polling the repository never sees half of one.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

FINGERPRINT_KEY = "deepserve_build_fingerprint"
PLATFORM_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
_ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorConfig:
    name: str
    data_type: str  # Triton's enum name: "TYPE_FP32", ...
    dims: tuple[int, ...]  # without the batch axis; -1 = variable
    label_filename: str | None = None


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_size: tuple[int, ...] = (16, 32)
    max_queue_delay_microseconds: int = 500
    priority_levels: int = 0  # 0: one queue (no priority_levels written)


@dataclass(frozen=True)
class EntryConfig:
    name: str
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    platform: str = "onnxruntime_onnx"
    max_batch_size: int = 64
    dynamic_batching: DynamicBatching | None = DynamicBatching()  # None: no dynamic_batching block
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"
    parameters: dict[str, str] = field(default_factory=dict)
    decoupled: bool = False  # model_transaction_policy { decoupled: true }


def model_config(entry: EntryConfig) -> mc.ModelConfig:
    config = mc.ModelConfig(name=entry.name, platform=entry.platform, max_batch_size=entry.max_batch_size)
    for t in entry.inputs:
        config.input.add(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=list(t.dims))
    for t in entry.outputs:
        out = config.output.add(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=list(t.dims))
        if t.label_filename:
            out.label_filename = t.label_filename
    if entry.dynamic_batching is not None:
        db = entry.dynamic_batching
        config.dynamic_batching.preferred_batch_size.extend(db.preferred_batch_size)
        config.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_microseconds
        if db.priority_levels:  # requests that give no priority take the lowest level
            config.dynamic_batching.priority_levels = db.priority_levels
            config.dynamic_batching.default_priority_level = db.priority_levels
    if entry.decoupled:
        config.model_transaction_policy.decoupled = True
    config.instance_group.add(count=entry.instance_count, kind=mc.ModelInstanceGroup.Kind.Value(entry.instance_kind))
    for key, value in sorted(entry.parameters.items()):
        config.parameters[key].string_value = value
    return config


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` (or an entry folder holding one)."""
    path = path / "config.pbtxt" if path.is_dir() else path
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def tensors_from_onnx(model: onnx.ModelProto, labels_for: str | None = None, batched: bool = True):
    """(inputs, outputs) TensorConfigs from a graph's own I/O (dtypes as exported: fp16 stays fp16)."""

    def one(value: onnx.ValueInfoProto, label: bool) -> TensorConfig:
        tt = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        return TensorConfig(value.name, _ONNX_TO_TRITON[tt.elem_type], dims[1:] if batched else dims,
                            "labels.txt" if label else None)

    inputs = tuple(one(v, False) for v in model.graph.input)
    outputs = tuple(one(v, v.name == labels_for) for v in model.graph.output)
    return inputs, outputs


def fingerprint(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def is_up_to_date(dest: Path, name: str, print_: str, version: int = 1) -> bool:
    """True when ``dest/name`` was written from the same inputs (same fingerprint) and is complete."""
    entry = dest / name
    try:
        config = read_config(entry)
    except (OSError, text_format.ParseError):
        return False
    artifact = entry / str(version) / PLATFORM_FILES.get(config.platform, "model.onnx")
    return artifact.is_file() and config.parameters[FINGERPRINT_KEY].string_value == print_


def write_entry(
    dest: Path,
    entry: EntryConfig,
    artifact: bytes,
    *,
    version: int = 1,
    labels: tuple[str, ...] | None = None,
) -> Path:
    """Write ``dest/entry.name`` (config, one version's artifact, labels); replaces an existing entry."""
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / entry.name
    staging = dest / f".{entry.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / str(version)).mkdir(parents=True)
    if final.is_dir():  # keep other versions already there
        for child in final.iterdir():
            if child.is_dir() and child.name.isdigit() and child.name != str(version):
                shutil.copytree(child, staging / child.name)
    (staging / str(version) / PLATFORM_FILES[entry.platform]).write_bytes(artifact)
    if labels is not None:
        (staging / "labels.txt").write_text("\n".join(labels) + "\n")
    (staging / "config.pbtxt").write_text(config_text(model_config(entry)))
    old = dest / f".{entry.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
