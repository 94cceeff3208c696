"""Request bodies for ``loadtests/locustfile.py``, generated locally (nothing is downloaded).

Importable without Locust (``tests/unit/test_locustfile.py`` checks every builder here):

* :func:`binary_body` / :func:`json_body`  v2 inference bodies for the ``digits`` classifier;
* :func:`grpc_infer_request`               the same tensor as a ``ModelInferRequest`` (needs tritonclient);
* :func:`digit_images`                     scikit-learn's bundled digits drawn as PNG pages (``/v1/classify``);
* :func:`scene_images`                     procedural detection scenes, ``models/shapes_data.py`` (``/v1/detect``);
* :func:`speech_wav`                       a spoken sentence from espeak-ng, or a tone when it is missing
                                           (``/v1/audio/transcriptions``);
* :func:`chat_bodies` / :class:`SseReader` streaming ``/v1/chat/completions`` requests and a reader
                                           for their server-sent events;
* :func:`multipart_body`                   a ``multipart/form-data`` upload as bytes (FastHttpUser has no ``files=``).

Needs numpy and Pillow; scikit-learn for the digits (a digit drawn with Pillow's font when
it is missing); espeak-ng on PATH for speech.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- v2 tensors (digits)


def digits_tensor(batch: int = 1, seed: int = 0) -> np.ndarray:
    """FP32 ``[batch, 1, 8, 8]`` in the digits set's pixel range (0..16)."""
    return np.random.default_rng(seed).random((batch, 1, 8, 8), dtype=np.float32) * 16.0


def binary_body(x: np.ndarray, input_name: str = "input") -> tuple[bytes, int]:
    """(body, JSON header length), byte for byte what tritonclient.http builds."""
    header = json.dumps({
        "inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }, separators=(",", ":")).encode()
    return header + np.ascontiguousarray(x, dtype=np.float32).tobytes(), len(header)


def json_body(x: np.ndarray, input_name: str = "input") -> bytes:
    """The plain v2 JSON body (``"data": [...]``)."""
    return json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()


def grpc_infer_request(x: np.ndarray, model: str, input_name: str = "input", output_name: str = "logits"):
    """``inference.ModelInferRequest`` with the tensor in ``raw_input_contents`` (what
    ``tritonclient.grpc`` sends). Imports ``tritonclient.grpc.service_pb2`` (grpcio, protobuf)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = input_name, "FP32"
    tensor.shape.extend(x.shape)
    request.outputs.add().name = output_name
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return request


# ---------------------------------------------------------------- images


def _encode(page: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(page, 0.0, 1.0) * 255).astype(np.uint8), "L").save(buffer, format=fmt)
    return buffer.getvalue()


def _font_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 8) digits in 0..1 drawn with Pillow's built-in font: the fallback without scikit-learn."""
    from PIL import Image, ImageDraw

    labels = rng.integers(0, 10, n)
    out = np.zeros((n, 8, 8), np.float32)
    for i, label in enumerate(labels):
        canvas = Image.new("L", (8, 8), 0)
        ImageDraw.Draw(canvas).text((1, -2), str(int(label)), fill=255)
        out[i] = np.asarray(canvas, np.float32) / 255.0
    return out, labels.astype(np.int64)


def digit_images(n: int = 32, seed: int = 0) -> list[tuple[bytes, int]]:
    """``n`` (image bytes, true digit): scikit-learn's bundled 8x8 digits drawn as pages a
    client would upload: scaled up 4..12x, a random border, dark ink on light paper for
    half of them; PNG, every third one JPEG."""
    rng = np.random.default_rng(seed)
    try:
        from sklearn.datasets import load_digits  # bundled with scikit-learn, not downloaded
    except ImportError:
        images, labels = _font_digits(n, rng)
    else:
        digits = load_digits()
        pick = rng.choice(len(digits.target), n, replace=False)
        images, labels = digits.images[pick].astype(np.float32) / 16.0, digits.target[pick].astype(np.int64)
    out = []
    for i, (digit, label) in enumerate(zip(images, labels, strict=True)):
        scale = int(rng.integers(4, 13))
        big = np.pad(np.kron(digit, np.ones((scale, scale), np.float32)), int(rng.integers(scale, 4 * scale)))
        page = 1.0 - big if i % 2 else big
        out.append((_encode(page, "JPEG" if i % 3 == 2 else "PNG"), int(label)))
    return out


def _shapes_data():
    """``models.shapes_data``, imported from the repository even when Locust's path lacks it."""
    try:
        from models import shapes_data
        return shapes_data
    except ImportError:
        spec = importlib.util.spec_from_file_location("_deepserve_shapes_data", REPO / "models" / "shapes_data.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look the module up while the class is built
        spec.loader.exec_module(module)
        return module


def scene_images(n: int = 8, seed: int = 7_000) -> list[tuple[bytes, int, tuple[int, int]]]:
    """``n`` (JPEG bytes, number of labelled objects, (width, height)): procedural scenes of
    circles, rectangles and triangles on cluttered backgrounds, 320..640 px a side (a seed
    away from the detector's training and held-out seeds)."""
    shapes = _shapes_data()
    return [(shapes.scene_jpeg(s), len(s.labels), (s.image.shape[1], s.image.shape[0]))
            for s in shapes.make_scenes(seed, n)]


# ---------------------------------------------------------------- audio

SPEECH_TEXT = "the quick brown fox jumps over the lazy dog seven times"


def _tone_wav(seconds: float = 3.0, rate: int = 16000) -> bytes:
    """A 16-bit mono WAV: a 220 Hz tone with a syllable-like envelope (not speech)."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 3.0 * t))
    samples = 0.3 * envelope * np.sin(2 * np.pi * 220.0 * t)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def speech_wav(text: str = SPEECH_TEXT, voice: str = "en-us") -> tuple[bytes, str]:
    """(WAV bytes, source): ``espeak-ng -w`` speaking ``text`` (22.05 kHz mono; the server
    resamples), source ``"espeak-ng"``; without espeak-ng a 3 s tone, source ``"tone"``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return _tone_wav(), "tone"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-w", str(out), text], check=True, capture_output=True, timeout=60)
        return out.read_bytes(), "espeak-ng"


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


# ---------------------------------------------------------------- chat

CHAT_PROMPTS = (
    "What does json.loads do with a string that is not valid JSON?",
    "Explain the difference between a list and a tuple.",
    "How do I read a file line by line?",
    "Describe what the os.path module is for.",
    "When should a class define __repr__?",
    "What does the with statement do with a file object?",
    "Summarise what a generator function returns.",
    "How is a dictionary different from a set?",
)


def chat_bodies(model: str = "textgen", max_tokens: int = 32, seed: int = 0) -> list[bytes]:
    """Streaming chat requests, one per prompt: ``stream`` with ``include_usage`` (the
    last event carries the token counts), sampled at temperature 0.8 with a fixed seed."""
    return [json.dumps({
        "model": model,
        "messages": [{"role": "system", "content": "You answer questions about Python's standard library."},
                     {"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0.8, "seed": seed + i,
        "stream": True, "stream_options": {"include_usage": True},
    }).encode() for i, prompt in enumerate(CHAT_PROMPTS)]


class SseReader:
    """Server-sent events from a byte stream fed in arbitrary chunks.

    ``feed(chunk)`` returns the decoded JSON payloads of the ``data:`` events the chunk
    completed; ``done`` turns true at ``data: [DONE]``."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, chunk: bytes | str) -> list[Any]:
        self._buffer = (self._buffer + (chunk.encode() if isinstance(chunk, str) else chunk)).replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            data = b"\n".join(line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:"))
            if not data:
                continue
            if data == b"[DONE]":
                self.done = True
            else:
                events.append(json.loads(data))
        return events


# ---------------------------------------------------------------- multipart


def multipart_body(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]],
                   boundary: str = "deepserve-locust-boundary") -> tuple[bytes, str]:
    """(body, Content-Type) of a ``multipart/form-data`` upload, built once and sent as
    bytes (Locust's FastHttpUser takes no ``files=``). ``files``: field -> (filename,
    bytes, content type)."""
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, kind) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def image_kind(data: bytes) -> tuple[str, str]:
    """(file name, content type) for PNG or JPEG bytes."""
    return ("image.png", "image/png") if data.startswith(b"\x89PNG") else ("image.jpg", "image/jpeg")
