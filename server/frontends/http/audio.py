"""``POST /v1/audio/transcriptions``, OpenAI-compatible, over the transcription models.

A model offers itself with ``parameters { key: "task" value: { string_value: "transcription" } }``
and the transcription scheduler's tensors (``audio`` in; ``text`` and ``transcript`` out;
see ``server/repository/transcriber.py``).

Multipart fields, as the ``openai`` SDK sends them: ``file`` (required), ``model``,
``language`` (``en`` or none: the shipped recognizer knows English only), ``prompt`` and
``temperature`` (accepted, no effect: decoding is deterministic), ``response_format``
(``json``, ``text``, ``verbose_json``, ``srt``, ``vtt``), ``timestamp_granularities[]``
(``segment``, ``word``; with ``verbose_json``), ``chunking_strategy`` (``auto``, or
``server_vad`` with ``threshold``, ``prefix_padding_ms``, ``silence_duration_ms``, as JSON
or as ``chunking_strategy[...]`` fields), ``include[]`` (``logprobs``: per-word confidence
from the CTC posteriors), ``stream`` (server-sent events ``transcript.text.delta`` per
chunk, then ``transcript.text.done``), and deepserve's ``beam_width`` (0: greedy).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from server.core.errors import DeepserveError, InvalidInput
from server.core.types import InferenceRequest, InferenceResponse
from server.frontends.http.infer import first_response, until_disconnect
from server.frontends.http.responses import event_stream, json_response, sse_event
from server.pipelines import ctc
from server.service import InferenceService, ModelMetadata

router = APIRouter(tags=["openai"])

TASK = "transcription"
DEFAULT_MODEL = "speech"
FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("segment", "word")
VAD_FIELDS = ("threshold", "prefix_padding_ms", "silence_duration_ms")
KNOWN = {"file", "model", "language", "prompt", "temperature", "response_format", "timestamp_granularities[]",
         "chunking_strategy", "include[]", "stream", "beam_width"}


def _model(service: InferenceService, name: Any) -> ModelMetadata:
    if not isinstance(name, str) or not name:
        raise InvalidInput("'model' must name a transcription model")
    meta = service.model_metadata(name)
    if meta.task != TASK or "audio" not in {i.name for i in meta.inputs}:
        raise InvalidInput(f"model '{name}' is not a transcription model (task '{meta.task or 'none'}'); "
                           "POST /v1/audio/transcriptions serves models whose task is transcription")
    return meta


def _chunking(form: dict[str, list[str]]) -> str | None:
    """OpenAI's chunking_strategy as the JSON the scheduler takes (None: its defaults)."""
    nested = {key[len("chunking_strategy["):-1]: values[-1] for key, values in form.items()
              if key.startswith("chunking_strategy[") and key.endswith("]")}
    value = (form.get("chunking_strategy") or [None])[-1]
    if value in (None, "", "auto") and not nested:
        return None
    if value not in (None, "", "auto"):
        try:
            nested = json.loads(value)
        except ValueError:
            raise InvalidInput("chunking_strategy must be \"auto\" or a server_vad object") from None
        if not isinstance(nested, dict):
            raise InvalidInput("chunking_strategy must be \"auto\" or a server_vad object")
    if nested.get("type", "server_vad") != "server_vad":
        raise InvalidInput(f"chunking_strategy type must be server_vad, not {nested.get('type')!r}")
    unknown = sorted(set(nested) - {"type", *VAD_FIELDS})
    if unknown:
        raise InvalidInput(f"chunking_strategy has unknown field(s) {unknown}; known: {list(VAD_FIELDS)}")
    return json.dumps({k: v for k, v in nested.items() if k != "type"})


def _flag(value: str | None, key: str) -> bool:
    if value in (None, "", "false", "False", "0"):
        return False
    if value in ("true", "True", "1"):
        return True
    raise InvalidInput(f"'{key}' must be true or false, not {value!r}")


def _options(form: dict[str, list[str]]) -> dict[str, Any]:
    one = {key: values[-1] for key, values in form.items()}
    unknown = sorted(k for k in set(form) - KNOWN if not k.startswith("chunking_strategy["))
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}")
    fmt = one.get("response_format") or "json"
    if fmt not in FORMATS:
        raise InvalidInput(f"response_format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    granularities = form.get("timestamp_granularities[]", [])
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise InvalidInput(f"timestamp_granularities must be segment and/or word, not {bad}")
    if granularities and fmt != "verbose_json":
        raise InvalidInput("timestamp_granularities needs response_format verbose_json")
    include = form.get("include[]", [])
    if [i for i in include if i != "logprobs"]:
        raise InvalidInput(f"include takes only logprobs, not {include}")
    language = one.get("language")
    if language not in (None, "", "en", "english"):
        raise InvalidInput(f"language {language!r} is not offered: the model transcribes English ('en')")
    temperature = one.get("temperature")
    if temperature not in (None, ""):
        try:
            t = float(temperature)
        except ValueError:
            raise InvalidInput("'temperature' must be a number between 0 and 1") from None
        if not 0.0 <= t <= 1.0:
            raise InvalidInput("'temperature' must be a number between 0 and 1")
    beam = one.get("beam_width")
    if beam not in (None, ""):
        try:
            beam = int(beam)
        except ValueError:
            raise InvalidInput("'beam_width' must be an integer (0: greedy)") from None
    stream = _flag(one.get("stream"), "stream")
    if stream and fmt not in ("json", "text"):
        raise InvalidInput("stream=true gives text events: response_format must be json or text")
    return {"format": fmt, "granularities": granularities or ["segment"], "logprobs": bool(include),
            "chunking": _chunking(form), "beam": None if beam in (None, "") else beam, "stream": stream,
            "model": one.get("model") or DEFAULT_MODEL}


async def _form(request: Request) -> tuple[bytes, dict[str, list[str]]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("send multipart/form-data with the recording as the 'file' field (as OpenAI's API takes it)")
    limit = request.app.state.settings.max_request_bytes
    form = await request.form(max_files=1, max_part_size=limit)
    files = [part for part in form.getlist("file") if not isinstance(part, str)]
    if len(files) != 1:
        raise InvalidInput("send exactly one recording as the multipart 'file' field")
    data = await files[0].read()
    if not data:
        raise InvalidInput("the uploaded file is empty")
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(key, []).append(value)
    return data, fields


def _request(meta: ModelMetadata, data: bytes, options: dict) -> InferenceRequest:
    inputs = {"audio": np.array([data], dtype=object)}
    declared = {i.name for i in meta.inputs}
    if options["chunking"] is not None:
        if "chunking" not in declared:
            raise InvalidInput(f"model '{meta.name}' takes no chunking_strategy")
        inputs["chunking"] = np.array([options["chunking"].encode()], dtype=object)
    if options["beam"] is not None:
        if "beam_width" not in declared:
            raise InvalidInput(f"model '{meta.name}' takes no beam_width")
        inputs["beam_width"] = np.array([options["beam"]], dtype=np.int32)
    return InferenceRequest(meta.name, inputs)


def transcript_of(response: InferenceResponse) -> dict:
    raw = next(t.data for t in response.outputs if t.name == "transcript").reshape(-1)[0]
    return json.loads(raw)


def _words(transcript: dict) -> tuple[ctc.Word, ...]:
    return tuple(ctc.Word(w["word"], w["start"], w["end"], w["confidence"]) for w in transcript["words"])


def _logprobs(transcript: dict) -> list[dict]:
    """Per-word confidence as OpenAI's logprobs entries."""
    return [{"token": w["word"], "logprob": math.log(max(w["confidence"], 1e-12)), "bytes": list(w["word"].encode())}
            for w in transcript["words"]]


def _verbose(transcript: dict, granularities: list[str]) -> dict:
    body: dict[str, Any] = {"task": "transcribe", "language": "english", "duration": transcript["duration"],
                            "text": transcript["text"], "usage": {"type": "duration", "seconds": transcript["duration"]}}
    decoded = ctc.Decoded(transcript["text"], _words(transcript))
    if "segment" in granularities:
        body["segments"] = [
            {"id": s.id, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": [],
             "temperature": 0.0, "avg_logprob": _avg_logprob(s.words), "compression_ratio": 1.0,
             "no_speech_prob": 0.0}
            for s in ctc.segments(decoded)
        ]
    if "word" in granularities:
        body["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"]} for w in transcript["words"]]
    return body


def _avg_logprob(words) -> float:
    return float(np.mean([math.log(max(w.confidence, 1e-12)) for w in words])) if words else 0.0


def render(transcript: dict, options: dict) -> Response:
    fmt = options["format"]
    if fmt == "text":
        return PlainTextResponse(transcript["text"] + "\n")
    if fmt in ("srt", "vtt"):
        segments = ctc.segments(ctc.Decoded(transcript["text"], _words(transcript)))
        text = ctc.to_srt(segments) if fmt == "srt" else ctc.to_vtt(segments)
        return PlainTextResponse(text, media_type="text/vtt" if fmt == "vtt" else "text/plain")
    if fmt == "verbose_json":
        return json_response(_verbose(transcript, options["granularities"]))
    body: dict[str, Any] = {"text": transcript["text"], "usage": {"type": "duration", "seconds": transcript["duration"]}}
    if options["logprobs"]:
        body["logprobs"] = _logprobs(transcript)
    return json_response(body)


async def transcriptions(request: Request) -> Response:
    """Failures are counted once: a body that does not parse without a model, the rest
    under the model it names."""
    service: InferenceService = request.app.state.service
    with service.accounting("", admit=False):
        data, form = await _form(request)
        options = _options(form)
    with service.accounting(options["model"]):
        meta = _model(service, options["model"])
        infer = _request(meta, data, options)
        if options["stream"]:
            return await _stream(request, service, infer, options)
        if meta.decoupled:
            raise InvalidInput(f"model '{meta.name}' streams: call it with stream=true")
        response = await until_disconnect(request.receive, service.infer(infer))
    return render(transcript_of(response), options)


async def _stream(request: Request, service: InferenceService, infer: InferenceRequest,
                  options: dict) -> Response:
    """``transcript.text.delta`` per chunk as it is decoded, then ``transcript.text.done``.
    A model that does not stream (its stream is its one response) gives one delta and the done event."""
    responses = service.infer_stream(infer)
    first = await first_response(request.receive, responses)

    async def events() -> AsyncIterator[bytes]:
        said = False
        try:
            response = first
            while response is not None:
                transcript = transcript_of(response)
                if transcript["final"] and not said and transcript["text"]:  # a model that does not stream
                    said = True
                    yield sse_event({"type": "transcript.text.delta", "delta": transcript["text"]})
                if transcript["final"]:
                    done: dict[str, Any] = {"type": "transcript.text.done", "text": transcript["text"],
                                            "usage": {"type": "duration", "seconds": transcript["duration"]}}
                    if options["logprobs"]:
                        done["logprobs"] = _logprobs(transcript)
                    yield sse_event(done)
                    break
                if transcript["text"]:
                    delta = (" " if said else "") + transcript["text"]
                    said = True
                    yield sse_event({"type": "transcript.text.delta", "delta": delta})
                response = await anext(responses, None)
        except DeepserveError as exc:
            yield sse_event({"type": "error", "error": {"message": exc.message, "type": "server_error"}})
        finally:
            await responses.aclose()

    return event_stream(events())


router.add_api_route(
    "/v1/audio/transcriptions", transcriptions, methods=["POST"], summary="Transcribe a recording (OpenAI-compatible)",
    description="multipart: `file`, `model`, `response_format` (json, text, verbose_json, srt, vtt), "
    "`timestamp_granularities[]`, `chunking_strategy`, `include[]`, `stream`; deepserve's `beam_width`.",
)
