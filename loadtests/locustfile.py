"""Locust scenarios, one user class per endpoint family, plus a weighted mix.

For users who want Locust's web UI, ramp-up shapes or distributed workers. The figures in
``docs/benchmarks.md`` come from ``loadtests.bench`` instead (one generator for every
server, on the same cores). ``docs/locust.md`` has the commands and a measured example.

=================  ==========================================================  ======
class              requests                                                    weight
=================  ==========================================================  ======
``BinaryUser``     v2 HTTP, binary tensor extension (what ``tritonclient.http``     4
                   sends: JSON header + raw FP32, ``Inference-Header-Content-
                   Length``) to ``digits``
``JsonUser``       v2 HTTP, plain JSON body (``"data": [...]``) to ``digits``       1
``GrpcUser``       v2 gRPC ``ModelInfer`` (``tritonclient.grpc``'s generated        4
                   stub, grpcio patched for gevent), reported through
                   ``events.request.fire``
``ClassifyUser``   ``POST /v1/classify``: scikit-learn's digits drawn as PNG/JPEG   3
                   pages, multipart upload
``DetectUser``     ``POST /v1/detect``: procedural scenes (``models/shapes_data``)  2
                   as JPEG, multipart upload
``TranscribeUser`` ``POST /v1/audio/transcriptions``: a sentence spoken by           1
                   espeak-ng (a tone, with a warning, when it is missing)
``ChatUser``       ``POST /v1/chat/completions``, ``stream: true`` to ``textgen``:     2
                   the request row times the whole stream; a ``METRIC`` row
                   ``chat TTFT`` times the first content token (its average size
                   is completion tokens per reply); tokens are summed at the end
``MixedUser``      one user doing all of the above, task weights ``LOCUST_MIX``     1
                   (default ``binary=4,grpc=4,classify=3,detect=2,audio=1,chat=2``)
=================  ==========================================================  ======

Name the classes to run (several split the users by ``weight``); every task is tagged
(``v2``, ``binary``, ``json``, ``grpc``, ``classify``, ``detect``, ``audio``, ``chat``), so
``MixedUser --tags grpc chat`` keeps just those. The checks make a wrong answer (a shape,
a missing ``[DONE]``, an empty transcript) a failure, not only a non-200.

    .venv/bin/python -m server.cli models build-default --out /tmp/repo
    .venv/bin/python -m server.cli serve --model-repository /tmp/repo --http-port 8000 --grpc-port 8001 &
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 30s --csv /tmp/run MixedUser

Checked with locust 2.47.0 (in its own venv, not the shared one): 0 failures for every class.

Knobs (environment): ``DIGITS_MODEL`` (``digits``), ``DIGITS_BATCH`` (rows per v2 request,
1), ``GRPC_TARGET`` (``host:port``; default the ``--host`` machine, port ``GRPC_PORT``,
8001), ``CLASSIFY_MODEL`` (``digits_classify``), ``DETECT_MODEL`` (``shapes_detect``),
``SPEECH_MODEL`` (``speech``), ``CHAT_MODEL`` (``textgen``), ``CHAT_MAX_TOKENS`` (32),
``LOCUST_MIX``. Needs numpy, Pillow, scikit-learn (digits; Pillow's font without it) and,
for gRPC, grpcio + tritonclient[grpc]; payloads come from ``loadtests/locust_payloads.py``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from functools import cache
from urllib.parse import urlsplit

from gevent.lock import RLock
from locust import FastHttpUser, HttpUser, User, events, tag
from locust.clients import HttpSession

try:  # imported as loadtests.locustfile (repository root on the path) or by Locust from its folder
    from loadtests import locust_payloads as payloads
except ImportError:
    import locust_payloads as payloads

try:  # gRPC is optional: without it only the gRPC task fails, saying why
    import grpc
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()  # after Locust's gevent monkey-patching, before any channel exists
    from tritonclient.grpc import service_pb2_grpc
    GRPC_MISSING = ""
except ImportError as exc:  # pragma: no cover - depends on the Locust venv
    grpc = None
    GRPC_MISSING = f"gRPC needs grpcio and tritonclient[grpc] in Locust's environment ({exc})"

log = logging.getLogger(__name__)

MODEL = os.environ.get("DIGITS_MODEL", "digits")
BATCH = int(os.environ.get("DIGITS_BATCH", "1"))
PATH = f"/v2/models/{MODEL}/infer"
GRPC_PORT = int(os.environ.get("GRPC_PORT", "8001"))
CLASSIFY_MODEL = os.environ.get("CLASSIFY_MODEL", "digits_classify")
DETECT_MODEL = os.environ.get("DETECT_MODEL", "shapes_detect")
SPEECH_MODEL = os.environ.get("SPEECH_MODEL", "speech")
CHAT_MODEL = os.environ.get("CHAT_MODEL", "textgen")
CHAT_MAX_TOKENS = int(os.environ.get("CHAT_MAX_TOKENS", "32"))
CHAT_PATH = "/v1/chat/completions"
DEFAULT_MIX = "binary=4,grpc=4,classify=3,detect=2,audio=1,chat=2"

_X = payloads.digits_tensor(BATCH)
_BINARY, _HEADER_LEN = payloads.binary_body(_X)
_JSON = payloads.json_body(_X)
binary_body = payloads.binary_body  # kept importable from here


# ---------------------------------------------------------------- payloads, built once per process

_lock = RLock()  # greenlets may ask at once; espeak-ng yields while it runs


def _once(build):
    built = cache(build)

    def get():
        with _lock:
            return built()
    return get


@_once
def _grpc_request():
    return payloads.grpc_infer_request(_X, MODEL)


@_once
def _classify_bodies() -> list[tuple[bytes, str, int]]:
    out = []
    for image, label in payloads.digit_images(32):
        name, kind = payloads.image_kind(image)
        body, content_type = payloads.multipart_body({"model": CLASSIFY_MODEL, "top_k": "3"}, {"file": (name, image, kind)})
        out.append((body, content_type, label))
    return out


@_once
def _detect_bodies() -> list[tuple[bytes, str, tuple[int, int]]]:
    out = []
    for image, _, size in payloads.scene_images(8):
        name, kind = payloads.image_kind(image)
        body, content_type = payloads.multipart_body({"model": DETECT_MODEL}, {"file": (name, image, kind)})
        out.append((body, content_type, size))
    return out


@_once
def _speech_body() -> tuple[bytes, str]:
    wav, source = payloads.speech_wav()
    if source != "espeak-ng":
        log.warning("espeak-ng is not installed: /v1/audio/transcriptions gets a %.1f s tone, not speech",
                    payloads.wav_seconds(wav))
    return payloads.multipart_body({"model": SPEECH_MODEL, "response_format": "json"},
                                   {"file": ("speech.wav", wav, "audio/wav")})


@_once
def _chat_bodies() -> list[bytes]:
    return payloads.chat_bodies(CHAT_MODEL, CHAT_MAX_TOKENS)


# ---------------------------------------------------------------- counters printed at the end (per process)

TALLY = {"chat_streams": 0, "chat_tokens": 0, "chat_stream_s": 0.0, "classified": 0, "classified_right": 0}
_started = [time.perf_counter()]


@events.test_start.add_listener
def _reset(**_kwargs) -> None:
    TALLY.update(chat_streams=0, chat_tokens=0, chat_stream_s=0.0, classified=0, classified_right=0)
    _started[0] = time.perf_counter()


@events.test_stop.add_listener
def _report(**_kwargs) -> None:
    elapsed = max(time.perf_counter() - _started[0], 1e-9)
    if TALLY["chat_streams"]:
        log.info("chat: %d streams, %d completion tokens, %.1f tokens/s over %.1f s, %.1f tokens/s per stream",
                 TALLY["chat_streams"], TALLY["chat_tokens"], TALLY["chat_tokens"] / elapsed, elapsed,
                 TALLY["chat_tokens"] / max(TALLY["chat_stream_s"], 1e-9))
    if TALLY["classified"]:
        log.info("classify: top-1 right on %d of %d drawn digits", TALLY["classified_right"], TALLY["classified"])


# ---------------------------------------------------------------- checks


def _check_binary(response) -> str | None:
    length = int(response.headers.get("Inference-Header-Content-Length", "-1"))
    if length < 0:
        return "no Inference-Header-Content-Length in the answer"
    (out,) = json.loads(response.content[:length])["outputs"]
    if out["shape"] != [BATCH, 10] or len(response.content) - length != BATCH * 10 * 4:
        return f"unexpected output {out}"
    return None


def _check_json(response) -> str | None:
    (out,) = response.json()["outputs"]
    if out["shape"] != [BATCH, 10] or len(out["data"]) != BATCH * 10:
        return f"unexpected output shape {out['shape']}"
    return None


def _check_grpc(reply) -> str | None:
    if len(reply.outputs) != 1 or list(reply.outputs[0].shape) != [BATCH, 10]:
        return f"unexpected outputs {[(o.name, list(o.shape)) for o in reply.outputs]}"
    if len(reply.raw_output_contents) != 1 or len(reply.raw_output_contents[0]) != BATCH * 10 * 4:
        return "raw_output_contents is not [BATCH, 10] FP32"
    return None


def _post_checked(user, path: str, body: bytes, content_type: str, name: str, check) -> None:
    """POST through Locust's client; a non-200 or ``check(response) -> problem`` fails it."""
    with user.client.post(path, data=body, headers={"Content-Type": content_type}, name=name,
                          catch_response=True) as response:
        try:
            problem = f"HTTP {response.status_code}: {response.text[:200]}" if response.status_code != 200 \
                else check(response)
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"unreadable answer: {exc!r}"
        if problem:
            response.failure(problem)


# ---------------------------------------------------------------- tasks (plain functions, shared by the classes)


@tag("v2", "binary")
def v2_binary(user) -> None:
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(_HEADER_LEN)}
    with user.client.post(PATH, data=_BINARY, headers=headers, name=f"{PATH} [binary]",
                          catch_response=True) as response:
        problem = f"HTTP {response.status_code}" if response.status_code != 200 else _check_binary(response)
        if problem:
            response.failure(problem)


@tag("v2", "json")
def v2_json(user) -> None:
    with user.client.post(PATH, data=_JSON, headers={"Content-Type": "application/json"},
                          name=f"{PATH} [json]", catch_response=True) as response:
        problem = f"HTTP {response.status_code}" if response.status_code != 200 else _check_json(response)
        if problem:
            response.failure(problem)


def grpc_target(host: str | None) -> str:
    """``GRPC_TARGET``, else the ``--host`` machine at ``GRPC_PORT``."""
    if os.environ.get("GRPC_TARGET"):
        return os.environ["GRPC_TARGET"]
    if not host:
        return f"127.0.0.1:{GRPC_PORT}"
    hostname = urlsplit(host if "://" in host else f"//{host}").hostname or "127.0.0.1"
    return f"{hostname}:{GRPC_PORT}"


def _grpc_stub(user):
    if getattr(user, "_grpc_stub", None) is None:
        user._grpc_channel = grpc.insecure_channel(grpc_target(user.host))
        user._grpc_stub = service_pb2_grpc.GRPCInferenceServiceStub(user._grpc_channel)
    return user._grpc_stub


def _close_grpc(user) -> None:
    channel = getattr(user, "_grpc_channel", None)
    if channel is not None:
        channel.close()
        user._grpc_channel = user._grpc_stub = None


@tag("v2", "grpc")
def v2_grpc(user) -> None:
    """One ``ModelInfer``, timed here and reported as request type ``grpc`` (Locust's
    pattern for clients that are not HTTP)."""
    name = f"inference.GRPCInferenceService/ModelInfer [{MODEL}]"
    start_time, start = time.time(), time.perf_counter()
    exception, length = None, 0
    if grpc is None:
        exception = RuntimeError(GRPC_MISSING)
    else:
        try:
            reply = _grpc_stub(user).ModelInfer(_grpc_request(), timeout=30)
            length = reply.ByteSize()
            problem = _check_grpc(reply)
            exception = AssertionError(problem) if problem else None
        except grpc.RpcError as exc:
            exception = RuntimeError(f"{exc.code().name}: {exc.details()}")
    user.environment.events.request.fire(
        request_type="grpc", name=name, start_time=start_time, response_time=(time.perf_counter() - start) * 1000,
        response_length=length, response=None, context=user.context(), exception=exception)


@tag("classify")
def classify(user) -> None:
    body, content_type, label = random.choice(_classify_bodies())

    def check(response) -> str | None:
        predictions = response.json()["predictions"]
        if len(predictions) != 3 or not all({"label", "index", "score"} <= set(p) for p in predictions):
            return f"unexpected predictions {predictions}"
        TALLY["classified"] += 1
        TALLY["classified_right"] += predictions[0]["label"] == str(label)
        return None

    _post_checked(user, "/v1/classify", body, content_type, "/v1/classify", check)


@tag("detect")
def detect(user) -> None:
    body, content_type, (width, height) = random.choice(_detect_bodies())

    def check(response) -> str | None:
        answer = response.json()
        if (answer["width"], answer["height"]) != (width, height) or not isinstance(answer["detections"], list):
            return f"unexpected answer {str(answer)[:200]}"
        return None

    _post_checked(user, "/v1/detect", body, content_type, "/v1/detect", check)


@tag("audio")
def transcribe(user) -> None:
    body, content_type = _speech_body()

    def check(response) -> str | None:
        return None if response.json().get("text", "").strip() else "an empty transcript"

    _post_checked(user, "/v1/audio/transcriptions", body, content_type, "/v1/audio/transcriptions", check)


def _sse_session(user) -> HttpSession:
    """A requests-based session: its ``iter_content(None)`` hands over each chunk as it
    arrives (FastHttpUser's ``read(n)`` waits for ``n`` bytes, which would delay TTFT)."""
    if isinstance(user.client, HttpSession):
        return user.client
    if getattr(user, "_sse", None) is None:
        user._sse = HttpSession(base_url=user.host, request_event=user.environment.events.request, user=user)
    return user._sse


@tag("chat")
def chat(user) -> None:
    """A streamed chat completion. The request row's time is the whole stream; a
    ``METRIC`` / ``chat TTFT`` row times the first non-empty content delta, with the
    completion tokens (from the ``include_usage`` chunk) as its size."""
    body = random.choice(_chat_bodies())
    start = time.perf_counter()
    ttft_ms = None
    usage, problem, size = None, None, 0
    with _sse_session(user).post(CHAT_PATH, data=body, headers={"Content-Type": "application/json"},
                                 name=f"{CHAT_PATH} [stream]", stream=True, catch_response=True) as response:
        if response.status_code != 200:
            response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            return
        reader = payloads.SseReader()
        try:
            for chunk in response.iter_content(chunk_size=None):
                size += len(chunk)
                for event in reader.feed(chunk):
                    if "error" in event:
                        problem = problem or f"stream error: {event['error']}"
                    for choice in event.get("choices") or ():
                        if ttft_ms is None and (choice.get("delta") or {}).get("content"):
                            ttft_ms = (time.perf_counter() - start) * 1000
                    usage = event.get("usage") or usage
        except Exception as exc:  # a connection cut mid-stream
            problem = f"stream broken: {exc!r}"
        total_s = time.perf_counter() - start
        response.request_meta["response_time"] = total_s * 1000  # the whole stream, not just the headers
        response.request_meta["response_length"] = size
        tokens = int((usage or {}).get("completion_tokens", 0))
        if problem is None:
            problem = ("no data: [DONE]" if not reader.done else "no content token" if ttft_ms is None
                       else "no usage chunk" if not tokens else None)
        if problem:
            response.failure(problem)
            return
    TALLY["chat_streams"] += 1
    TALLY["chat_tokens"] += tokens
    TALLY["chat_stream_s"] += total_s
    user.environment.events.request.fire(
        request_type="METRIC", name="chat TTFT", start_time=time.time() - total_s, response_time=ttft_ms,
        response_length=tokens, response=None, context=user.context(), exception=None)


# ---------------------------------------------------------------- user classes


class BinaryUser(FastHttpUser):
    weight = 4
    tasks = [v2_binary]


class JsonUser(FastHttpUser):
    weight = 1
    tasks = [v2_json]


class GrpcUser(User):
    """Not HTTP: ``--host`` only names the machine (see ``grpc_target``)."""

    weight = 4
    tasks = [v2_grpc]

    def on_stop(self) -> None:
        _close_grpc(self)


class ClassifyUser(FastHttpUser):
    weight = 3
    tasks = [classify]


class DetectUser(FastHttpUser):
    weight = 2
    tasks = [detect]


class TranscribeUser(FastHttpUser):
    weight = 1
    tasks = [transcribe]


class ChatUser(HttpUser):
    weight = 2
    tasks = [chat]


MIX_TASKS = {"binary": v2_binary, "json": v2_json, "grpc": v2_grpc, "classify": classify, "detect": detect,
             "audio": transcribe, "chat": chat}


def parse_mix(text: str) -> dict:
    """``"binary=4,grpc=4,chat=2"`` -> {task function: weight}; zero weights are dropped."""
    mix = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, weight = item.partition("=")
        if key.strip() not in MIX_TASKS:
            raise ValueError(f"LOCUST_MIX: unknown task {key!r}; known: {', '.join(MIX_TASKS)}")
        if int(weight or 1) > 0:
            mix[MIX_TASKS[key.strip()]] = int(weight or 1)
    if not mix:
        raise ValueError("LOCUST_MIX gives no task a weight")
    return mix


class MixedUser(FastHttpUser):
    """Every family from one user, weighted by ``LOCUST_MIX``; chat streams over a
    requests session of its own (see ``_sse_session``)."""

    weight = 1
    tasks = parse_mix(os.environ.get("LOCUST_MIX", DEFAULT_MIX))

    def on_stop(self) -> None:
        _close_grpc(self)
