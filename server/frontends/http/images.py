"""``POST /v1/images/generations``, OpenAI-compatible, over the image-generation models.

A model offers itself with ``parameters { key: "task" value: { string_value: "image_generation" } }``
and an ``image`` output of one image in [0, 1] (its native size), from a ``label`` input
(and an optional ``seed``). A decoupled model (the diffusion sampler) is streamed and its
last response kept; any other (the VAE ensemble) is called once with ``n`` rows.

Body (JSON): ``prompt`` names the digit ("7", "seven", "a seven"); ``model``; ``n``
(1..10); ``size`` ``"WxH"``, the native size or an integer upscale of it (nearest
neighbour), up to 256 px; ``response_format`` ``b64_json`` (PNG); and deepserve's extras
``seed`` (image i uses seed + i), ``steps``, ``guidance_scale``. The OpenAI fields this
server has no use for (``quality``, ``style``, ``user``, ...) are accepted and ignored.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from contextlib import aclosing
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.core.errors import ClientGone, InvalidInput, ModelError
from server.core.types import InferenceRequest
from server.frontends.http.body import read_json_object
from server.frontends.http.infer import until_disconnect
from server.frontends.http.responses import json_response
from server.service import InferenceService, ModelMetadata

router = APIRouter(tags=["openai"])

TASK = "image_generation"
DEFAULT_MODEL = "digits_diffusion"
MAX_N = 10
MAX_SIDE = 256
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Accepted for compatibility, no effect here.
_IGNORED = {"quality", "style", "user", "background", "moderation", "output_compression", "partial_images", "stream"}


def digit_from_prompt(prompt: Any) -> int:
    """The one digit a prompt names, as a numeral or an English word."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("'prompt' must be a non-empty string naming a digit, e.g. \"7\", \"seven\" or \"a seven\"")
    tokens = re.findall(r"[a-z]+|\d+", prompt.lower())
    found = {int(t) for t in tokens if len(t) == 1 and t.isdigit()} | {DIGIT_WORDS.index(t) for t in tokens if t in DIGIT_WORDS}
    if len(found) != 1:
        what = "names no digit" if not found else f"names several digits ({sorted(found)})"
        raise InvalidInput(f"the prompt {what}: name one digit 0-9 as a numeral or a word, e.g. \"7\", \"seven\" or \"a seven\"")
    return found.pop()


def _integer(body: dict, key: str, low: int, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidInput(f"'{key}' must be an integer {bound}, not {value!r}")
    return value


def _scale(size: Any, native: tuple[int, int]) -> int:
    """``"WxH"`` -> the integer upscale of the native image it asks for."""
    height, width = native
    allowed = [f"{width * k}x{height * k}" for k in range(1, MAX_SIDE // max(height, width) + 1)]
    if size is None or size == "auto":
        return 1
    if size not in allowed:
        raise InvalidInput(f"size {size!r} is not offered: this model draws {allowed[0]} images; "
                           f"sizes are integer upscales: {', '.join(allowed)}")
    return allowed.index(size) + 1


def png_base64(image: np.ndarray, scale: int) -> str:
    """One [0, 1] image (1, H, W) -> a greyscale PNG, upscaled by ``scale`` (nearest), base64."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(image, np.float32).reshape(image.shape[-2:]) * 255), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels, mode="L")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _model(service: InferenceService, body: dict) -> ModelMetadata:
    name = body.get("model") or DEFAULT_MODEL
    if not isinstance(name, str):
        raise InvalidInput("'model' must be a string")
    meta = service.model_metadata(name)
    if meta.task != TASK or "image" not in {o.name for o in meta.outputs}:
        raise InvalidInput(f"model '{name}' is not an image generation model (task '{meta.task or 'none'}'); "
                           "POST /v1/images/generations serves models whose task is image_generation")
    return meta


def _inputs(meta: ModelMetadata, label: int, seed: int | None, extras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    shape = (1, 1) if meta.batched else (1,)
    inputs = {"label": np.full(shape, label, np.int32), **extras}
    if seed is not None:
        inputs["seed"] = np.full(shape, seed, np.int64)
    return inputs


async def _last(service: InferenceService, request: InferenceRequest) -> np.ndarray:
    last = None
    async with aclosing(service.infer_stream(request)) as responses:
        async for response in responses:
            last = response
    image = None if last is None else next((t.data for t in last.outputs if t.name == "image"), None)
    if image is None:
        raise ModelError(f"model '{request.model_name}' ended without an image")
    return image


async def _generate(service: InferenceService, meta: ModelMetadata, label: int, n: int, seed: int | None,
                    extras: dict[str, np.ndarray]) -> list[np.ndarray]:
    seeds = [None if seed is None else seed + i for i in range(n)]
    if meta.decoupled:
        requests = [InferenceRequest(meta.name, _inputs(meta, label, s, extras)) for s in seeds]
        return await _all(_last(service, r) for r in requests)
    if meta.batched:  # one request of n rows
        inputs = {k: np.repeat(v, n, axis=0) for k, v in _inputs(meta, label, None, extras).items()}
        if seed is not None:
            inputs["seed"] = np.array(seeds, np.int64).reshape(n, 1)
        response = await service.infer(InferenceRequest(meta.name, inputs))
        images = next(t.data for t in response.outputs if t.name == "image")
        return list(images)
    responses = await _all(service.infer(InferenceRequest(meta.name, _inputs(meta, label, s, extras))) for s in seeds)
    return [next(t.data for t in r.outputs if t.name == "image") for r in responses]


async def _all(calls) -> list:
    """Every call's result; when one fails (or the client leaves), the others are cancelled
    at once, so no image is drawn for nobody."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def generations(request: Request) -> Response:
    """Failures are counted once: a body that does not parse without a model, the rest
    under the model it names (each of the ``n`` images is one request of that model)."""
    service: InferenceService = request.app.state.service
    with service.accounting("", admit=False):
        body = await read_json_object(request.receive, request.headers, request.app.state.settings.max_request_bytes)
    name = body.get("model") or DEFAULT_MODEL
    with service.accounting(name if isinstance(name, str) else ""):
        return await _generations(request, service, body)


async def _generations(request: Request, service: InferenceService, body: dict) -> Response:
    label = digit_from_prompt(body.get("prompt"))
    meta = _model(service, body)
    n = _integer(body, "n", 1, MAX_N) or 1
    image_spec = next(o for o in meta.outputs if o.name == "image")
    scale = _scale(body.get("size"), tuple(image_spec.shape[-2:]))
    if body.get("response_format", "b64_json") not in ("b64_json", None):
        raise InvalidInput("response_format must be 'b64_json': this server returns images inline, it hosts no URLs")
    if body.get("output_format", "png") != "png":
        raise InvalidInput("output_format must be 'png'")
    seed = _integer(body, "seed", 0, 2**62)
    declared = {spec.name for spec in meta.inputs}
    extras: dict[str, np.ndarray] = {}
    shape = (1, 1) if meta.batched else (1,)
    for key, kind, dtype in (("steps", int, np.int32), ("guidance_scale", float, np.float32)):
        value = body.get(key)
        if value is None:
            continue
        if key not in declared:
            raise InvalidInput(f"model '{meta.name}' takes no '{key}'")
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
            raise InvalidInput(f"'{key}' must be a {'integer' if kind is int else 'number'}, not {value!r}")
        extras[key] = np.full(shape, value, dtype)
    unknown = sorted(set(body) - {"prompt", "model", "n", "size", "response_format", "output_format", "seed",
                                  "steps", "guidance_scale"} - _IGNORED)
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}")
    try:
        images = await until_disconnect(request.receive, _generate(service, meta, label, n, seed, extras))
    except ClientGone as gone:
        gone.counted = True  # each image's request was counted (CANCELED) by the model itself
        raise
    return json_response({"created": int(time.time()), "data": [{"b64_json": png_base64(i, scale)} for i in images]})


router.add_api_route(
    "/v1/images/generations", generations, methods=["POST"], summary="Generate images of a digit (OpenAI-compatible)",
    description="`prompt` names the digit; `n`, `size` (native or integer upscales), `response_format` b64_json; "
    "extras `seed`, `steps`, `guidance_scale`.",
)
