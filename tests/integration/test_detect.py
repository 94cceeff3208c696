"""/v1/detect on the default repository's ``shapes_detect`` ensemble, with scenes drawn by
this test's own generator (not the training one): boxes in the original pixels at the
stated mAP, the same answers over v1, v2 HTTP and v2 gRPC, and the request options."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

CLASSES = ("circle", "rectangle", "triangle")


def draw_scene(rng: np.random.Generator) -> tuple[bytes, list[tuple[str, tuple[float, float, float, float]]]]:
    """A plain scene: a two-colour gradient, 1-5 non-overlapping upright shapes, JPEG."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(320, 641)), int(rng.integers(320, 641))
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    image = Image.fromarray(np.repeat((top * (1 - ramp) + bottom * ramp).astype(np.uint8), w, axis=1))
    draw = ImageDraw.Draw(image)
    truth: list[tuple[str, tuple[float, float, float, float]]] = []
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(20):
            size = int(rng.integers(24, 160))
            x0, y0 = int(rng.integers(0, w - size)), int(rng.integers(0, h - size))
            box = (x0, y0, x0 + size, y0 + size)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for _, b in truth):
                break
        else:
            continue
        label = CLASSES[int(rng.integers(0, 3))]
        under = np.asarray(image)[y0 + size // 2, x0 + size // 2].astype(int)
        colour = tuple(int(c) for c in (255 - under))  # the opposite colour: always visible
        if label == "circle":
            draw.ellipse(box, fill=colour)
        elif label == "rectangle":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x0 + size / 2, y0), (x0 + size, y0 + size), (x0, y0 + size)], fill=colour)
        truth.append((label, tuple(float(v) for v in box)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), truth


def mean_ap50(found: list[list[dict]], truths: list[list]) -> float:
    """mAP@0.5 with pycocotools' own evaluator."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    annotations, detections = [], []
    for image_id, truth in enumerate(truths):
        for label, (x1, y1, x2, y2) in truth:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CLASSES.index(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for d in found[image_id]:
            b = d["box"]
            detections.append({"image_id": image_id, "category_id": CLASSES.index(d["label"]), "score": d["score"],
                               "bbox": [b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]]})
    gt.dataset = {"images": [{"id": i} for i in range(len(truths))], "annotations": annotations,
                  "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)]}
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.params.iouThrs = np.array([0.5])
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # (recall, class) at area=all, maxDets=100
    return float(np.mean([precision[:, c][precision[:, c] > -1].mean() for c in range(len(CLASSES))]))


@pytest.fixture(scope="module")
def scenes() -> list[tuple[bytes, list]]:
    rng = np.random.default_rng(20261201)
    return [draw_scene(rng) for _ in range(40)]


@pytest.fixture(scope="module")
def url(http_server) -> str:
    return f"http://{http_server.http_url}"


def test_boxes_match_the_truth_at_the_stated_map(url, scenes):
    found = []
    for start in range(0, len(scenes), 8):
        files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, (data, _) in enumerate(scenes[start : start + 8])]
        response = httpx.post(f"{url}/v1/detect", files=files, data={"score_threshold": "0.05"}, timeout=60)
        assert response.status_code == 200, response.text
        found += [image["detections"] for image in response.json()["images"]]
    assert mean_ap50(found, [truth for _, truth in scenes]) >= 0.85


def test_width_height_and_the_same_answer_over_v1_v2_http_and_grpc(url, http_server, scenes):
    from PIL import Image

    data, _ = scenes[0]
    v1 = httpx.post(f"{url}/v1/detect", json={"image": base64.b64encode(data).decode()}).json()
    assert (v1["width"], v1["height"]) == Image.open(io.BytesIO(data)).size and v1["detections"]
    for module, address in ((httpclient, http_server.http_url), (grpcclient, http_server.grpc_url)):
        client = module.InferenceServerClient(address)
        tensor = module.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        result = client.infer("shapes_detect", [tensor])
        count = int(result.as_numpy("count")[0, 0])
        assert count == len(v1["detections"])
        boxes, labels = result.as_numpy("boxes")[0, :count], result.as_numpy("labels")[0, :count]
        for d, box, label in zip(v1["detections"], boxes, labels, strict=True):
            assert d["label"] == label.decode() and [d["box"][k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(box, abs=0.01)


def test_the_request_options_filter_and_cap(url, scenes):
    data = max(scenes, key=lambda s: len(s[1]))[0]
    body = {"image": base64.b64encode(data).decode()}
    everything = httpx.post(f"{url}/v1/detect", json={**body, "score_threshold": 0.05}).json()["detections"]
    assert len(everything) >= 2
    assert len(httpx.post(f"{url}/v1/detect", json={**body, "max_detections": 1}).json()["detections"]) == 1
    strict = httpx.post(f"{url}/v1/detect", json={**body, "score_threshold": 0.99}).json()["detections"]
    assert all(d["score"] >= 0.99 for d in strict)
    wanted = everything[0]["label"]
    only = httpx.post(f"{url}/v1/detect", json={**body, "classes": [wanted], "score_threshold": 0.05}).json()["detections"]
    assert only and {d["label"] for d in only} == {wanted}
    bad = httpx.post(f"{url}/v1/detect", json={**body, "iou_threshold": 2})
    assert bad.status_code == 400 and "iou_threshold" in bad.json()["error"]
    wrong = httpx.post(f"{url}/v1/classify", json={**body, "model": "shapes_detect"})
    assert wrong.status_code == 400 and "POST /v1/detect" in wrong.json()["error"]
