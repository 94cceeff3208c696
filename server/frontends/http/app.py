"""The FastAPI application: ``create_app(service, settings, registry)``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.core.errors import DeepserveError
from server.frontends.http import audio, completions, generate, images, openai, repository, tasks, v2
from server.frontends.http.errors import handle_deepserve_error, handle_http_error
from server.frontends.http.infer import InferRoute
from server.frontends.http.openai import error_body, is_openai_path
from server.frontends.http.openapi import install as install_openapi
from server.frontends.http.responses import json_response
from server.frontends.http.security import wrap
from server.service import InferenceService
from server.settings import Settings


async def _handle_validation_error(request: Request, error: RequestValidationError) -> Response:
    return json_response({"error": f"invalid request: {error.errors()}"}, status_code=400)


async def _handle_unexpected_error(request: Request, error: Exception) -> Response:
    """A bug on our side: a bare 500 (the traceback goes to the log, never to the client)."""
    message = "internal server error"
    body = error_body(500, message) if is_openai_path(request.url.path) else {"error": message}
    return json_response(body, status_code=500)


def create_app(service: InferenceService, settings: Settings, registry: CollectorRegistry):
    """The HTTP server's ASGI app: the infer fast path in front of the FastAPI routes, behind
    the request id / API key / CORS wrapper (``security.wrap``)."""
    app = FastAPI(title="deepserve", version=service.version, docs_url="/docs", redoc_url=None)
    app.state.service = service
    app.state.settings = settings
    app.state.registry = registry
    app.add_exception_handler(DeepserveError, handle_deepserve_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(Exception, _handle_unexpected_error)
    app.include_router(v2.router)
    app.include_router(repository.router)
    app.include_router(generate.router)
    app.include_router(tasks.router)
    app.include_router(images.router)
    app.include_router(audio.router)
    app.include_router(openai.router)
    app.include_router(completions.router)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    install_openapi(app)  # the infer routes (served by InferRoute, not FastAPI) in /openapi.json and /docs
    return wrap(InferRoute(app, service, settings.max_request_bytes), settings)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


def create_metrics_app(registry: CollectorRegistry) -> FastAPI:
    """A bare app that serves only /metrics (for --metrics-port, Triton's 8002 layout)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    app.add_api_route("/metrics", metrics, methods=["GET"])
    return app
