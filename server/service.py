"""The in-process interface every frontend calls (HTTP, gRPC, task routes, tests).

Frontends decode wire formats into ``InferenceRequest`` and call :meth:`infer` (one
response) or :meth:`infer_stream` (every response of a decoupled model; a stream of one
otherwise); they never touch the repository's internals, a scheduler or a runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass

from server.core.datatypes import datatype_of
from server.core.errors import DeepserveError, InvalidInput, QueueFull, Unavailable
from server.core.types import InferenceRequest, InferenceResponse, OutputTensor, TensorSpec
from server.core.validation import classify
from server.pipelines.text import TextModel
from server.repository.config import ModelConfig, config_from_json
from server.repository.loaded import LoadedModel
from server.repository.manager import ModelRepository

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


# Sent as Retry-After with the 503s of a draining server: the client should retry at once,
# and the load balancer send it to another replica.
SHUTDOWN_RETRY_AFTER_S = 1.0


class _Call:
    """One inference inside the service, known to the drain: the task awaiting the model
    (None while a stream waits for its consumer) and whether the drain gave up on it."""

    __slots__ = ("task", "aborted")

    def __init__(self, task: asyncio.Task | None) -> None:
        self.task = task
        self.aborted = False


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decoupled: bool = False  # answers 0..n responses per request: stream it
    batched: bool = False  # the leading -1 of every shape is the batch dimension
    task: str = ""  # the config's `task` parameter: "classify", "detect", ... ("" = none)


class Admission:
    """``max_inflight`` places, and failures counted exactly once: what
    :meth:`InferenceService.accounting` does, shared with the frontend processes'
    service (``count`` records a failure; ``scope`` says whose limit it is)."""

    def __init__(self, max_inflight: int, count: Callable[[str, str, str], None], scope: str = "") -> None:
        self.max_inflight, self._count, self._scope = max_inflight, count, scope
        self._admitted = 0

    @contextlib.contextmanager
    def account(self, model_name: str, version: str = "", admit: bool = True) -> Iterator[None]:
        if admit:
            if self.max_inflight and self._admitted >= self.max_inflight:
                error = QueueFull(f"the server is at its limit of {self.max_inflight} requests in flight{self._scope}; "
                                  "retry later", retry_after_s=1.0)
                error.counted = True
                self._count(model_name, version, error.reason)
                raise error
            self._admitted += 1
        try:
            yield
        except DeepserveError as exc:
            if not exc.counted:
                exc.counted = True
                self._count(model_name, version, exc.reason)
            raise
        finally:
            if admit:
                self._admitted -= 1


class InferenceService:
    def __init__(self, repository: ModelRepository, version: str, strict_readiness: bool = True,
                 max_inflight: int = 0) -> None:
        self.repository = repository
        self.version = version
        self.strict_readiness = strict_readiness
        self.max_inflight = max_inflight  # inference requests admitted at once, server-wide (0 = no limit)
        self._admission = Admission(max_inflight, repository.count_refused)
        self._live = True
        # Set by the shutdown (SIGTERM): not ready, and new inferences are answered 503 while
        # the ones in ``_calls`` finish (``server/serve.py`` drains; liveness is unchanged).
        self.shutting_down = False
        self._calls: set[_Call] = set()
        self._idle: asyncio.Event | None = None

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

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        self.repository.start_on_demand_load(name)  # a load-on-demand model: 503 + Retry-After until loaded
        model = self.repository.get(name, version)
        versions = (model.version,) if version else self.repository.versions(name)
        return ModelMetadata(
            name, versions, model.platform, model.inputs, model.outputs, model.decoupled, model.max_batch_size > 0,
            model.task,
        )

    def text_model(self, name: str, version: str = "") -> TextModel:
        """A generation model's tokenizer, chat template and context length (the OpenAI routes
        tokenize before they call it)."""
        self.repository.start_on_demand_load(name)
        model = self.repository.get(name, version)
        if model.text is None:
            raise InvalidInput(f"model '{name}' is not a text-generation model (task '{model.task or 'none'}')")
        return model.text

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

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        await self.repository.unload(name, unload_dependents)

    # -- inference -------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate, queue, run, and shape the one response (requested outputs, classification)."""
        self._check_accepting()
        model = await self.repository.acquire(request.model_name, request.model_version)  # held until answered
        if model.decoupled:
            self.repository.release(model)
            raise InvalidInput(
                f"model '{model.name}' is decoupled (it may send several responses per request): use gRPC "
                "ModelStreamInfer or HTTP POST .../generate_stream instead of infer"
            )
        call = _Call(asyncio.current_task())
        self._calls.add(call)
        try:
            outputs = await model.infer(request)
        except asyncio.CancelledError:
            if not call.aborted:
                raise
            raise _given_up(cancelled=True) from None
        finally:
            self._leave(call)
            self.repository.release(model)
        return self._response(request, model, outputs)

    async def infer_stream(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Every response of the request as it is produced. Closing the iterator early
        stops the model's producer and frees its slot."""
        self._check_accepting()
        model = await self.repository.acquire(request.model_name, request.model_version)  # held until answered
        call = _Call(None)  # the task that drives a stream may change between responses
        self._calls.add(call)
        try:
            async with aclosing(model.stream(request)) as responses:
                while True:
                    if call.aborted:
                        raise _given_up(cancelled=False)
                    call.task = asyncio.current_task()
                    try:
                        outputs = await anext(responses)
                    except StopAsyncIteration:
                        break
                    except asyncio.CancelledError:
                        if not call.aborted:
                            raise
                        raise _given_up(cancelled=True) from None
                    finally:
                        call.task = None
                    yield self._response(request, model, outputs)
        finally:
            self._leave(call)
            self.repository.release(model)

    def accounting(self, model_name: str, version: str = "", admit: bool = True):
        """Count exactly once every inference request that fails: wrap a frontend's whole
        handling of one request (decoding included). A failure the model's telemetry
        already counted passes through; any other (the body did not decode, no such model,
        the server is draining) is counted here, with the model's label when the
        repository knows the name and without one when it does not.

        With ``admit`` the request also takes one of the server-wide ``max_inflight``
        places until it is answered (a stream: until its first response); with none left it
        is refused at once, before its body is read where the route allows (503, OVERLOAD)."""
        return self._admission.account(model_name, version, admit)

    # -- the drain (server/serve.py) ---------------------------------------------------

    def _check_accepting(self) -> None:
        if self.shutting_down:
            raise Unavailable("the server is shutting down; retry on another replica", SHUTDOWN_RETRY_AFTER_S)

    def _leave(self, call: _Call) -> None:
        self._calls.discard(call)
        if not self._calls and self._idle is not None:
            self._idle.set()

    @property
    def inflight(self) -> int:
        """Inferences (and streams) accepted and not yet answered in full."""
        return len(self._calls)

    async def wait_idle(self) -> None:
        """Return once no inference is in flight (once ``shutting_down``, none starts)."""
        while self._calls:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def abort_inflight(self) -> int:
        """Answer every inference still in flight with a 503 (UNAVAILABLE): the drain timeout
        passed. A stream between two responses ends with that error when next read."""
        for call in self._calls:
            call.aborted = True
            if call.task is not None:
                call.task.cancel()
        return len(self._calls)

    def _response(self, request: InferenceRequest, model: LoadedModel, outputs: dict) -> InferenceResponse:
        specs = {spec.name: spec for spec in model.outputs}
        tensors: list[OutputTensor] = []
        for requested in request.outputs:
            array = outputs.get(requested.name)
            if array is None:  # a decoupled model may send a response without it
                continue
            if requested.class_count:
                array = classify(array, requested.class_count, model.labels.get(requested.name), model.max_batch_size > 0)
                tensors.append(OutputTensor(requested.name, "BYTES", array, requested.binary))
            else:
                tensors.append(OutputTensor(requested.name, _datatype(specs[requested.name], array), array, requested.binary))
        if not request.outputs:
            for spec in model.outputs:
                array = outputs.get(spec.name)
                if array is None:
                    continue
                tensors.append(OutputTensor(spec.name, _datatype(spec, array), array))
        return InferenceResponse(model.name, model.version, tensors, request.id)


def _given_up(cancelled: bool) -> Unavailable:
    """The error of an inference the drain gave up on; when it did so by cancelling this
    task, the cancellation is withdrawn: the task goes on to send this answer."""
    task = asyncio.current_task()
    if cancelled and task is not None and task.cancelling():
        task.uncancel()
    error = Unavailable(
        "the server is shutting down and stopped waiting for this request (drain timeout or a second signal); retry it",
        SHUTDOWN_RETRY_AFTER_S,
    )
    error.counted = True  # the model's telemetry counted it, as CANCELED, when its task was cancelled
    return error


def _datatype(spec: TensorSpec, array) -> str:
    # BF16 travels as uint16 words; otherwise trust the array the runtime returned.
    return spec.datatype if spec.datatype in ("BF16", "BYTES") else datatype_of(array)
