"""The in-process interface every frontend calls (HTTP, gRPC, task routes, tests).

Frontends decode wire formats into ``InferenceRequest`` and call :meth:`infer`; they
never touch the repository's internals, the batcher or a runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from server.core.datatypes import datatype_of
from server.core.errors import DeepserveError, InvalidInput
from server.core.types import InferenceRequest, InferenceResponse, OutputTensor, TensorSpec
from server.core.validation import check_request, check_utf8, classify
from server.repository.config import ModelConfig, config_from_json
from server.repository.manager import ModelRepository
from server.repository.model import LoadedModel

SERVER_NAME = "deepserve"
EXTENSIONS = (
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class InferenceService:
    def __init__(self, repository: ModelRepository, version: str, strict_readiness: bool = True) -> None:
        self.repository = repository
        self.version = version
        self.strict_readiness = strict_readiness
        self._live = True
        self.shutting_down = False

    # -- health and metadata ---------------------------------------------------------

    def live(self) -> bool:
        return self._live

    def ready(self) -> bool:
        return not self.shutting_down and (not self.strict_readiness or self.repository.ready())

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
        except DeepserveError:
            return False
        return not self.shutting_down

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": self.version, "extensions": list(EXTENSIONS)}

    def model(self, name: str, version: str = "") -> LoadedModel:
        return self.repository.get(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.repository.get(name, version)
        versions = (model.version,) if version else tuple(
            m.version for m in self.repository.models() if m.name == name
        )
        return ModelMetadata(name, versions, model.config.platform, model.inputs, model.outputs)

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.repository.get(name, version).config

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        if name:
            models = [self.repository.get(name, version)] if version else [
                m for m in self.repository.models() if m.name == name
            ]
            if not models:
                self.repository.get(name)  # raises the right error
        else:
            models = self.repository.models()
        return [m.telemetry.snapshot() for m in models]

    # -- repository ------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return self.repository.index(ready_only)

    async def load_model(self, name: str, config_json: str | None = None, files: dict[str, bytes] | None = None) -> None:
        config = config_from_json(config_json) if config_json else None
        await self.repository.load(name, config, files)

    async def unload_model(self, name: str) -> None:
        await self.repository.unload(name)

    # -- inference -------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate, queue, run, and shape the response (requested outputs, classification)."""
        model = self.repository.get(request.model_name, request.model_version)
        telemetry = model.telemetry
        started = time.perf_counter()
        telemetry.request_started()
        failure: str | None = "CANCELED"
        try:
            rows = check_request(request, model.input_index, model.outputs, model.max_batch_size)
            check_utf8(request, model.text_inputs)
            priority, timeout_us = _schedule_parameters(request.parameters)
            outputs = await model.batcher.submit(request.inputs, rows, priority, timeout_us)
            response = self._response(request, model, outputs)
            failure = None
            return response
        except DeepserveError as exc:
            failure = exc.reason
            raise
        except Exception:
            failure = "OTHER"
            raise
        finally:
            telemetry.request_finished(time.perf_counter() - started, failure)

    def _response(self, request: InferenceRequest, model: LoadedModel, outputs: dict) -> InferenceResponse:
        specs = {spec.name: spec for spec in model.outputs}
        tensors: list[OutputTensor] = []
        for requested in request.outputs:
            array = outputs[requested.name]
            if requested.class_count:
                array = classify(array, requested.class_count, model.labels.get(requested.name), model.max_batch_size > 0)
                tensors.append(OutputTensor(requested.name, "BYTES", array, requested.binary))
            else:
                tensors.append(OutputTensor(requested.name, _datatype(specs[requested.name], array), array, requested.binary))
        if not request.outputs:
            for spec in model.outputs:
                array = outputs[spec.name]
                tensors.append(OutputTensor(spec.name, _datatype(spec, array), array))
        return InferenceResponse(model.name, model.version, tensors, request.id)


def _datatype(spec: TensorSpec, array) -> str:
    # BF16 travels as uint16 words; otherwise trust the array the runtime returned.
    return spec.datatype if spec.datatype in ("BF16", "BYTES") else datatype_of(array)


def _schedule_parameters(parameters: dict) -> tuple[int | None, int | None]:
    """The reserved request parameters ``priority`` and ``timeout`` (µs)."""
    priority, timeout = parameters.get("priority"), parameters.get("timeout")
    for key, value in (("priority", priority), ("timeout", timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidInput(f"request parameter '{key}' must be a non-negative integer")
    return priority, timeout
