"""Open Inference Protocol v2 routes: health, metadata, config, statistics.

(``.../infer`` is served by :mod:`server.frontends.http.infer`, in front of this app.)
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.core.validation import check_version
from server.frontends.http.responses import json_response
from server.repository.config import config_to_json
from server.service import InferenceService

router = APIRouter()


def _service(request: Request) -> InferenceService:
    return request.app.state.service


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
    stats = _service(request).statistics(model, check_version(version))
    return json_response({"model_stats": stats})


router.add_api_route("/v2/models/stats", statistics, methods=["GET"])
router.add_api_route("/v2/models/{model}/stats", statistics, methods=["GET"])
router.add_api_route("/v2/models/{model}/versions/{version}/stats", statistics, methods=["GET"])


# -- per model ---------------------------------------------------------------------


async def model_ready(request: Request, model: str, version: str = "") -> Response:
    if _service(request).model_ready(model, check_version(version)):
        return json_response({"name": model, "ready": True})
    return json_response({"error": f"model '{model}' version '{version or 'latest'}' is not ready"}, status_code=400)


async def model_metadata(request: Request, model: str, version: str = "") -> Response:
    meta = _service(request).model_metadata(model, check_version(version))

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
    return json_response(config_to_json(_service(request).model_config(model, check_version(version))))


for suffix, endpoint, methods in (
    ("", model_metadata, ["GET"]),
    ("/ready", model_ready, ["GET"]),
    ("/config", model_config, ["GET"]),
):
    router.add_api_route(f"/v2/models/{{model}}{suffix}", endpoint, methods=methods)
    router.add_api_route(f"/v2/models/{{model}}/versions/{{version}}{suffix}", endpoint, methods=methods)
