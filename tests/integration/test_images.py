"""Image generation through the real server on the default repository: the openai SDK's
``images.generate`` against ``digits_diffusion`` (the step-level sampler) and ``digits_vae``
(an ensemble), the PNGs judged by the server's own digits classifier; seeds reproducible
alone and under concurrency; previews over gRPC ModelStreamInfer and HTTP generate_stream;
a closed stream frees its slot; bad parameters are 4xx."""

from __future__ import annotations

import base64
import io
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.integration import server_fixtures as fx

# Conditional accuracy the served images must reach (the bound), judged per model
# on a fixed set of seeds (deterministic: a seeded request always draws the same image).
MIN_ACCURACY = 0.9


@pytest.fixture(scope="module")
def url(http_server) -> str:
    return f"http://{http_server.http_url}"


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def decode_png(b64: str) -> np.ndarray:
    from PIL import Image

    picture = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert picture.format == "PNG" and picture.mode == "L"
    return np.asarray(picture, np.float32) / 255.0


def judge(url: str, images: list[np.ndarray]) -> np.ndarray:
    """The server's `digits` classifier on the images area-averaged down to 8x8."""
    x = np.stack([im.reshape(8, im.shape[0] // 8, 8, im.shape[1] // 8).mean(axis=(1, 3)) for im in images])[:, None]
    triton = httpclient.InferenceServerClient(url.removeprefix("http://"))
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32))
    return triton.infer("digits", [tensor]).as_numpy("logits").argmax(axis=1)


@pytest.mark.parametrize("model", ["digits_diffusion", "digits_vae"])
def test_openai_sdk_images_are_the_digits_asked_for(client, url, model):
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    images, wanted = [], []
    for digit in range(10):
        prompt = f"a {words[digit]}" if digit % 2 else str(digit)
        result = client.images.generate(model=model, prompt=prompt, n=4, size="32x32", response_format="b64_json",
                                        extra_body={"seed": 100 * digit})
        assert len(result.data) == 4
        for item in result.data:
            image = decode_png(item.b64_json)
            assert image.shape == (32, 32)
            images.append(image)
            wanted.append(digit)
    accuracy = float((judge(url, images) == np.array(wanted)).mean())
    assert accuracy >= MIN_ACCURACY, f"{model}: conditional accuracy {accuracy:.3f} < {MIN_ACCURACY}"


def test_a_seed_draws_the_same_image_alone_and_among_16_concurrent_requests(client):
    def draw(prompt: str, seed: int) -> str:
        return client.images.generate(model="digits_diffusion", prompt=prompt, size="16x16",
                                      extra_body={"seed": seed, "steps": 20}).data[0].b64_json

    alone = draw("3", 4242)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(draw, "3" if i == 7 else str(i % 10), 4242 if i == 7 else i) for i in range(16)]
        crowd = [f.result() for f in futures]
    assert crowd[7] == alone
    assert len(set(crowd)) == 16  # the others differ from it and from each other
    # Upscaling repeats pixels: the 64x64 image is the 16x16 one, each pixel a 4x4 block.
    big = decode_png(client.images.generate(model="digits_diffusion", prompt="3", size="64x64",
                                            extra_body={"seed": 4242, "steps": 20}).data[0].b64_json)
    np.testing.assert_array_equal(big[::4, ::4], decode_png(alone))


def test_previews_stream_over_grpc_and_end_with_the_final_image(http_server, client):
    responses: queue.Queue = queue.Queue()
    grpc = grpcclient.InferenceServerClient(http_server.grpc_url)
    inputs = []
    for name, dtype, value in (("label", "INT32", 5), ("seed", "INT64", 77), ("steps", "INT32", 20),
                               ("preview_every", "INT32", 5)):
        tensor = grpcclient.InferInput(name, [1], dtype)
        tensor.set_data_from_numpy(np.array([value], {"INT32": np.int32, "INT64": np.int64}[dtype]))
        inputs.append(tensor)
    grpc.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        grpc.async_stream_infer("digits_diffusion", inputs, request_id="r1", enable_empty_final_response=True)
        steps, images = [], []
        while True:
            result, error = responses.get(timeout=60)
            assert error is None, error
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param and not response.outputs:
                break
            steps.append(int(result.as_numpy("step")[0]))
            images.append(result.as_numpy("image"))
    finally:
        grpc.stop_stream()
    assert steps == [5, 10, 15, 20]
    assert images[-1].shape == (1, 16, 16)
    assert not np.array_equal(images[0], images[-1])  # a preview is the estimate so far, not the end
    final = client.images.generate(model="digits_diffusion", prompt="5", extra_body={"seed": 77, "steps": 20})
    expected = np.clip(np.rint(images[-1][0] * 255), 0, 255) / 255.0
    np.testing.assert_array_equal(decode_png(final.data[0].b64_json), expected.astype(np.float32))


def metric(url: str, name: str) -> float:
    """One metric of digits_diffusion, summed over versions (0 before its first sample)."""
    return sum(value for labels, value in fx.metric_samples(url, name) if labels["model"] == "digits_diffusion")


def inflight(url: str) -> float:
    return metric(url, "deepserve_inflight_requests")


def test_a_closed_stream_frees_its_slot(url):
    body = {"label": 2, "seed": 1, "steps": 250, "preview_every": 1}
    with httpx.stream("POST", f"{url}/v2/models/digits_diffusion/generate_stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        first = next(line for line in response.iter_lines() if line.startswith("data:"))
        assert '"step":1' in first.replace(" ", "")
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing assertion
    while inflight(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inflight(url) == 0
    stats = httpx.get(f"{url}/v2/models/digits_diffusion/stats").json()["model_stats"][0]
    assert sum(r["cancel"]["count"] for r in stats["response_stats"].values()) >= 1


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"prompt": "a cat"}, 400, "names no digit"),
    ({"prompt": "3 and 4"}, 400, "several digits"),
    ({"prompt": "7", "n": 11}, 400, "'n'"),
    ({"prompt": "7", "n": 0}, 400, "'n'"),
    ({"prompt": "7", "size": "100x100"}, 400, "16x16"),
    ({"prompt": "7", "size": "1024x1024"}, 400, "integer upscales"),
    ({"prompt": "7", "steps": 0}, 400, "steps"),
    ({"prompt": "7", "steps": 100000}, 400, "steps"),
    ({"prompt": "7", "guidance_scale": -1}, 400, "guidance_scale"),
    ({"prompt": "7", "seed": -1}, 400, "seed"),
    ({"prompt": "7", "response_format": "url"}, 400, "b64_json"),
    ({"prompt": "7", "model": "digits"}, 400, "not an image generation model"),
    ({"prompt": "7", "model": "digits_vae", "steps": 10}, 400, "takes no 'steps'"),
    ({"prompt": "7", "model": "nope"}, 404, "nope"),
    ({"prompt": "7", "colour": "red"}, 400, "unknown field"),
])
def test_bad_parameters_are_4xx_in_openai_error_shape(url, body, status, message):
    response = httpx.post(f"{url}/v1/images/generations", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"]


def test_sdk_raises_bad_request_and_lists_the_models(client):
    with pytest.raises(openai.BadRequestError, match="names no digit"):
        client.images.generate(model="digits_diffusion", prompt="a dog")
    ids = {m.id for m in client.models.list()}
    assert {"digits_diffusion", "digits_vae", "digits"} <= ids


def test_metrics_count_images_and_steps(url, client):
    def value(name: str) -> float:
        return metric(url, name)

    images, steps = value("deepserve_generated_images_total"), value("deepserve_execution_count_total")
    client.images.generate(model="digits_diffusion", prompt="1", n=2, extra_body={"steps": 10, "seed": 5})
    assert value("deepserve_generated_images_total") == images + 2
    assert value("deepserve_execution_count_total") == steps + 10  # the two shared every step
