"""The infer routes in the OpenAPI document (``/openapi.json``, ``/docs``).

``POST /v2/models/{m}[/versions/{v}]/infer`` is answered by :class:`~server.frontends.http.infer.InferRoute`
in front of FastAPI, so FastAPI never sees those paths and would leave them out of its
schema. :func:`install` wraps ``app.openapi`` (FastAPI's documented way to extend the
document) and adds the two operations to the generated schema. No route is declared for
them: a stub handler would be dead code that could answer if the fast path's regex and
the stub's path ever disagreed, while the schema override cannot change how a request is
served.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from server.core.datatypes import DATATYPES
from server.frontends.http.codec import HEADER

_REF = "#/components/schemas/"

PARAMETER_VALUE: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "InferParameters": {
        "type": "object",
        "description": "Request parameters: Triton's reserved keys (binary_data_output, priority, timeout, "
        "triton_enable_empty_final_response) and any the model reads.",
        "properties": {
            "binary_data_output": {"type": "boolean", "description": "every output as binary data (default false)"},
            "priority": {"type": "integer", "minimum": 0},
            "timeout": {"type": "integer", "minimum": 0, "description": "queue timeout in microseconds"},
        },
        "additionalProperties": PARAMETER_VALUE,
    },
    "InferInputTensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": sorted(DATATYPES)},
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data_size": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "bytes of this tensor in the binary part of the body (then no 'data')",
                    }
                },
                "additionalProperties": PARAMETER_VALUE,
            },
            "data": {
                "type": "array",
                "items": {},
                "description": "row-major values, flat or nested (numbers, booleans, or strings for BYTES); "
                "FP16 / BF16 travel only as binary data",
            },
        },
    },
    "InferRequestedOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data": {"type": "boolean"},
                    "classification": {"type": "integer", "minimum": 0, "description": "top-k classification"},
                },
                "additionalProperties": PARAMETER_VALUE,
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"$ref": _REF + "InferParameters"},
            "inputs": {"type": "array", "minItems": 1, "items": {"$ref": _REF + "InferInputTensor"}},
            "outputs": {"type": "array", "items": {"$ref": _REF + "InferRequestedOutput"}},
        },
    },
    "InferOutputTensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string", "enum": sorted(DATATYPES)},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                "additionalProperties": PARAMETER_VALUE,
            },
            "data": {"type": "array", "items": {}},
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object", "additionalProperties": PARAMETER_VALUE},
            "outputs": {"type": "array", "items": {"$ref": _REF + "InferOutputTensor"}},
        },
    },
    "InferError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF + "InferError"}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _operation(versioned: bool) -> dict[str, Any]:
    path_params = [{"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}]
    if versioned:
        path_params.append(
            {
                "name": "model_version",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "a version number (the latest when the unversioned path is used)",
            }
        )
    binary_header = {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "binary tensor extension: the length of the JSON header; the body's remaining bytes are the "
        "tensors with parameters.binary_data_size, in order. 0: the whole body is the single input's raw bytes.",
    }
    binary_body = {"schema": {"type": "string", "format": "binary"}}
    return {
        "tags": ["inference"],
        "summary": "Model Infer" + (" (version)" if versioned else ""),
        "description": "Open Inference Protocol v2 inference, with Triton's binary tensor, classification and "
        "gzip / deflate extensions. Served by the ASGI fast path in front of the FastAPI app.",
        "operationId": "model_version_infer" if versioned else "model_infer",
        "parameters": [*path_params, binary_header],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF + "InferRequest"}},
                "application/octet-stream": binary_body,
            },
        },
        "responses": {
            "200": {
                "description": "the outputs (JSON, or a JSON header then binary tensors when "
                f"{HEADER} is in the response headers)",
                "content": {"application/json": {"schema": {"$ref": _REF + "InferResponse"}}, "application/octet-stream": binary_body},
            },
            "400": _error("invalid request, or /infer on a decoupled model (stream it)"),
            "404": _error("unknown model or version"),
            "405": _error("a method other than POST"),
            "413": _error("body over --max-request-bytes"),
            "503": _error("queue full, queue timeout, or model not ready", retry_after=True),
        },
    }


def add_infer_operations(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the infer paths and their component schemas to a generated document (in place)."""
    paths = schema.setdefault("paths", {})
    paths["/v2/models/{model_name}/infer"] = {"post": _operation(versioned=False)}
    paths["/v2/models/{model_name}/versions/{model_version}/infer"] = {"post": _operation(versioned=True)}
    schema.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    return schema


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json`` and ``/docs``) describe the infer routes."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_infer_operations(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
