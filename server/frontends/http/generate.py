"""Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` and
``.../generate_stream`` (server-sent events), for every model, decoupled or not.

Request: a flat JSON object. Each key other than ``id`` and ``parameters`` names an
input of the model; its value (a scalar, a string, or a nested list) becomes that input
with a batch of one. ``parameters`` are the request parameters (``priority``,
``timeout``, ...). Response: ``{"model_name", "model_version", "id"?, <output>: value}``,
a value being a scalar where the output has one element, a list otherwise; BYTES
become strings. ``generate_stream`` sends one ``data: {...}`` event per response; an
error after the stream started is sent as ``data: {"error": "..."}``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.core import datatypes as dt
from server.core.errors import DeepserveError, InvalidInput
from server.core.types import InferenceRequest, InferenceResponse, TensorSpec
from server.core.validation import check_version
from server.frontends.http.body import read_json_object
from server.frontends.http.codec import tensor_from_json
from server.frontends.http.infer import deadline_from, first_response, until_disconnect
from server.frontends.http.responses import event_stream, json_response, sse_event
from server.service import InferenceService

router = APIRouter()


def generate_request(
    body: Any, inputs: tuple[TensorSpec, ...], batched: bool, model: str, version: str
) -> InferenceRequest:
    """A generate body -> an inference request (every input gets a batch of one)."""
    if not isinstance(body, dict):
        raise InvalidInput("the generate body must be a JSON object of input values")
    index = {spec.name: spec for spec in inputs}
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    request_id = body.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    tensors: dict[str, np.ndarray] = {}
    for name, value in body.items():
        if name in ("id", "parameters"):
            continue
        spec = index.get(name)
        if spec is None:
            raise InvalidInput(f"'{name}' is not an input of model '{model}'; it takes {sorted(index)}")
        dims = spec.shape[1:] if batched else spec.shape
        shape = _shape(name, _value_shape(name, value), dims)
        tensors[name] = tensor_from_json(name, spec.datatype, [1, *shape] if batched else shape, math.prod(shape), value)
    return InferenceRequest(model, tensors, version, request_id, parameters=parameters)


def _value_shape(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return ()
    try:
        return np.shape(value)
    except ValueError:
        raise InvalidInput(f"input '{name}' is a ragged list; give a scalar or an evenly nested list") from None


def _shape(name: str, given: tuple[int, ...], dims: tuple[int, ...]) -> list[int]:
    """The value's own shape where it fits the input, else the input's dims with its one
    variable axis taking the rest (a scalar for dims [1], a flat list for [-1], ...)."""
    if len(given) == len(dims) and all(d in (-1, g) for g, d in zip(given, dims, strict=True)):
        return list(given)
    count, fixed = math.prod(given), math.prod(d for d in dims if d != -1)
    free = [i for i, d in enumerate(dims) if d == -1]
    if not free and count == fixed:
        return list(dims)
    if len(free) == 1 and fixed and count % fixed == 0:
        return [count // fixed if d == -1 else d for d in dims]
    raise InvalidInput(f"input '{name}' has shape {list(given)}, which does not fit the model's {list(dims)}")


def generate_body(response: InferenceResponse, batched: bool) -> dict:
    body: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        body["id"] = response.id
    for tensor in response.outputs:
        array = tensor.data[0] if batched and tensor.data.ndim and tensor.data.shape[0] == 1 else tensor.data
        try:
            values = dt.bytes_to_json(array) if tensor.datatype == "BYTES" else np.asarray(array).reshape(-1).tolist()
        except InvalidInput:
            raise InvalidInput(f"output '{tensor.name}' holds bytes that are not UTF-8, which JSON cannot carry; "
                               "call .../infer and request it as binary data") from None
        body[tensor.name] = values[0] if array.size == 1 else np.asarray(values, dtype=object).reshape(array.shape).tolist()
    return body


def _service(request: Request) -> InferenceService:
    return request.app.state.service


async def _decode(request: Request, model: str, version: str) -> tuple[InferenceRequest, bool]:
    service = _service(request)
    meta = service.model_metadata(model, check_version(version))
    data = await read_json_object(request.receive, request.headers, request.app.state.settings.max_request_bytes)
    infer = generate_request(data, meta.inputs, meta.batched, model, version)
    infer.deadline_s = deadline_from(request.headers)
    return infer, meta.batched


async def generate(request: Request, model: str, version: str = "") -> Response:
    """One JSON answer; a decoupled model must send exactly one non-empty response."""
    with _service(request).accounting(model, version):
        infer, batched = await _decode(request, model, version)
        bodies = await until_disconnect(request.receive, _collect(_service(request).infer_stream(infer), batched))
    if len(bodies) != 1:
        error = InvalidInput(f"model '{model}' sent {len(bodies)} responses; use generate_stream to receive each of them")
        error.counted = True  # the model counted the request (a success): it is not counted twice
        raise error
    return json_response(bodies[0])


async def _collect(responses: AsyncIterator[InferenceResponse], batched: bool) -> list[dict]:
    return [generate_body(r, batched) async for r in responses if r.outputs]


async def generate_stream(request: Request, model: str, version: str = "") -> Response:
    """Server-sent events. Errors found before the first response keep their HTTP status;
    a client that disconnects closes the stream, which stops the model's producer."""
    with _service(request).accounting(model, version):  # failures after the first response: in band
        infer, batched = await _decode(request, model, version)
        responses = _service(request).infer_stream(infer)
        first = await first_response(request.receive, responses)

    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield sse_event(generate_body(first, batched))
                async for response in responses:
                    yield sse_event(generate_body(response, batched))
        except DeepserveError as exc:
            yield sse_event({"error": exc.message})
        finally:
            await responses.aclose()

    return event_stream(events())


for path in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
    router.add_api_route(f"{path}/generate", generate, methods=["POST"])
    router.add_api_route(f"{path}/generate_stream", generate_stream, methods=["POST"])
