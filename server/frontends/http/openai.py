"""The OpenAI-compatible surface shared by its routes: ``GET /v1/models`` and the error
body OpenAI's SDKs parse (``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.frontends.http.responses import json_response
from server.service import InferenceService

router = APIRouter(tags=["openai"])

# Paths answered in OpenAI's error shape (the task routes /v1/classify, /v1/detect keep ours).
OPENAI_PATHS = ("/v1/images/", "/v1/audio/", "/v1/chat/", "/v1/completions", "/v1/embeddings", "/v1/models", "/tokenize",
                "/detokenize")
_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable"}


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def error_body(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": None, "code": None}}


async def models(request: Request) -> Response:
    """Every ready model, as OpenAI's model list (``id`` is the deepserve model name)."""
    service: InferenceService = request.app.state.service
    names = sorted({row["name"] for row in service.repository_index(ready_only=True)})
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "deepserve"} for name in names]
    return json_response({"object": "list", "data": data})


router.add_api_route("/v1/models", models, methods=["GET"], summary="List the ready models (OpenAI-compatible)")
