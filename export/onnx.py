"""torch -> ONNX: export with named dynamic axes, check, infer shapes, simplify.

``export_onnx`` returns an in-memory ``onnx.ModelProto``; nothing is written until
parity has passed (see ``export_verified`` and ``export.variants``).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from export.parity import ParityReport, Runner, check_elementwise
from export.spec import ExportSpec

log = logging.getLogger(__name__)


def export_onnx(module: torch.nn.Module, spec: ExportSpec, *, simplify: bool = True) -> onnx.ModelProto:
    """Export ``module`` (eval mode, on CPU) per ``spec``; checked, shape-inferred, simplified."""
    module = module.eval().cpu()
    example = spec.example_inputs()
    with warnings.catch_warnings():
        # torch.onnx warns about its own internals (deprecations, version conversion);
        # they say nothing about this model and must not fail a warnings-as-errors run.
        warnings.simplefilter("ignore")
        _quiet_torch_onnx_logs()
        model = _export_dynamo(module, spec, example) if spec.exporter == "dynamo" else _export_torchscript(module, spec, example)
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    if simplify:
        model = simplify_graph(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _export_dynamo(module: torch.nn.Module, spec: ExportSpec, example: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    dims = {name: torch.export.Dim(name, min=1, max=spec.max_dim) for io in spec.inputs for name in io.dynamic_axes.values()}
    dynamic_shapes = tuple({axis: dims[name] for axis, name in io.dynamic_axes.items()} for io in spec.inputs)
    program = torch.onnx.export(
        module, example, None, dynamo=True, input_names=spec.input_names, output_names=spec.output_names,
        dynamic_shapes=dynamic_shapes, opset_version=spec.opset, verbose=False,
    )
    model = program.model_proto
    _name_output_axes(model, spec)
    return model


def _export_torchscript(module: torch.nn.Module, spec: ExportSpec, example: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {io_.name: io_.dynamic_axes for io_ in (*spec.inputs, *spec.outputs)}
    torch.onnx.export(
        module, example, buf, dynamo=False, input_names=spec.input_names, output_names=spec.output_names,
        dynamic_axes=axes, opset_version=spec.opset, do_constant_folding=True,
    )
    return onnx.load_from_string(buf.getvalue())


def _name_output_axes(model: onnx.ModelProto, spec: ExportSpec) -> None:
    """The dynamo exporter names output axes after its own symbols (s0, ...): use the spec's names."""
    by_name = {o.name: o for o in spec.outputs}
    for out in model.graph.output:
        io_spec = by_name.get(out.name)
        if io_spec is None:
            continue
        for axis, name in io_spec.dynamic_axes.items():
            dim = out.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_param = name


def _quiet_torch_onnx_logs() -> None:
    for name in ("torch.onnx", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)


def simplify_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-node removal and pattern fusion with onnxslim."""
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(model)
    return slim if slim is not None else model


def ort_optimize_offline(model: onnx.ModelProto, level: str = "extended") -> onnx.ModelProto:
    """ONNX Runtime's own graph optimizations, saved, so a session skips them at load.

    ``extended`` fuses into ORT-only ops (FusedConv, ...): the result runs on ONNX
    Runtime's CPU provider only, which is why it is a separate variant.
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = out
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(out)


def ort_session(model: onnx.ModelProto | bytes | Path, threads: int = 0, providers: Sequence[str] = ("CPUExecutionProvider",)):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads > 0:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # As the server's runtime does: idle sessions' threads must not spin, or one session
    # being measured competes with the spinning pools of those measured before it.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else (str(model) if isinstance(model, Path) else model)
    return ort.InferenceSession(source, so, providers=list(providers))


def ort_runner(model: onnx.ModelProto | bytes | Path, spec: ExportSpec, threads: int = 0) -> Runner:
    session = ort_session(model, threads)
    # The graph's own dtypes: an fp16 model without kept I/O types takes float16.
    dtypes = {i.name: _np_dtype(i.type) for i in session.get_inputs()}

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(spec.output_names, {k: v.astype(dtypes.get(k, v.dtype), copy=False) for k, v in feed.items()})

    return run


def _np_dtype(ort_type: str) -> np.dtype:
    """The numpy dtype of an ONNX Runtime input type string (the server's own map; float32 if unknown)."""
    from server.core.datatypes import numpy_dtype
    from server.runtimes.onnxruntime import ORT_TYPES

    return numpy_dtype(ORT_TYPES.get(ort_type, "FP32"))


def export_verified(
    module: torch.nn.Module,
    spec: ExportSpec,
    path: Path,
    *,
    held_out: dict[str, np.ndarray] | None = None,
) -> ParityReport:
    """Export fp32 ONNX, check it element-wise against torch, and only then write ``path``.

    Raises :class:`export.parity.ParityError` (nothing written) when parity fails.
    """
    model = export_onnx(module, spec)
    report = check_elementwise("fp32", module, ort_runner(model, spec), spec, held_out)
    write_model(model, path)
    return report


def write_model(model: onnx.ModelProto, path: Path) -> None:
    """Write atomically (temp file + rename), so a server scanning the folder never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
