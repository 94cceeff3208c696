"""Task routes: ``POST /v1/classify`` and ``POST /v1/detect``.

Thin routes over ensembles (pipelines are models): the images go to the model's first
input as a BYTES batch, the answer is read from its outputs by datatype, so the same
image gives the same answer here and over v2 HTTP / gRPC. A model names its task with
``parameters { key: "task" value: { string_value: "classify" } }`` (or ``detect``); any
other model is a 400 that names the route it belongs to.

Bodies: ``multipart/form-data`` with one or more ``file`` parts and the options as form
fields, or JSON ``{"image": <base64> | [<base64>, ...], ...options}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.core.errors import InvalidInput
from server.core.types import InferenceRequest
from server.frontends.http.body import read_json_object
from server.frontends.http.responses import json_response
from server.service import InferenceService

router = APIRouter(tags=["tasks"])

DEFAULT_MODELS = {"classify": "digits_classify", "detect": "shapes_detect"}
ROUTES = {"classify": "/v1/classify", "detect": "/v1/detect"}
MAX_FILES = 64


def _body_schema(options: dict[str, Any]) -> dict:
    image = {"oneOf": [{"type": "string", "format": "byte"}, {"type": "array", "items": {"type": "string", "format": "byte"}}]}
    files = {"type": "array", "items": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {"file": files, **options}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {"image": image, **options}}},
    }}}


async def _parse(request: Request) -> tuple[list[bytes], dict[str, Any]]:
    """The images and the options, from either body form."""
    limit = request.app.state.settings.max_request_bytes
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_FILES, max_part_size=limit)
        images = [await part.read() for part in form.getlist("file") if not isinstance(part, str)]
        options = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if not images:
            raise InvalidInput("send the image as a multipart 'file' field (one or more)")
        return images, options
    data = await read_json_object(request.receive, request.headers, limit)
    if "image" not in data:
        raise InvalidInput("the JSON body needs 'image': base64 text, or a list of them")
    encoded = data.pop("image")
    encoded = encoded if isinstance(encoded, list) else [encoded]
    try:
        images = [base64.b64decode(item, validate=True) for item in encoded]
    except (binascii.Error, TypeError, ValueError):
        raise InvalidInput("'image' must be base64 text (or a list of base64 texts)") from None
    return images, data


def _number(options: dict, key: str, kind: type, low: float, high: float | None = None):
    value = options.get(key)
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"'{key}' must be a number") from None
    if number < low or (high is not None and number > high):
        raise InvalidInput(f"'{key}' must be between {low} and {high}" if high is not None else f"'{key}' must be at least {low}")
    return number


async def _parse_counted(request: Request) -> tuple[list[bytes], dict[str, Any]]:
    """``_parse``, a failure counted without a model (a body that does not parse names none)."""
    with request.app.state.service.accounting("", admit=False):
        return await _parse(request)


def _model(options: dict, task: str) -> str:
    return str(options.get("model") or DEFAULT_MODELS[task])


async def _run(request: Request, task: str, images: list[bytes], options: dict, extra: dict[str, np.ndarray]):
    service: InferenceService = request.app.state.service
    model = _model(options, task)
    meta = service.model_metadata(model)
    if meta.task != task:
        if meta.task in ROUTES:
            raise InvalidInput(f"model '{model}' is a {meta.task} model; call POST {ROUTES[meta.task]}")
        raise InvalidInput(f"model '{model}' is not a {task} model (no task parameter); call /v2/models/{model}/infer")
    if any(not image for image in images):
        raise InvalidInput("an uploaded image is empty")
    if len(images) > 1 and not meta.batched:
        raise InvalidInput(f"model '{model}' takes one image per request")
    inputs = {meta.inputs[0].name: np.array(images, dtype=object).reshape(len(images), 1)}
    declared = {spec.name for spec in meta.inputs}
    inputs.update({name: np.repeat(value, len(images), axis=0) for name, value in extra.items() if name in declared})
    return await service.infer(InferenceRequest(model, inputs)), model


async def classify(request: Request) -> Response:
    images, options = await _parse_counted(request)
    with request.app.state.service.accounting(_model(options, "classify")):
        return await _classify(request, images, options)


async def _classify(request: Request, images: list[bytes], options: dict) -> Response:
    top_k = _number(options, "top_k", int, 1) or 5
    response, model = await _run(request, "classify", images, options, {})
    labels = next(t.data for t in response.outputs if t.datatype == "BYTES")
    scores = next(t.data for t in response.outputs if t.datatype == "FP32")
    indices = next(t.data for t in response.outputs if t.datatype.startswith("INT"))
    per_image = [
        [{"label": labels[i, j].decode(), "index": int(indices[i, j]), "score": float(scores[i, j])}
         for j in range(min(top_k, labels.shape[1]))]
        for i in range(labels.shape[0])
    ]
    return json_response({"model": model, "predictions": per_image[0] if len(images) == 1 else per_image})


async def detect(request: Request) -> Response:
    images, options = await _parse_counted(request)
    with request.app.state.service.accounting(_model(options, "detect")):
        return await _detect(request, images, options)


async def _detect(request: Request, images: list[bytes], options: dict) -> Response:
    extra = {}
    for key, kind, low, high in (("score_threshold", float, 0.0, 1.0), ("iou_threshold", float, 0.0, 1.0)):
        value = _number(options, key, kind, low, high)
        if value is not None:
            extra[key] = np.array([[value]], np.float32)
    most = _number(options, "max_detections", int, 0)
    classes = _classes(options.get("classes"))
    if most is not None and classes is None:  # with a class filter, the count is applied after filtering
        extra["max_detections"] = np.array([[most]], np.int32)
    response, model = await _run(request, "detect", images, options, extra)
    out = {t.name: t.data for t in response.outputs}
    results = [_detections(out, i, classes, most) for i in range(len(images))]
    if len(images) == 1:
        return json_response({"model": model, **results[0]})
    return json_response({"model": model, "images": results})


def _classes(value: Any) -> set[str] | None:
    if value is None or value == "":
        return None
    names = value if isinstance(value, list) else str(value).split(",")
    if not all(isinstance(n, str) for n in names):
        raise InvalidInput("'classes' must be a list of class names (or a comma-separated string)")
    return {n.strip() for n in names if n.strip()}


def _detections(out: dict[str, np.ndarray], i: int, classes: set[str] | None, most: int | None) -> dict:
    transform, count = out["transform"][i], int(out["count"][i, 0])
    found = []
    for j in range(count):
        label = out["labels"][i, j].decode()
        if classes is not None and label not in classes:
            continue
        x1, y1, x2, y2 = (round(float(v), 2) for v in out["boxes"][i, j])
        found.append({"label": label, "score": float(out["scores"][i, j]), "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}})
    if most is not None:
        found = found[:most]
    return {"width": int(transform[4]), "height": int(transform[5]), "detections": found}


_COMMON = {"model": {"type": "string"}}
router.add_api_route(
    "/v1/classify", classify, methods=["POST"], summary="Classify one or more images",
    description="Top-k labels per image. One image: `predictions` is a list; several: a list per image.",
    openapi_extra=_body_schema({**_COMMON, "top_k": {"type": "integer", "minimum": 1, "default": 5}}),
)
router.add_api_route(
    "/v1/detect", detect, methods=["POST"], summary="Detect objects in one or more images",
    description="Boxes in the original image's pixels. One image: `width`, `height`, `detections`; several: `images`.",
    openapi_extra=_body_schema({
        **_COMMON, "score_threshold": {"type": "number"}, "iou_threshold": {"type": "number"},
        "max_detections": {"type": "integer"}, "classes": {"type": "array", "items": {"type": "string"}},
    }),
)
