"""Users' own torch networks: ``deepserve export model --module PATH.py:FUNC --input ...``.

Everything a shipped family knows is taken from the command line instead:

- ``--module PATH.py:FUNC`` (or ``package.module:FUNC``): ``FUNC()`` returns an ``nn.Module``
  or a ``(module, example_inputs)`` pair;
- ``--input NAME:SHAPE[:DTYPE]``: ``SHAPE`` is a comma list, a non-integer entry names a
  dynamic axis (``input:batch,3,224,224``); the first axis is the batch axis;
- ``--weights``: safetensors, or a ``torch.save`` state dict (loaded with ``weights_only=True``);
- ``--calibration-data`` (.npz per input name, or .npy for one input): int8-static
  calibration, and the inputs of the closeness check of lossy variants;
- ``--eval-data`` (.npz: ``x`` or one array per input, and ``y`` integer labels): lossy
  variants are judged by their accuracy delta.

Every mistake raises :class:`UserInputError` with a sentence that names the flag; the CLI
prints it and exits 2, without a traceback and without writing anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from export.data import load_calibration, load_eval
from export.errors import UserInputError
from export.families import Family, HeldOut
from export.parity import ParityError, ParityReport, Runner, measure_closeness, torch_outputs
from export.references import load_function, parse_module_ref
from export.spec import ExportSpec, IOSpec

DTYPES = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "INT64": "int64", "INT32": "int32",
          "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
FLOAT_RANGE = (-1.0, 1.0)  # where random inputs of float inputs are drawn from
INT_RANGE = (0, 2)  # ... of integer inputs (valid indices for any embedding)
FIRST_SIZES = (2, 7, 5, 11, 13, 17)  # trace / parity sizes for dynamic axes (distinct, so none is specialized)
RECURRENT_OPS = frozenset({"GRU", "LSTM", "RNN"})  # no float16 CPU kernels in ONNX Runtime (a session segfaults)
SHOW = 5  # keys listed in a weights mismatch message


# -- parsing ------------------------------------------------------------------------------

def parse_input(text: str) -> IOSpec:
    """``NAME:SHAPE[:DTYPE]`` -> IOSpec; e.g. ``audio:batch,time,80:FP32``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UserInputError(f"--input '{text}': expected NAME:SHAPE[:DTYPE], e.g. input:batch,3,224,224")
    name, shape_text = parts[0].strip(), parts[1]
    dtype_name = parts[2].strip().upper() if len(parts) == 3 else "FP32"
    if dtype_name not in DTYPES:
        raise UserInputError(f"--input '{text}': unknown dtype '{parts[2]}'; known: {', '.join(DTYPES)}")
    shape: list[int | str] = []
    for item in (s.strip() for s in shape_text.split(",")):
        if not item:
            raise UserInputError(f"--input '{text}': empty entry in the shape")
        if re.fullmatch(r"-?\d+", item):
            if int(item) < 1:
                raise UserInputError(f"--input '{text}': sizes must be >= 1 (name a dynamic axis instead of {item})")
            shape.append(int(item))
        elif re.fullmatch(r"[A-Za-z_]\w*", item):
            shape.append(item)
        else:
            raise UserInputError(f"--input '{text}': '{item}' is neither a size nor an axis name")
    if not isinstance(shape[0], str):
        raise UserInputError(f"--input '{text}': the first axis is the batch axis and must be a name (e.g. batch)")
    dtype = DTYPES[dtype_name]
    value_range = INT_RANGE if dtype_name.startswith(("INT", "UINT")) or dtype_name == "BOOL" else FLOAT_RANGE
    return IOSpec(name, tuple(shape), dtype, value_range)


def load_user_module(text: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...] | None]:
    """Call FUNC; returns (module in eval mode, example inputs or None)."""
    func = load_function(text)
    func_name = parse_module_ref(text)[1]
    try:
        result = func()
    except Exception as err:
        raise UserInputError(f"--module: {func_name}() raised {type(err).__name__}: {err}") from None
    examples = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        result, examples = result
        examples = (examples,) if isinstance(examples, torch.Tensor) else examples
        if not isinstance(examples, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in examples):
            raise UserInputError(f"--module: {func_name}() returned (module, {type(examples).__name__}); "
                                 "example inputs must be a tensor or a tuple of tensors")
        examples = tuple(examples)
    if not isinstance(result, torch.nn.Module):
        raise UserInputError(f"--module: {func_name}() returned {type(result).__name__}, not a torch.nn.Module "
                             "or a (module, example_inputs) pair")
    return result.eval(), examples


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """safetensors, or a torch.save state dict (weights_only=True); strict, with the mismatches listed."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"--weights {path}: could not load it as safetensors or a weights-only torch state "
                             f"dict: {first}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"--weights {path}: not a state dict (a mapping of names to tensors)")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs the network's {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:SHOW])}{more}")
    if problems:
        raise UserInputError(f"--weights {path} does not fit the network: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


# -- the spec, from the flags and the network itself ---------------------------------------

class UserSpec(ExportSpec):
    """An ExportSpec whose tracing inputs may be the user's own example inputs."""

    examples: tuple[torch.Tensor, ...] | None = None

    def example_inputs(self, sizes: dict[str, int] | None = None) -> tuple[torch.Tensor, ...]:
        if sizes is None and self.examples is not None:
            return self.examples
        return super().example_inputs(sizes)


def _inputs_from_examples(examples: tuple[torch.Tensor, ...]) -> tuple[IOSpec, ...]:
    inverse = {v: k for k, v in DTYPES.items()}
    out = []
    for i, t in enumerate(examples):
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in inverse:
            raise UserInputError(f"--module: example input {i} has dtype {t.dtype}; pass --input")
        out.append(parse_input(f"{'input' if i == 0 else f'input_{i}'}:{','.join(['batch', *map(str, t.shape[1:])])}"
                               f":{inverse[dtype]}"))
    return tuple(out)


def build_spec(module: torch.nn.Module, inputs: Sequence[IOSpec], output_names: Sequence[str],
               examples: tuple[torch.Tensor, ...] | None = None) -> UserSpec:
    """Checks the inputs against the network by running it, and names the outputs' axes."""
    inputs = tuple(inputs) or (_inputs_from_examples(examples) if examples else ())
    if not inputs:
        raise UserInputError("--input: at least one NAME:SHAPE[:DTYPE] is needed")
    if len({i.name for i in inputs}) != len(inputs):
        raise UserInputError(f"--input: duplicate names in {[i.name for i in inputs]}")
    batch_names = {i.shape[0] for i in inputs}
    if len(batch_names) != 1:
        raise UserInputError(f"--input: every input's first axis is the batch axis and must have one name, "
                             f"not {sorted(batch_names)}")
    axes = list(dict.fromkeys(d for i in inputs for d in i.shape if isinstance(d, str)))
    trace = {a: FIRST_SIZES[k % len(FIRST_SIZES)] for k, a in enumerate(axes)}
    if examples is not None:
        trace = _sizes_from_examples(inputs, examples, trace)
    # two more sizes per axis, both different from the traced one (so every dynamic axis shows)
    other = {a: trace[a] + 5 + k for k, a in enumerate(axes)}
    first = {a: 1 if k == 0 else trace[a] + 1 for k, a in enumerate(axes)}
    probe = UserSpec(inputs=inputs, outputs=(), trace_sizes=trace, parity_sizes=(first, other))
    shapes = []
    for sizes in (trace, other):
        feed = probe.random_inputs(sizes, seed=0)
        try:
            outs = torch_outputs(module, probe, feed)
        except Exception as err:
            shown = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in feed.items())
            raise UserInputError(f"--input: the network does not run on inputs of the declared shapes ({shown}): "
                                 f"{type(err).__name__}: {err}") from None
        shapes.append([o.shape for o in outs])
    n = len(shapes[0])
    names = list(output_names) or ["output"] + [f"output_{i}" for i in range(1, n)]
    if len(names) != n:
        raise UserInputError(f"--output: {len(names)} name(s) given, the network returns {n} output(s)")
    outputs = []
    for name, a, b in zip(names, shapes[0], shapes[1], strict=True):
        shape: list[int | str] = []
        for axis, (x, y) in enumerate(zip(a, b, strict=True)):
            if x == y:
                shape.append(int(x))
                continue
            match = [ax for ax in axes if trace[ax] == x and other[ax] == y]
            shape.append(match[0] if match else f"{name}_dim{axis}")
        outputs.append(IOSpec(name, tuple(shape)))
    spec = UserSpec(inputs=inputs, outputs=tuple(outputs), trace_sizes=trace, parity_sizes=(first, other))
    object.__setattr__(spec, "examples", examples)
    return spec


def _sizes_from_examples(inputs, examples, sizes: dict[str, int]) -> dict[str, int]:
    if len(examples) != len(inputs):
        raise UserInputError(f"--input: {len(inputs)} input(s) declared, the module's example inputs are {len(examples)}")
    sizes = dict(sizes)
    for io, t in zip(inputs, examples, strict=True):
        if t.ndim != len(io.shape) or any(isinstance(d, int) and d != s for d, s in zip(io.shape, t.shape, strict=True)):
            raise UserInputError(f"--input {io.name}: declared {','.join(map(str, io.shape))}, the module's example "
                                 f"input has shape {tuple(t.shape)}")
        sizes.update({d: int(s) for d, s in zip(io.shape, t.shape, strict=True) if isinstance(d, str)})
    return sizes


# -- judging lossy variants without labels -------------------------------------------------

@dataclass(frozen=True)
class ClosenessBars:
    """Lossy variants against fp32 torch without labels: every bar is checked."""

    max_rel_err: float  # max |err| <= this fraction of max |fp32 output|
    min_cosine: float  # per-sample cosine similarity of the flattened outputs, worst sample
    min_top1_agreement: float  # argmax over the first output's last axis (only with real data)


CLOSENESS = {
    "int8-dynamic": ClosenessBars(max_rel_err=0.1, min_cosine=0.98, min_top1_agreement=0.9),
    "int8-static": ClosenessBars(max_rel_err=0.1, min_cosine=0.98, min_top1_agreement=0.9),
    "trt-int8": ClosenessBars(max_rel_err=0.1, min_cosine=0.98, min_top1_agreement=0.9),
    "sparse50": ClosenessBars(max_rel_err=0.3, min_cosine=0.9, min_top1_agreement=0.8),
    "pruned50": ClosenessBars(max_rel_err=0.3, min_cosine=0.9, min_top1_agreement=0.8),
}


@dataclass(frozen=True)
class ClosenessReport(ParityReport):
    cosine: float = 0.0
    rel_err: float = 0.0
    real_data: bool = False

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        where = "calibration" if self.real_data else "random"
        top1 = f", top-1 agreement {self.top1_agreement:.4f}" if self.top1_agreement is not None else ""
        return (f"{self.variant}: {verdict} closeness to fp32 on {self.n_inputs} {where} inputs: "
                f"max |err| {self.max_abs_err:.3g} ({100 * self.rel_err:.2f} % of max |fp32|), "
                f"worst cosine {self.cosine:.4f}{top1} (tolerance {self.tolerance})")


def check_closeness(variant: str, reference: torch.nn.Module, run: Runner, spec: ExportSpec,
                    feed: dict[str, np.ndarray], real_data: bool, batch_size: int = 64) -> ClosenessReport:
    tol = CLOSENESS[variant]
    c = measure_closeness(variant, reference, run, spec, feed, batch_size)
    top1 = c.top1_agreement if real_data else None
    passed = (c.rel_err <= tol.max_rel_err and c.cosine >= tol.min_cosine
              and (top1 is None or top1 >= tol.min_top1_agreement))
    bars = f"max |err| <= {100 * tol.max_rel_err:g} % of max |fp32|, cosine >= {tol.min_cosine:g}"
    if real_data:
        bars += f", top-1 agreement >= {tol.min_top1_agreement:g}"
    report = ClosenessReport(variant, "closeness", passed, c.n_inputs, c.max_abs_err, tolerance=bars,
                             top1_agreement=top1, cosine=c.cosine, rel_err=c.rel_err, real_data=real_data)
    if not passed:
        raise ParityError(report)
    return report


# -- the family and the export -------------------------------------------------------------

@dataclass(frozen=True)
class UserNetwork:
    family: Family
    calibration: dict[str, np.ndarray] | None
    eval_data: HeldOut | None
    onnx_model: object | None = None  # --onnx: the user's graph, which is the fp32 variant as it is
    source: str = "--module"  # the flag the network came from, named in export errors


def user_family(name: str, module_ref: str, inputs: Sequence[str], outputs: Sequence[str], *,
                weights: Path | None = None, labels: Path | None = None, calibration_data: str | None = None,
                eval_data: str | None = None, finetune: str = "", preprocess: Mapping[str, str] | None = None,
                ) -> UserNetwork:
    """Every flag parsed and checked against the network; raises UserInputError."""
    specs = [parse_input(text) for text in inputs]
    module, examples = load_user_module(module_ref)
    if weights is not None:
        load_weights(module, weights)
    spec = build_spec(module, specs, outputs, examples)
    return _network(name, module, spec, labels, calibration_data, eval_data, finetune=finetune, preprocess=preprocess)


def _network(name: str, module, spec: ExportSpec, labels: Path | None, calibration_data: str | None,
             eval_data: str | None, onnx_model=None, source: str = "--module", finetune: str = "",
             preprocess: Mapping[str, str] | None = None) -> UserNetwork:
    """The data flags checked against the spec, and the one-off family."""
    from export.finetune import resolve

    names = tuple(labels.read_text().splitlines()) if labels else None
    options = dict(preprocess or {})
    calib = load_calibration(calibration_data, spec, options) if calibration_data else None
    held = load_eval(eval_data, spec, options, labels=names) if eval_data else None
    if names is not None and (len(spec.outputs[0].shape) != 2 or spec.outputs[0].shape[1] != len(names)):
        raise UserInputError(f"--labels {labels}: {len(names)} labels, the first output "
                             f"'{spec.outputs[0].name}' has shape {spec.outputs[0].shape}")
    if held is not None and len(spec.outputs[0].shape) != 2:
        raise UserInputError(f"--eval-data: accuracy needs the first output to be (batch, classes) scores, "
                             f"'{spec.outputs[0].name}' is {spec.outputs[0].shape}")
    batch = spec.inputs[0].shape[0]

    def random_calibration() -> dict[str, np.ndarray]:
        return spec.random_inputs({**spec.parity_sizes[1], batch: 128}, seed=1234)

    family = Family.for_module(
        name, module, spec, labels=names, label_output=spec.outputs[0].name,
        held_out=(lambda: held) if held is not None else None,
        calibration=(lambda: calib) if calib is not None else random_calibration,
        finetune=resolve(finetune, held, spec),
    )
    return UserNetwork(family, calib, held, onnx_model, source)


# -- an ONNX file: --onnx FILE.onnx ------------------------------------------------------------

PRUNING = frozenset({"sparse50", "pruned50"})


def _axis_name(text: str) -> str:
    name = re.sub(r"\W", "_", text.strip())
    return name if re.fullmatch(r"[A-Za-z_]\w*", name) else f"d_{name}"


def load_onnx(path: Path):
    """The file as a checked ``onnx.ModelProto`` (external data beside it is loaded too)."""
    import onnx

    if not path.is_file():
        raise UserInputError(f"--onnx: no such file {path}")
    try:
        model = onnx.load(str(path))
        if not model.graph.node and not model.graph.input:
            raise ValueError("the graph is empty")
        onnx.checker.check_model(model)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserInputError(f"--onnx {path}: not a valid ONNX model: {type(err).__name__}: {first}") from None
    return model


def onnx_io(model, path: Path | str = "") -> tuple[tuple[IOSpec, ...], list[str]]:
    """The graph's inputs (names, dtypes, dynamic axes) and output names.

    A ``dim_param`` (or a dim with neither size nor name) is a dynamic axis; every input's
    first axis must be dynamic (it is the batch axis the server batches on) and gets the
    first input's batch name. Initializers listed as inputs (old exporters) are not inputs."""
    from onnx import helper

    inverse = {v: k for k, v in DTYPES.items()}
    initializers = {i.name for i in model.graph.initializer}
    inputs, batch = [], None
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise UserInputError(f"--onnx {path}: input '{value.name}' is not a tensor (sequences and maps are "
                                 "not served)")
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        except Exception:
            dtype = f"element type {tensor.elem_type}"
        if dtype not in inverse:
            raise UserInputError(f"--onnx {path}: input '{value.name}' has dtype {dtype}; served dtypes: "
                                 f"{', '.join(inverse)}")
        if not tensor.HasField("shape") or not tensor.shape.dim:
            raise UserInputError(f"--onnx {path}: input '{value.name}' has no shape (or is a scalar); its first "
                                 "axis must be the dynamic batch axis")
        shape: list[int | str] = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            else:
                shape.append(_axis_name(dim.dim_param) if dim.dim_param else f"{_axis_name(value.name)}_dim{axis}")
        if not isinstance(shape[0], str):
            raise UserInputError(
                f"--onnx {path}: input '{value.name}' has a fixed first axis ({shape[0]}); deepserve batches on the "
                "first axis, so it must be dynamic: export it with a named batch axis, e.g. "
                f"torch.onnx.export(..., dynamic_axes={{'{value.name}': {{0: 'batch'}}}})")
        batch = batch or shape[0]
        shape[0] = batch
        value_range = INT_RANGE if inverse[dtype].startswith(("INT", "UINT")) or dtype == "bool" else FLOAT_RANGE
        inputs.append(IOSpec(value.name, tuple(shape), dtype, value_range))
    if not inputs:
        raise UserInputError(f"--onnx {path}: the graph has no inputs")
    outputs = [o.name for o in model.graph.output]
    return tuple(inputs), outputs


class OnnxReference:
    """The fp32 ONNX graph in ONNX Runtime, called as ``torch_outputs`` calls a torch module:
    the reference every variant of an ``--onnx`` model is checked against."""

    def __init__(self, model) -> None:
        from export.onnx import _np_dtype, ort_session

        self._session = ort_session(model)
        self._inputs = [(i.name, _np_dtype(i.type)) for i in self._session.get_inputs()]

    def eval(self) -> OnnxReference:
        return self

    def parameters(self):
        return iter(())

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {name: np.asarray(t.numpy(), dtype) for (name, dtype), t in zip(self._inputs, tensors, strict=True)}
        return tuple(torch.from_numpy(np.asarray(o)) for o in self._session.run(None, feed))


def onnx_family(name: str, path: Path, *, labels: Path | None = None, calibration_data: str | None = None,
                eval_data: str | None = None, preprocess: Mapping[str, str] | None = None) -> UserNetwork:
    """``--onnx``: inputs/outputs from the graph, the fp32 file itself as the reference."""
    model = load_onnx(path)
    inputs, outputs = onnx_io(model, path)
    try:
        reference = OnnxReference(model)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserInputError(f"--onnx {path}: ONNX Runtime cannot load it: {first}") from None
    try:
        spec = build_spec(reference, inputs, outputs)
    except UserInputError as err:
        raise UserInputError(str(err).replace("--input: the network", f"--onnx {path}: the graph", 1)) from None
    return _network(name, reference, spec, labels, calibration_data, eval_data, onnx_model=model, source="--onnx",
                    preprocess=preprocess)


# -- a torch.export program: --pt2 FILE.pt2 ----------------------------------------------------

def load_program(path: Path) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...] | None, list[str]]:
    """``torch.export.load`` of a pickle-free archive (the server's own check)
    -> (module, example inputs or None, the signature's input names)."""
    from server.runtimes.torch import check_program_archive

    if not path.is_file():
        raise UserInputError(f"--pt2: no such file {path}")
    try:
        check_program_archive(path)
    except Exception as err:  # zipfile.BadZipFile, ValueError with the reason
        raise UserInputError(f"--pt2 {path}: not a loadable torch.export archive: {err}") from None
    try:
        program = torch.export.load(str(path))
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserInputError(f"--pt2 {path}: torch.export.load failed: {type(err).__name__}: {first}") from None
    examples = None
    args = getattr(program, "example_inputs", None)
    if args is not None:
        positional, kwargs = args
        if not kwargs and positional and all(isinstance(t, torch.Tensor) for t in positional):
            examples = tuple(positional)
    names = list(program.graph_signature.user_inputs)
    module = program.module()
    # The program's module refuses eval()/train() (its graph was captured in one mode): make them no-ops,
    # keeping the module itself (its forward has the program's signature, which re-export needs).
    module.train = lambda mode=True: module
    module.eval = lambda: module
    return module, examples, names


def program_family(name: str, path: Path, inputs: Sequence[str], outputs: Sequence[str], *,
                   labels: Path | None = None, calibration_data: str | None = None,
                   eval_data: str | None = None, preprocess: Mapping[str, str] | None = None) -> UserNetwork:
    """``--pt2``: the program's module, inputs from ``--input`` or its example inputs; then as ``--module``."""
    specs = [parse_input(text) for text in inputs]
    module, examples, names = load_program(path)
    if not specs and examples is None:
        raise UserInputError(f"--pt2 {path}: the program carries no example inputs; pass --input NAME:SHAPE[:DTYPE]")
    if not specs:  # the program's example inputs under its signature's names, first axis the batch axis
        specs = list(_inputs_from_examples(examples))
        if len(names) == len(specs) and all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names):
            specs = [IOSpec(n, s.shape, s.dtype, s.value_range) for n, s in zip(names, specs, strict=True)]
    try:
        spec = build_spec(module, specs, outputs, examples)
    except UserInputError as err:
        raise UserInputError(f"--pt2 {path}: {err} (was the program exported with a dynamic batch axis, "
                             "dynamic_shapes={...: {0: torch.export.Dim('batch')}}?)") from None
    return _network(name, module, spec, labels, calibration_data, eval_data, source="--pt2", preprocess=preprocess)


def export_onnx_error(err: Exception, source: str = "--module") -> str:
    """One paragraph for an export failure, naming the op when torch's message does."""
    text = str(err)
    op = re.search(r"\b(aten(?:::|\.)[A-Za-z_][\w.]*|prims(?:::|\.)\w+)", text)
    summary = text.partition("## Exception summary")[2]  # torch's own summary, past its generic advice
    lines = [s.strip() for s in (summary or text).strip().splitlines() if s.strip()][:4]
    head = f"{source}: ONNX export failed{f' at op {op.group(1)}' if op else ''}: {type(err).__name__}"
    return head + (": " + "\n  ".join(lines) if lines else "")


def declare_output_axes(model, spec: ExportSpec):
    """The exporter can declare a dynamic output axis as the traced size (a GRU's time axis):
    the graph outputs get the spec's axes (measured by running the network at two sizes)."""
    by_name = {o.name: o for o in spec.outputs}
    for out in model.graph.output:
        io = by_name.get(out.name)
        dims = out.type.tensor_type.shape.dim
        if io is None or len(dims) != len(io.shape):
            continue
        for dim, want in zip(dims, io.shape, strict=True):
            if isinstance(want, str) and dim.dim_param != want:
                dim.Clear()
                dim.dim_param = want
    return model


def build_user_variants(net: UserNetwork, variants: Sequence[str], options=None):
    """Build and check every variant (nothing written); returns (artifacts, parity failures).
    An ONNX export failure raises UserInputError."""
    from export.onnx import export_onnx
    from export.variants import BuildOptions, VariantBuilder

    class _Builder(VariantBuilder):
        @cached_property
        def fp32(self):
            if net.onnx_model is not None:  # --onnx: the user's graph as it is
                return net.onnx_model
            return declare_output_axes(export_onnx(self.module, self.spec), self.spec)

        @cached_property
        def _flops(self) -> int:
            return 0 if net.onnx_model is not None else super()._flops

        def _held_inputs(self):
            if net.eval_data is not None:
                return net.eval_data[0]
            return net.calibration

        def check(self, variant: str, reference: torch.nn.Module, run: Runner) -> ParityReport:
            from export.variants import ELEMENTWISE

            if variant in ELEMENTWISE or net.eval_data is not None:
                return super().check(variant, reference, run)
            if net.calibration is not None:
                return check_closeness(variant, reference, run, self.spec, net.calibration, real_data=True)
            feed = self.spec.random_inputs({**self.spec.parity_sizes[1], self.spec.inputs[0].shape[0]: 256}, seed=99)
            return check_closeness(variant, reference, run, self.spec, feed, real_data=False)

    if net.onnx_model is not None:
        pruning = [v for v in variants if v in PRUNING]
        if pruning:
            raise UserInputError(f"--variants {','.join(pruning)}: pruning needs the torch network (--module); "
                                 "--onnx gives a fixed graph")
    builder = _Builder(net.family, options=options or BuildOptions())
    try:
        builder.fp32  # noqa: B018 - the shared export, so its failure is reported as one
    except Exception as err:
        raise UserInputError(export_onnx_error(err, net.source)) from None
    recurrent = sorted({n.op_type for n in builder.fp32.graph.node} & RECURRENT_OPS)
    if "fp16" in variants and recurrent:
        raise UserInputError(f"--variants fp16: the graph has {', '.join(recurrent)}, and ONNX Runtime's CPU "
                             "provider crashes on a float16 recurrent op; leave fp16 out for this network")
    artifacts, failed = [], []
    for variant in variants:
        try:
            artifacts.append(builder.build(variant))
        except ParityError as err:
            failed.append(err)
        except UserInputError:
            raise
        except Exception as err:
            if variant not in PRUNING:
                raise
            first = (str(err).strip().splitlines() or [""])[0]
            raise UserInputError(f"--variants {variant}: torch-pruning cannot prune this network "
                                 f"({type(err).__name__}: {first}); leave {variant} out") from None
    return artifacts, failed
