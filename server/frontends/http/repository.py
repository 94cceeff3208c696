"""Triton's model repository extension: index, load (with a config override), unload."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.core.errors import InvalidInput
from server.frontends.http.body import read_json_object
from server.frontends.http.responses import json_response
from server.service import InferenceService

router = APIRouter()


def _service(request: Request) -> InferenceService:
    return request.app.state.service


async def _json_body(request: Request) -> dict:
    limit = request.app.state.settings.max_request_bytes
    return await read_json_object(request.receive, request.headers, limit, empty_ok=True)


async def index(request: Request, repository: str = "") -> Response:
    data = await _json_body(request)
    ready_only = data.get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInput("'ready' must be a boolean")
    return json_response(_service(request).repository_index(ready_only))


async def load(request: Request, model: str, repository: str = "") -> Response:
    parameters = (await _json_body(request)).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    config = parameters.get("config")
    if config is not None and not isinstance(config, str):
        raise InvalidInput("parameters.config must be the model config as a JSON string")
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise InvalidInput(f"parameter '{key}' must be base64 text")
            try:
                files[key] = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise InvalidInput(f"parameter '{key}' is not valid base64") from None
    await _service(request).load_model(model, config, files or None)
    return Response(status_code=200)


async def unload(request: Request, model: str, repository: str = "") -> Response:
    parameters = (await _json_body(request)).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    dependents = parameters.get("unload_dependents", False)
    if not isinstance(dependents, bool):
        raise InvalidInput("parameters.unload_dependents must be a boolean")
    await _service(request).unload_model(model, dependents)
    return Response(status_code=200)


for prefix in ("/v2/repository", "/v2/repository/{repository}"):
    router.add_api_route(f"{prefix}/index", index, methods=["POST"])
    router.add_api_route(f"{prefix}/models/{{model}}/load", load, methods=["POST"])
    router.add_api_route(f"{prefix}/models/{{model}}/unload", unload, methods=["POST"])
