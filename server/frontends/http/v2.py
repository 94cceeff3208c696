"""Open Inference Protocol v2 routes: health, metadata, config, infer, statistics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.core.errors import InvalidInput, Unavailable
from server.frontends.http import codec
from server.frontends.http.body import compress, read_body
from server.frontends.http.responses import json_response
from server.repository.config import config_to_json
from server.service import InferenceService

router = APIRouter()
T = TypeVar("T")


def _service(request: Request) -> InferenceService:
    return request.app.state.service


def _version(version: str) -> str:
    if version and not version.isdigit():
        raise InvalidInput(f"model version must be a number, got '{version}'")
    return version


# -- health -------------------------------------------------------------------------


@router.get("/v2/health/live")
async def live(request: Request) -> Response:
    ok = _service(request).live()
    return json_response({"live": ok}, status_code=200 if ok else 400)


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    ok = _service(request).ready()
    return json_response({"ready": ok}, status_code=200 if ok else 400)


@router.get("/v2")
async def server_metadata(request: Request) -> Response:
    return json_response(_service(request).server_metadata())


# -- statistics (before /v2/models/{model} so that "stats" is not taken for a name) --


async def statistics(request: Request, model: str = "", version: str = "") -> Response:
    stats = _service(request).statistics(model, _version(version))
    return json_response({"model_stats": stats})


router.add_api_route("/v2/models/stats", statistics, methods=["GET"])
router.add_api_route("/v2/models/{model}/stats", statistics, methods=["GET"])
router.add_api_route("/v2/models/{model}/versions/{version}/stats", statistics, methods=["GET"])


# -- per model ---------------------------------------------------------------------


async def model_ready(request: Request, model: str, version: str = "") -> Response:
    if _service(request).model_ready(model, _version(version)):
        return json_response({"name": model, "ready": True})
    return json_response({"error": f"model '{model}' version '{version or 'latest'}' is not ready"}, status_code=400)


async def model_metadata(request: Request, model: str, version: str = "") -> Response:
    meta = _service(request).model_metadata(model, _version(version))

    def tensors(specs):
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return json_response({
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    })


async def model_config(request: Request, model: str, version: str = "") -> Response:
    return json_response(config_to_json(_service(request).model_config(model, _version(version))))


async def infer(request: Request, model: str, version: str = "") -> Response:
    service = _service(request)
    body = await read_body(request, request.app.state.settings.max_request_bytes)
    header = request.headers.get(codec.HEADER)
    if header is not None and not header.strip().isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length must be a non-negative integer, got '{header}'")
    header_length = int(header) if header is not None else None
    if header_length == 0:
        inputs = service.model(model, _version(version)).inputs
        if len(inputs) != 1:
            raise InvalidInput("a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input")
        infer_request = codec.decode_raw_binary(body, inputs[0], model, version)
    else:
        infer_request = codec.decode_request(body, header_length, model, _version(version))
    result = await until_disconnect(request, service.infer(infer_request))
    content, json_length = codec.encode_response(result, infer_request.parameters["binary_data_output"])
    headers = {}
    if json_length is not None:
        headers["Inference-Header-Content-Length"] = str(json_length)
    accept = request.headers.get("accept-encoding")
    if accept:
        content, encoding = compress(content, accept)
        if encoding:
            headers["Content-Encoding"] = encoding
    media = "application/json" if json_length is None else "application/octet-stream"
    return Response(content, media_type=media, headers=headers)


for suffix, endpoint, methods in (
    ("", model_metadata, ["GET"]),
    ("/ready", model_ready, ["GET"]),
    ("/config", model_config, ["GET"]),
    ("/infer", infer, ["POST"]),
):
    router.add_api_route(f"/v2/models/{{model}}{suffix}", endpoint, methods=methods)
    router.add_api_route(f"/v2/models/{{model}}/versions/{{version}}{suffix}", endpoint, methods=methods)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    The body has been read, so the next ASGI message can only be the disconnect; a
    watcher waits for it and cancels this task, which cancels the queued request
    (the batcher then drops it before it reaches a runtime).
    """
    task = asyncio.current_task()
    gone = False

    def on_message(watcher: asyncio.Task) -> None:
        nonlocal gone
        if not watcher.cancelled() and watcher.exception() is None and watcher.result().get("type") == "http.disconnect":
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(request.receive())
    watcher.add_done_callback(on_message)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            raise Unavailable("the client disconnected before the answer was ready") from None
        raise
    finally:
        watcher.remove_done_callback(on_message)
        watcher.cancel()
