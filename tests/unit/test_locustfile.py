"""The Locust payloads (``loadtests/locust_payloads.py``) without Locust, and the
locustfile's classes and knobs in a subprocess when a Python with Locust is at hand
(Locust monkey-patches the standard library on import, so never in this process).

The locustfile checks run with ``sys.executable`` when it has locust, else with
``LOCUST_PYTHON`` (say ``/tmp/locust-venv/bin/python``); otherwise they skip.
"""

from __future__ import annotations

import email.parser
import email.policy
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loadtests import locust_payloads as payloads

REPO = Path(__file__).resolve().parents[2]


def test_binary_body_is_header_then_raw_fp32() -> None:
    x = payloads.digits_tensor(3)
    body, length = payloads.binary_body(x)
    header = json.loads(body[:length])
    (tensor,) = header["inputs"]
    assert tensor["shape"] == [3, 1, 8, 8] and tensor["datatype"] == "FP32"
    assert tensor["parameters"]["binary_data_size"] == x.nbytes == len(body) - length
    assert np.array_equal(np.frombuffer(body[length:], np.float32).reshape(x.shape), x)
    assert 0.0 <= x.min() and x.max() <= 16.0


def test_json_body_carries_the_same_values() -> None:
    x = payloads.digits_tensor(2)
    (tensor,) = json.loads(payloads.json_body(x))["inputs"]
    assert tensor["shape"] == [2, 1, 8, 8]
    assert np.allclose(np.array(tensor["data"], np.float32).reshape(x.shape), x)


def test_grpc_request_has_the_raw_tensor() -> None:
    pytest.importorskip("tritonclient.grpc")
    x = payloads.digits_tensor(2)
    request = payloads.grpc_infer_request(x, "digits")
    assert request.model_name == "digits"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("input", "FP32", [2, 1, 8, 8])]
    assert [o.name for o in request.outputs] == ["logits"]
    assert request.raw_input_contents[0] == x.tobytes()


def test_digit_images_are_decodable_pages_with_labels() -> None:
    images = payloads.digit_images(12, seed=1)
    assert len(images) == 12 and images == payloads.digit_images(12, seed=1)  # deterministic
    kinds = set()
    for data, label in images:
        assert 0 <= label <= 9
        kinds.add(payloads.image_kind(data)[1])
        page = Image.open(io.BytesIO(data))
        assert page.mode == "L" and min(page.size) >= 32  # at least 4x the 8x8 digit
    assert kinds == {"image/png", "image/jpeg"}


def test_digit_images_without_scikit_learn_use_the_font(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    images = payloads.digit_images(4)
    assert len(images) == 4 and all(Image.open(io.BytesIO(d)).size[0] >= 32 for d, _ in images)


def test_scene_images_are_jpegs_of_the_stated_size() -> None:
    scenes = payloads.scene_images(2)
    for data, objects, (width, height) in scenes:
        assert data[:2] == b"\xff\xd8" and payloads.image_kind(data) == ("image.jpg", "image/jpeg")
        assert Image.open(io.BytesIO(data)).size == (width, height)
        assert 320 <= width <= 640 and 320 <= height <= 640 and 0 <= objects <= 8


def test_shapes_data_loads_by_path_too(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "models", None)  # as under Locust, without the repository on the path
    assert payloads._shapes_data().CLASSES == ("circle", "rectangle", "triangle")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_speech_is_spoken_by_espeak() -> None:
    data, source = payloads.speech_wav("seven")
    assert source == "espeak-ng" and data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert 0.2 < payloads.wav_seconds(data) < 5.0


def test_speech_falls_back_to_a_tone(monkeypatch) -> None:
    monkeypatch.setattr(payloads.shutil, "which", lambda name: None)
    data, source = payloads.speech_wav()
    assert source == "tone"
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
    assert payloads.wav_seconds(data) == pytest.approx(3.0)


def test_chat_bodies_stream_with_usage() -> None:
    bodies = [json.loads(b) for b in payloads.chat_bodies("textgen", 16)]
    assert len(bodies) == len(payloads.CHAT_PROMPTS)
    for body in bodies:
        assert body["model"] == "textgen" and body["max_tokens"] == 16
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["messages"][-1]["role"] == "user" and body["messages"][-1]["content"]


def test_sse_reader_handles_any_chunking() -> None:
    stream = (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
              b'data: {"choices":[],"usage":{"completion_tokens":1}}\r\n\r\n'
              b"data: [DONE]\n\n")
    for size in (1, 7, len(stream)):
        reader, events = payloads.SseReader(), []
        for i in range(0, len(stream), size):
            events += reader.feed(stream[i:i + size])
        assert events == [{"choices": [{"delta": {"content": "a"}}]}, {"choices": [], "usage": {"completion_tokens": 1}}]
        assert reader.done


def test_multipart_body_parses_as_form_data() -> None:
    body, content_type = payloads.multipart_body({"model": "speech"}, {"file": ("a.wav", b"RIFF\x00\r\n--x", "audio/wav")})
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert parts["model"].get_content() == "speech"
    assert parts["file"].get_filename() == "a.wav" and parts["file"].get_content() == b"RIFF\x00\r\n--x"


def _locust_python() -> str:
    if importlib.util.find_spec("locust") is not None:
        return sys.executable
    other = os.environ.get("LOCUST_PYTHON")
    if other and Path(other).exists():
        return other
    pytest.skip("locust is not installed here (set LOCUST_PYTHON to a Python that has it)")


CHECK = r"""
import json, os
from loadtests import locustfile as lf
from locust import User
users = {n: c for n, c in vars(lf).items() if isinstance(c, type) and issubclass(c, User) and c.__module__ == lf.__name__}
tags = {n: sorted({t for task in c.tasks for t in getattr(task, "locust_tag_set", ())}) for n, c in users.items()}
mix = {f.__name__: w for f, w in lf.parse_mix("binary=2,grpc=0,chat").items()}
try:
    lf.parse_mix("nope=1")
    bad = None
except ValueError as e:
    bad = str(e)
targets = [lf.grpc_target("http://example.com:8000"), lf.grpc_target("10.0.0.2:8000"), lf.grpc_target(None)]
print(json.dumps({"users": sorted(users), "weights": {n: c.weight for n, c in users.items()}, "tags": tags,
                  "mixed": len(users["MixedUser"].tasks), "mix": mix, "bad": bad, "targets": targets}))
"""


def test_locustfile_classes_tags_and_knobs() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GRPC_TARGET", None)
    env.pop("LOCUST_MIX", None)
    out = subprocess.run([_locust_python(), "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["users"] == sorted(["BinaryUser", "JsonUser", "GrpcUser", "ClassifyUser", "DetectUser",
                                   "TranscribeUser", "ChatUser", "MixedUser"])
    assert all(w >= 1 for w in got["weights"].values())
    assert got["tags"]["GrpcUser"] == ["grpc", "v2"] and got["tags"]["ChatUser"] == ["chat"]
    assert set(got["tags"]["MixedUser"]) == {"v2", "binary", "grpc", "classify", "detect", "audio", "chat"}
    assert got["mixed"] == 4 + 4 + 3 + 2 + 1 + 2  # Locust expands the weights into the task list
    assert got["mix"] == {"v2_binary": 2, "chat": 1} and "unknown task 'nope'" in got["bad"]
    assert got["targets"] == ["example.com:8001", "10.0.0.2:8001", "127.0.0.1:8001"]
