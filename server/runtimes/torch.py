"""PyTorch: serves ``model.pt2`` (a torch.export program) and ``model.pt`` (TorchScript).

The file's suffix picks the loader: ``.pt2`` -> ``torch.export.load``, anything else ->
``torch.jit.load``. torch is imported inside the functions, so importing this module on
a host without torch (or merely listing runtimes) never imports it.

Names and order. The model is always called positionally; names only say which array of
the batch goes where, and what each returned tensor is called.

- A ``.pt2`` program declares its I/O, and ``load`` returns it as the Signature: inputs
  are the program's user inputs (the forward's argument names), with dtypes and shapes
  from the graph's fake tensors (-1 for every symbolic dimension); outputs are a returned
  dict's keys, else ``output``, ``output_1``, ... in the order the model returns them.
- A TorchScript file declares nothing usable (no dtypes, no shapes, no output names):
  ``load`` returns an empty Signature, so the model needs a config that declares its
  inputs and outputs; ``load`` binds to them (``bind(input_names, output_names)``, from
  ``RuntimeOptions.inputs`` / ``outputs``); unbound, ``execute`` raises ModelError. The config lists inputs in the
  forward's argument order and outputs in the order the model returns them (Triton's
  ``INPUT__0`` / ``OUTPUT__0`` convention), except that a returned dict is read by key.
- ``bind`` is optional for a ``.pt2``. Given the signature's own names in any order, it
  keeps them; given entirely different names, it renames positionally, and ``load``
  then reports the signature under the config's names.

Outputs: a tensor is one output, a tuple or list several (nested ones flattened in
order), a dict one per key. BF16 travels as raw uint16 words, as everywhere in the server.

Devices. ``options.device`` is ``cpu`` or ``cuda:<index>``. A program is moved with
``torch.export.passes.move_to_device_pass`` before ``.module()`` is taken: besides the
weights it rewrites the devices baked into the graph (``torch.zeros(..., device=...)``,
``aten.to.device``), which ``Module.to`` would leave behind. TorchScript is loaded with
``map_location``; a device baked into a traced graph stays as it was traced.

Threads. ``intra_op_threads`` > 0 calls ``torch.set_num_threads``, which is
process-wide: torch has one intra-op pool, so the last instance loaded sets it for every
torch model in the process.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from server.core.datatypes import datatype_of, numpy_dtype
from server.core.errors import InvalidInput, ModelError, Unavailable
from server.core.types import TensorSpec
from server.runtimes.base import RuntimeOptions, Signature

log = logging.getLogger(__name__)

_NOT_BOUND = ("the TorchScript model was not bound to its config's names: "
              "its config must declare the inputs and outputs (TorchScript files carry no signature)")


class TorchRuntime:
    def __init__(self) -> None:
        self._module: Any = None  # a callable torch module, on self._device
        self._device: Any = None  # torch.device
        self._in_spec: Any = None  # a program's input TreeSpec; None for TorchScript
        self._declared = Signature((), ())  # what load() returned
        self._arity: tuple[int, int] = (0, 0)  # TorchScript forward: (required, all) inputs
        self._input_names: list[str] | None = None  # fed positionally, in this order
        self._output_names: list[str] | None = None

    def load(self, model_path: Path, options: RuntimeOptions) -> Signature:
        import torch

        self._device = _device(options.device)
        if options.intra_op_threads > 0:
            torch.set_num_threads(options.intra_op_threads)  # process-wide: see the module docstring
        if model_path.suffix == ".pt2":
            what = "a torch.export program (saved with torch.export.save)"
            _read(model_path, what, lambda: check_program_archive(model_path))
            program = _read(model_path, what, lambda: torch.export.load(str(model_path)))
            self._declared = program_signature(program)
            self._in_spec = program.call_spec.in_spec
            self._module = _on_device(lambda: place_program(program, str(self._device)), options.device)
            self._input_names = [s.name for s in self._declared.inputs]
            self._output_names = [s.name for s in self._declared.outputs]
        else:
            self._module = _read(model_path, "a TorchScript module (saved with torch.jit.save)",
                                 lambda: _jit_load(model_path, self._device)).eval()
            self._arity = _forward_arity(self._module)
        log.info("loaded %s on %s", model_path, self._device)
        if options.inputs and options.outputs:  # the config names the tensors: bind to them now
            self.bind([t.name for t in options.inputs], [t.name for t in options.outputs])
            self._declared = Signature(
                tuple(replace(t, name=n) for t, n in zip(self._declared.inputs, self._input_names, strict=False)),
                tuple(replace(t, name=n) for t, n in zip(self._declared.outputs, self._output_names, strict=False)),
            )
        return self._declared

    def bind(self, input_names: list[str], output_names: list[str]) -> None:
        """Name the model's positional inputs and outputs after the config's (see the module docstring).

        Raises InvalidInput when the config's names cannot be matched with the model's.
        """
        if self._module is None:
            raise ModelError("bind() needs a loaded model: call load() first")
        if self._in_spec is None:
            required, total = self._arity
            if not required <= len(input_names) <= total:
                takes = str(total) if required == total else f"{required} to {total}"
                raise InvalidInput(f"the config names {len(input_names)} input(s), but the TorchScript "
                                   f"model's forward takes {takes}")
        self._input_names = _match("input", list(input_names), [s.name for s in self._declared.inputs])
        self._output_names = _match("output", list(output_names), [s.name for s in self._declared.outputs])

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self._module is None:
            raise ModelError("the model is not loaded")
        if self._input_names is None or self._output_names is None:
            raise ModelError(_NOT_BOUND)
        specs = self._declared.inputs or (None,) * len(self._input_names)
        tensors = [_to_tensor(name, _pick(inputs, name), spec, self._device)
                   for name, spec in zip(self._input_names, specs, strict=True)]
        try:
            with torch.inference_mode():
                if self._in_spec is not None:  # a program takes its original (args, kwargs) structure
                    args, kwargs = self._in_spec.unflatten(tensors)
                    result = self._module(*args, **kwargs)
                else:
                    result = self._module(*tensors)
            return _name_outputs(result, self._output_names)
        except ModelError:
            raise
        except Exception as exc:  # torch raises RuntimeError, AssertionError (shape guards), TypeError...
            raise ModelError(f"PyTorch failed: {exc}") from None

    def unload(self) -> None:
        cuda = self._device is not None and self._device.type == "cuda"
        self._module = None
        if cuda:
            import torch

            torch.cuda.empty_cache()  # hand this instance's cached blocks back to other processes


def program_signature(program: Any) -> Signature:
    """The I/O a torch.export program declares (user inputs and outputs only, not weights)."""
    from torch.export.graph_signature import InputKind, OutputKind, TensorArgument
    from torch.fx import Node

    graph_signature = program.graph_signature
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = []
    for spec in graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT:
            continue
        if not isinstance(spec.arg, TensorArgument):
            raise InvalidInput(f"the program takes a non-tensor input ({spec.arg}); deepserve feeds tensors only")
        inputs.append(_tensor_spec(spec.arg.name, placeholders[spec.arg.name].meta["val"]))
    output_node = next(n for n in reversed(program.graph.nodes) if n.op == "output")
    values = [v for s, v in zip(graph_signature.output_specs, output_node.args[0], strict=True)
              if s.kind == OutputKind.USER_OUTPUT]
    names = _output_names(program.call_spec.out_spec, len(values))
    outputs = []
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, Node):  # a constant baked into the output, not a graph value
            raise InvalidInput(f"the program returns a non-tensor output '{name}' ({value!r})")
        outputs.append(_tensor_spec(name, value.meta["val"]))
    return Signature(tuple(inputs), tuple(outputs))


def place_program(program: Any, device: str) -> Any:
    """The program's callable module with weights, buffers and graph-baked devices on ``device``.

    ``move_to_device_pass`` mutates ``program`` in place (and returns it).
    """
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, device).module()


def _device(name: str) -> Any:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInput(f"'{name}' is not a device; expected 'cpu' or 'cuda:<index>'") from None
    if device.type not in ("cpu", "cuda"):
        raise InvalidInput(f"the PyTorch runtime runs on 'cpu' or 'cuda:<index>', not '{name}'")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= available:
        raise Unavailable(f"this instance is on '{name}', but torch {torch.__version__} sees {available} CUDA "
                          "GPU(s) here: install a CUDA build of torch, or give the instance_group KIND_CPU.")
    return device


def _read(path: Path, what: str, load: Any) -> Any:
    """Run ``load``; a file torch cannot read becomes InvalidInput naming the file and what it should be."""
    if not zipfile.is_zipfile(path):  # both formats are zip archives; say so before torch's miniz errors
        raise InvalidInput(f"{path.name} is not {what}: it is not a zip archive (truncated, or not a torch file)")
    try:
        return load()
    except Exception as exc:  # torch raises RuntimeError, BadZipFile, KeyError... for broken archives
        raise InvalidInput(f"PyTorch cannot load {path.name} as {what}: {exc}") from None


def _on_device(place: Any, device: str) -> Any:
    try:
        return place()
    except Exception as exc:  # e.g. out of device memory
        raise Unavailable(f"cannot place the model on '{device}': {exc}") from None


# No pickle. A model file may come from a client (a load request's files), so loading it
# must never run Python's pickle, which can call any function:
# - TorchScript (``torch.jit.load``): the archive's ``data.pkl``/``constants.pkl`` are read by
#   TorchScript's own C++ unpickler, which rebuilds only tensors, primitive values and
#   TorchScript classes of the archive's compilation unit; it imports no Python module and
#   calls no Python callable, so it is pickle-free in that sense. (The model's TorchScript
#   code itself runs when the model does, like any model file's graph.)
# - torch.export (``torch.export.load``) is not: it unpickles weights saved with
#   ``use_pickle`` (``torch.load(weights_only=False)``), opaque constants (``pickle.loads``),
#   retries the sample inputs with ``weights_only=False`` when ``weights_only=True`` fails,
#   and loads an AOTInductor package's native library. ``check_program_archive`` refuses
#   every such archive before ``torch.export.load`` sees it.
_PICKLE_FREE_PREFIXES = ("weight_", "tensor_")  # raw tensor payloads (WEIGHT_/TENSOR_CONSTANT_FILENAME_PREFIX)


def check_program_archive(path: Path) -> None:
    """Refuse a ``.pt2`` whose loading would unpickle or load native code (see above)."""
    import io
    import json

    import torch

    with zipfile.ZipFile(path) as archive:
        members = {name.partition("/")[2]: name for name in archive.namelist()}  # without the root folder
        if "archive_format" not in members or not any(m.startswith("models/") for m in members):
            raise ValueError("not a torch.export.save archive of the current format (older formats are unpickled)")
        for member, full in members.items():
            if member.startswith("data/aotinductor/"):
                raise ValueError("it is an AOTInductor package (native code); serve a torch.export program")
            config = member.startswith(("data/weights/", "data/constants/")) and member.endswith("_config.json")
            if config:
                for key, payload in json.loads(archive.read(full)).get("config", {}).items():
                    if payload.get("use_pickle") or not str(payload.get("path_name", "")).startswith(_PICKLE_FREE_PREFIXES):
                        raise ValueError(f"'{key}' is stored pickled (a tensor subclass or a custom object); "
                                         "deepserve never unpickles model files")
            elif member.endswith(".pt") and member.startswith(("data/sample_inputs/", "data/weights/", "data/constants/")):
                try:  # torch would retry these with weights_only=False
                    torch.load(io.BytesIO(archive.read(full)), weights_only=True)
                except Exception:
                    raise ValueError(f"{member} holds objects other than tensors; deepserve never unpickles model files") from None


def _jit_load(path: Path, device: Any) -> Any:
    """TorchScript: pickle-free (see above)."""
    import torch

    with warnings.catch_warnings():
        # torch.jit.load warns that TorchScript is deprecated. Serving a Triton .pt is the
        # point here, and a warnings-as-errors run must not fail on it. Filtered by message,
        # so nothing else is hidden.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location=device)


def _forward_arity(module: Any) -> tuple[int, int]:
    args = module.forward.schema.arguments[1:]  # [0] is self
    return sum(not a.has_default_value() for a in args), len(args)


def _match(kind: str, bound: list[str], declared: list[str]) -> list[str]:
    if not declared or (len(bound) == len(declared) and not set(bound) & set(declared)):
        return bound  # TorchScript, or a positional rename
    if sorted(bound) == sorted(declared):
        return declared  # the model's own names: its order, whatever order the config lists them in
    raise InvalidInput(f"the config's {kind}s {bound} do not match the model's {declared}: "
                       f"use the model's names, or {len(declared)} new names in the model's order")


def _output_names(out_spec: Any, count: int) -> list[str]:
    if out_spec.type is dict and all(c.is_leaf() for c in out_spec.children()):
        return [str(k) for k in out_spec.context]
    return [f"output_{i}" if i else "output" for i in range(count)]


def _tensor_spec(name: str, value: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)  # SymInt: a dynamic dim
    return TensorSpec(name, _datatype(value.dtype, f"tensor '{name}'"), shape)


def _datatype(dtype: Any, what: str) -> str:
    import torch

    if dtype == torch.bfloat16:  # numpy has no bfloat16
        return "BF16"
    try:
        return datatype_of(torch.empty(0, dtype=dtype).numpy())
    except (TypeError, InvalidInput):
        raise InvalidInput(f"{what} is {dtype}, which deepserve does not serve") from None


def _pick(inputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return inputs[name]
    except KeyError:
        raise InvalidInput(f"input '{name}' is missing; got {sorted(inputs)}") from None


def _to_tensor(name: str, array: np.ndarray, spec: TensorSpec | None, device: Any) -> Any:
    import torch

    if datatype_of(array) == "BYTES":  # also refuses dtypes the protocol has no name for
        raise InvalidInput(f"input '{name}' is BYTES; PyTorch models take numeric tensors only")
    if spec is not None:
        if array.dtype != numpy_dtype(spec.datatype):
            raise InvalidInput(f"input '{name}' is {datatype_of(array)}; the model takes {spec.datatype}")
        if len(array.shape) != len(spec.shape) or any(w not in (-1, g) for g, w in zip(array.shape, spec.shape, strict=True)):
            raise InvalidInput(f"input '{name}' has shape {list(array.shape)}; the model takes {list(spec.shape)}")
    # torch.from_numpy shares memory and warns on a read-only array (request buffers are);
    # copy only then, or when the layout is one torch cannot wrap.
    tensor = torch.from_numpy(np.require(array, requirements=["C", "A", "W"]))
    if spec is not None and spec.datatype == "BF16":
        tensor = tensor.view(torch.bfloat16)  # BF16 arrives as raw uint16 words
    return tensor.to(device)


def _name_outputs(result: Any, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(result, dict) and set(names) <= result.keys():
        values = [result[n] for n in names]
    else:
        values = _leaves(result)
    if len(values) != len(names):
        raise ModelError(f"the model returned {len(values)} output(s); the config names {len(names)}: {names}")
    return {name: _to_numpy(name, value) for name, value in zip(names, values, strict=True)}


def _leaves(value: Any) -> list[Any]:
    """Flatten tuples, lists and dicts in order (as torch's pytree does)."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _to_numpy(name: str, value: Any) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise ModelError(f"output '{name}' is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.view(torch.uint16)  # BF16 travels as raw uint16 words
    return value.numpy()


def create() -> TorchRuntime:
    return TorchRuntime()
