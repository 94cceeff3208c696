"""Python models (``backend: "python"``): pre- and post-processing, and users' own code.

A model is a class with small hooks, in ``NAME/<version>/model.py``::

    class Model:
        def setup(self, context):          # optional: read context.parameters, load files
            ...
        def execute(self, inputs):         # {name: batch array} -> {name: batch array}
            return {"OUT": inputs["IN"] * 2}
        def finalize(self):                # optional: free what setup took
            ...

``execute`` gets the whole batch the dynamic batcher formed (rows of every request,
concatenated) and returns every output with the same number of rows. BYTES tensors are
numpy ``object`` arrays of ``bytes``. A decoupled model's ``execute`` gets one request
and yields each response as a dict (zero or more). Raising ``InvalidInput`` (from
``server.core.errors``) answers 400 to that request; any other exception answers 500.

Which class: the config's ``parameters { key: "python_class" ... }``, else the only class
defined in ``model.py`` that has an ``execute`` method. deepserve's own steps are named
with ``parameters { key: "processor" value: { string_value: "image.decode_resize" } }``
instead of a file (see :mod:`server.pipelines`). Each instance runs on its own worker
thread, never on the event loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.core.errors import DeepserveError, InvalidInput, ModelError
from server.core.types import TensorSpec
from server.runtimes.base import RuntimeOptions, Signature

log = logging.getLogger(__name__)
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What ``setup`` is told about the model it serves."""

    name: str
    version: str
    directory: Path  # the version folder (files the model ships live here)
    parameters: dict[str, str] = field(default_factory=dict)  # the config's `parameters`
    device: str = "cpu"
    inputs: tuple[TensorSpec, ...] = ()  # a leading -1 when the model batches
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = 0


def last_line(exc: BaseException) -> str:
    """The traceback's last line (``ValueError: bad``): what a broken model.py reports."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


class PythonRuntime:
    def __init__(self) -> None:
        self._model: Any = None
        self._module_name = ""  # model.py's entry in sys.modules, dropped on unload

    def load(self, model_path: Path, options: RuntimeOptions) -> Signature:
        processor = options.parameter("processor")
        try:
            if processor:
                cls = _processor_class(processor)
            else:
                self._module_name = f"deepserve_model_{options.model_name}_{options.version}_{id(self)}"
                cls = _model_class(model_path, self._module_name, options.parameter("python_class"))
            self._model = cls()
            setup = getattr(self._model, "setup", None)  # an optional hook
            if setup is not None:
                setup(ModelContext(
                    options.model_name, options.version, model_path.parent, dict(options.parameters),
                    options.device, options.inputs, options.outputs, options.max_batch_size,
                ))
        except Exception as exc:
            sys.modules.pop(self._module_name, None)
            if isinstance(exc, DeepserveError):
                raise
            where = f"processor '{processor}'" if processor else model_path.name
            raise InvalidInput(f"{where} failed to load: {last_line(exc)}") from None
        return Signature((), ())  # the config declares the tensors

    def execute(self, inputs: Outputs) -> Outputs:
        outputs = self._call(inputs)
        if not isinstance(outputs, dict):
            raise ModelError(f"execute() returned {type(outputs).__name__}; it must return a dict of arrays")
        return {name: np.asarray(value) for name, value in outputs.items()}

    def execute_stream(self, inputs: Outputs) -> Iterable[Outputs]:
        responses = self._call(inputs)
        try:
            for outputs in responses:
                if not isinstance(outputs, dict):
                    raise ModelError(f"a decoupled execute() yielded {type(outputs).__name__}; yield dicts of arrays")
                yield {name: np.asarray(value) for name, value in outputs.items()}
        except DeepserveError:
            raise
        except Exception as exc:  # raised inside the model's generator
            raise ModelError(f"execute() failed: {last_line(exc)}") from None
        finally:  # the caller left, or it ended: the model's generator cleans up now, not at GC
            getattr(responses, "close", lambda: None)()

    def unload(self) -> None:
        finalize = getattr(self._model, "finalize", None)
        self._model = None
        sys.modules.pop(self._module_name, None)
        if finalize is not None:
            try:
                finalize()
            except Exception as exc:  # a failing finalize must not stop the unload
                log.warning("finalize() failed: %s", last_line(exc))

    def _call(self, inputs: Outputs):
        if self._model is None:
            raise ModelError("the model is not loaded")
        try:
            return self._model.execute(inputs)
        except DeepserveError:
            raise
        except Exception as exc:
            raise ModelError(f"execute() failed: {last_line(exc)}") from None


def _model_class(path: Path, module_name: str, wanted: str) -> type:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"{path.name} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    if wanted:
        cls = getattr(module, wanted, None)
        if not inspect.isclass(cls):
            raise InvalidInput(f"model.py has no class '{wanted}' (parameter python_class)")
        return cls
    candidates = [
        c for c in vars(module).values()
        if inspect.isclass(c) and c.__module__ == module_name and callable(getattr(c, "execute", None))
    ]
    if len(candidates) != 1:
        found = [c.__name__ for c in candidates]
        raise InvalidInput(
            f"model.py must define exactly one class with an execute() method (found {found}); "
            "or name one with parameters { key: \"python_class\" value: { string_value: \"...\" } }"
        )
    return candidates[0]


def _processor_class(name: str) -> type:
    from server.pipelines import PROCESSORS  # deepserve's own steps, imported only when named

    target = PROCESSORS.get(name)
    if target is None:
        raise InvalidInput(f"unknown processor '{name}'; deepserve has {sorted(PROCESSORS)}")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def create() -> PythonRuntime:
    return PythonRuntime()
