"""The task routes through the real server: /v1/classify on the default repository's
``digits_classify`` ensemble, with images the test draws itself; the same answers over
v2 HTTP and gRPC; bad images of every kind are 4xx and the server keeps serving."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8), "L").save(buffer, format=fmt)
    return buffer.getvalue()


def drawn(x: np.ndarray, seed: int) -> list[bytes]:
    """Held-out 8x8 digits drawn as bigger images: random scale, border, contrast, and half of
    them dark ink on a light page (a generator of our own, not the training pipeline)."""
    rng = np.random.default_rng(seed)
    images = []
    for i, digit in enumerate(x):
        big = np.pad(np.kron(digit[0], np.ones((s := int(rng.integers(3, 14)),) * 2)), int(rng.integers(0, 4 * s)))
        low, high = rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.0)
        page = low + big * (high - low)
        images.append(encode(1.0 - page if i % 2 else page, "PNG" if i % 3 else "JPEG"))
    return images


def with_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG claiming another size in its header (a decompression bomb's trick)."""
    ihdr = png[12:29]
    patched = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    return png[:12] + patched[:17] + struct.pack(">I", zlib.crc32(patched) & 0xFFFFFFFF) + png[33:]


@pytest.fixture(scope="module")
def url(http_server) -> str:
    return f"http://{http_server.http_url}"


def test_classify_held_out_digits_drawn_as_images(url, digits):
    x, y = digits
    images = drawn(x[:200], seed=7)
    predicted = []
    for start in range(0, len(images), 50):
        files = [("file", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images[start : start + 50])]
        response = httpx.post(f"{url}/v1/classify", files=files, data={"top_k": "2"}, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "digits_classify" and all(len(p) == 2 for p in body["predictions"])
        predicted += [int(p[0]["label"]) for p in body["predictions"]]
    assert (np.array(predicted) == y[:200]).mean() >= 0.98


def test_the_same_answer_over_v1_v2_http_and_grpc(url, http_server, digits):
    x, _ = digits
    image = drawn(x[:1], seed=11)[0]
    v1 = httpx.post(f"{url}/v1/classify", json={"image": base64.b64encode(image).decode(), "top_k": 10}).json()
    expected = [(p["label"].encode(), p["index"]) for p in v1["predictions"]]
    scores = [p["score"] for p in v1["predictions"]]
    for module, address in ((httpclient, http_server.http_url), (grpcclient, http_server.grpc_url)):
        client = module.InferenceServerClient(address)
        tensor = module.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=object))
        result = client.infer("digits_classify", [tensor])
        assert list(zip(result.as_numpy("LABELS")[0], result.as_numpy("INDICES")[0].tolist(), strict=True)) == expected
        assert result.as_numpy("SCORES")[0].tolist() == pytest.approx(scores, rel=1e-6)


def test_a_single_upload_gets_a_flat_prediction_list(url, digits):
    x, y = digits
    response = httpx.post(f"{url}/v1/classify", files={"file": ("d.png", drawn(x[:1], seed=3)[0], "image/png")})
    predictions = response.json()["predictions"]
    assert response.status_code == 200 and len(predictions) == 5 and predictions[0]["label"] == str(y[0])
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)


def bad_images() -> dict[str, bytes]:
    png = encode(np.eye(8))
    jpeg = encode(np.eye(64), "JPEG")
    return {
        "not an image": b"hello, this is text",
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "20000x20000 (a decompression bomb)": with_size(png, 20000, 20000),
        "9000x9000, past the pixel limit": with_size(png, 9000, 9000),
    }


@pytest.mark.parametrize("name", list(bad_images()))
def test_bad_images_are_400s_and_the_server_keeps_serving(url, name, digits):
    response = httpx.post(f"{url}/v1/classify", files={"file": ("x", bad_images()[name], "application/octet-stream")})
    assert response.status_code == 400, response.text
    assert "image" in response.json()["error"]
    x, y = digits
    ok = httpx.post(f"{url}/v1/classify", files={"file": ("d.png", drawn(x[:1], seed=5)[0], "image/png")})
    assert ok.status_code == 200


def test_odd_requests_get_clear_4xx(url):
    tiny = encode(np.ones((1, 1)))
    cases = [
        ({"files": {"file": ("e", b"", "image/png")}}, 400, "empty"),
        ({"json": {"image": "***"}}, 400, "base64"),
        ({"json": {"picture": "x"}}, 400, "'image'"),
        ({"content": b"{not json"}, 400, "JSON"),
        ({"json": {"image": base64.b64encode(tiny).decode(), "model": "nope"}}, 404, "nope"),
        ({"json": {"image": base64.b64encode(tiny).decode(), "model": "digits"}}, 400, "/v2/models/digits/infer"),
        ({"json": {"image": base64.b64encode(tiny).decode(), "top_k": 0}}, 400, "top_k"),
        ({"json": {"image": base64.b64encode(tiny).decode(), "model": "digits_classify"}}, 200, ""),  # a 1x1 image
    ]
    for kwargs, status, words in cases:
        response = httpx.post(f"{url}/v1/classify", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert words in response.text
    wrong = httpx.post(f"{url}/v1/detect", json={"image": base64.b64encode(tiny).decode(), "model": "digits_classify"})
    assert wrong.status_code == 400 and "POST /v1/classify" in wrong.json()["error"]


def test_the_task_routes_are_in_the_openapi_document(url):
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    for route in ("/v1/classify", "/v1/detect"):
        assert set(paths[route]["post"]["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
