"""OpenAI-compatible text generation over the generation models: ``POST /v1/completions``,
``POST /v1/chat/completions``, and vLLM's ``POST /tokenize`` / ``POST /detokenize``.

The route tokenizes (the prompt, or the chat messages through the model's chat template)
and hands ``input_ids`` with the sampling parameters to the model's engine, always as a
token stream: ``stream=true`` forwards it as server-sent events (``data: {...}`` chunks,
``finish_reason`` on each choice's last, a usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``); otherwise it is
collected into one body. Usage reports ``prompt_tokens_details.cached_tokens`` from the
prefix cache.

Fields: OpenAI's (``model``, ``prompt`` / ``messages``, ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``,
``presence_penalty``, ``frequency_penalty``, ``logprobs``, ``top_logprobs``,
``response_format``, ``stream``, ``stream_options``, ``user``) and vLLM's (``top_k``,
``stop_token_ids``, ``ignore_eos``, ``priority``: lower runs first). What this server
cannot do (``tools``, ``logit_bias``, ``suffix``, ``best_of`` > ``n``, ``echo`` with
``logprobs``) is refused with a 400 naming the field.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.core.errors import DeepserveError, InvalidInput
from server.core.types import InferenceRequest, InferenceResponse
from server.frontends.http.body import read_json_object
from server.frontends.http.errors import status_for
from server.frontends.http.infer import deadline_from, first_response, until_disconnect
from server.frontends.http.openai import error_body
from server.frontends.http.responses import event_stream, json_response, sse_event
from server.pipelines.text import TextModel
from server.service import InferenceService

router = APIRouter(tags=["openai"])

DEFAULT_MODEL = "textgen"
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (chat: the rest of the context)
PASSED = ("temperature", "top_p", "top_k", "n", "stop", "seed", "presence_penalty", "frequency_penalty",
          "stop_token_ids", "ignore_eos", "priority", "response_format")
IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "modalities", "logit_bias",
           "prediction", "reasoning_effort")


@dataclass(slots=True)
class _Choice:
    index: int
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass(slots=True)
class _Usage:
    prompt: int = 0
    cached: int = 0
    completion: dict[int, int] = field(default_factory=dict)

    def body(self) -> dict:
        completion = sum(self.completion.values())
        return {"prompt_tokens": self.prompt, "completion_tokens": completion, "total_tokens": self.prompt + completion,
                "prompt_tokens_details": {"cached_tokens": self.cached}}


def _service(request: Request) -> InferenceService:
    return request.app.state.service


async def _json_body(request: Request) -> dict:
    body = await read_json_object(request.receive, request.headers, request.app.state.settings.max_request_bytes)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


def _text_model(service: InferenceService, body: dict) -> tuple[str, TextModel]:
    name = body.get("model", DEFAULT_MODEL)
    if not isinstance(name, str) or not name:
        raise InvalidInput("'model' must name a text-generation model")
    return name, service.text_model(name)


def _refuse_unsupported(body: dict, chat: bool) -> None:
    if body.get("tools") or body.get("functions"):
        raise InvalidInput("'tools' are not supported by this server")
    if body.get("logit_bias"):
        raise InvalidInput("'logit_bias' is not supported by this server")
    if not chat:
        if body.get("suffix") is not None:
            raise InvalidInput("'suffix' is not supported by this server")
        best_of = body.get("best_of")
        if best_of is not None and best_of != body.get("n", 1):
            raise InvalidInput("'best_of' must equal 'n' (or be left out)")
        if body.get("echo") and body.get("logprobs") is not None:
            raise InvalidInput("'echo' with 'logprobs' is not supported")


def _parameters(body: dict, chat: bool) -> dict[str, Any]:
    p = {key: body[key] for key in PASSED if body.get(key) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens",
                                                                                                  COMPLETIONS_MAX_TOKENS)
    if max_tokens is not None:
        p["max_tokens"] = max_tokens
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if chat:
        if logprobs is not None and not isinstance(logprobs, bool):
            raise InvalidInput("'logprobs' must be true or false")
        if top is not None and not logprobs:
            raise InvalidInput("'top_logprobs' needs 'logprobs': true")
        p["logprobs"] = bool(logprobs)
        if top is not None:
            p["top_logprobs"] = top
    elif logprobs is not None:  # /v1/completions: an integer, the number of top logprobs
        if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 5:
            raise InvalidInput("'logprobs' must be an integer from 0 to 5")
        p["logprobs"], p["top_logprobs"] = True, logprobs
    p["stream"] = True
    return p


def _prompt_ids(text_model: TextModel, body: dict, chat: bool) -> list[int]:
    codec = text_model.codec
    if chat:
        return codec.encode_chat(body.get("messages"), add_generation_prompt=body.get("add_generation_prompt", True))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return codec.encode(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise InvalidInput("'prompt' must be a string or a list of token ids (one prompt per request)")


def _request(name: str, ids: list[int], parameters: dict, headers) -> InferenceRequest:
    infer = InferenceRequest(name, {"input_ids": np.asarray(ids, dtype=np.int32)}, parameters=parameters)
    infer.deadline_s = deadline_from(headers)
    return infer


def _read(response: InferenceResponse) -> dict[str, np.ndarray]:
    return {t.name: t.data for t in response.outputs}


def _take(out: dict[str, np.ndarray], choices: dict[int, _Choice], usage: _Usage) -> tuple[_Choice, str, list[int], list]:
    """Fold one engine response into its choice; returns the choice and what this response added."""
    index = int(out["index"].reshape(-1)[0])
    choice = choices.setdefault(index, _Choice(index))
    text = out["text_output"].reshape(-1)[0]
    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    ids = out["token_ids"].reshape(-1).tolist()
    logprobs = out["logprobs"].reshape(-1).tolist()
    top_ids, top_lp = out["top_logprob_ids"], out["top_logprobs"]
    top = [list(zip(top_ids[i].tolist(), top_lp[i].tolist(), strict=True)) for i in range(len(ids))]
    choice.text.append(text)
    choice.token_ids += ids
    choice.logprobs += logprobs
    choice.top += top
    reason = out["finish_reason"].reshape(-1)[0]
    reason = reason.decode() if isinstance(reason, bytes) else str(reason)
    if reason:
        choice.finish_reason = reason
    usage.prompt = int(out["prompt_tokens"].reshape(-1)[0])
    usage.cached = int(out["cached_tokens"].reshape(-1)[0])
    usage.completion[index] = int(out["completion_tokens"].reshape(-1)[0])
    return choice, text, ids, list(zip(ids, logprobs, top, strict=True))


def _completion_logprobs(codec, entries: list, offset: int) -> dict:
    tokens = codec.token_texts([i for i, _, _ in entries])
    offsets, position = [], offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{codec.token_texts([t])[0]: lp for t, lp in top} for _, _, top in entries],
            "text_offset": offsets}


def _chat_logprobs(codec, entries: list) -> dict:
    def item(token_id: int, logprob: float) -> dict:
        text = codec.token_texts([token_id])[0]
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(t, lp), "top_logprobs": [item(i, v) for i, v in top]} for t, lp, top in entries]}


async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


async def chat_completions(request: Request) -> Response:
    return await _complete(request, chat=True)


async def _complete(request: Request, chat: bool) -> Response:
    service = _service(request)
    with service.accounting("", admit=False):
        body = await _json_body(request)
    name = body.get("model", DEFAULT_MODEL)
    with service.accounting(name if isinstance(name, str) else ""):
        name, text_model = _text_model(service, body)
        _refuse_unsupported(body, chat)
        if chat and "messages" not in body:
            raise InvalidInput("'messages' is required")
        if not chat and "prompt" not in body:
            raise InvalidInput("'prompt' is required")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidInput("'stream' must be true or false")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise InvalidInput("'stream_options' must be an object")
        parameters = _parameters(body, chat)
        ids = _prompt_ids(text_model, body, chat)
        echo = "" if chat or not body.get("echo") else text_model.codec.decode(ids)
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
        responses = service.infer_stream(_request(name, ids, parameters, request.headers))
        if not stream:
            choices: dict[int, _Choice] = {}
            usage = _Usage()
            await until_disconnect(request.receive, _collect(responses, choices, usage))
            return json_response(_body(meta, choices, usage, chat, text_model, echo, bool(parameters.get("logprobs"))))
        first = await first_response(request.receive, responses)
    events = _events(first, responses, meta, chat, text_model, bool(options.get("include_usage")), echo,
                     bool(parameters.get("logprobs")))
    return event_stream(events)


async def _collect(responses: AsyncIterator[InferenceResponse], choices: dict[int, _Choice], usage: _Usage) -> None:
    try:
        async for response in responses:
            _take(_read(response), choices, usage)
    finally:
        await responses.aclose()


def _body(meta: dict, choices: dict[int, _Choice], usage: _Usage, chat: bool, text_model: TextModel, echo: str,
          logprobs: bool) -> dict:
    codec, out = text_model.codec, []
    for index in sorted(choices):
        c = choices[index]
        entries = list(zip(c.token_ids, c.logprobs, c.top, strict=True))
        text = "".join(c.text)
        if chat:
            out.append({"index": index, "message": {"role": "assistant", "content": text},
                        "logprobs": _chat_logprobs(codec, entries) if logprobs else None,
                        "finish_reason": c.finish_reason})
        else:
            out.append({"index": index, "text": echo + text,
                        "logprobs": _completion_logprobs(codec, entries, len(echo)) if logprobs else None,
                        "finish_reason": c.finish_reason})
    kind = "chat.completion" if chat else "text_completion"
    return {**meta, "object": kind, "choices": out, "usage": usage.body()}


async def _events(first: InferenceResponse | None, responses: AsyncIterator[InferenceResponse], meta: dict, chat: bool,
                  text_model: TextModel, include_usage: bool, echo: str, logprobs: bool) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    choices: dict[int, _Choice] = {}
    usage = _Usage()
    usage_field = {"usage": None} if include_usage else {}

    def chunk(items: list[dict]) -> bytes:
        return sse_event({**meta, "object": kind, "choices": items, **usage_field})

    try:
        response = first
        while response is not None:
            out = _read(response)
            index = int(out["index"].reshape(-1)[0])
            fresh = index not in choices
            choice, text, ids, entries = _take(out, choices, usage)
            wants_logprobs = logprobs and bool(ids)
            if chat:
                if fresh:
                    yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}])
                item = {"index": index, "delta": {"content": text} if text else {},
                        "logprobs": _chat_logprobs(text_model.codec, entries) if wants_logprobs else None,
                        "finish_reason": choice.finish_reason}
            else:
                prefix = echo if fresh else ""
                item = {"index": index, "text": prefix + text,
                        "logprobs": _completion_logprobs(text_model.codec, entries, 0) if wants_logprobs else None,
                        "finish_reason": choice.finish_reason}
            if text or choice.finish_reason or (not chat and fresh and echo):
                yield chunk([item])
            response = await anext(responses, None)
        if include_usage:
            yield sse_event({**meta, "object": kind, "choices": [], "usage": usage.body()})
    except DeepserveError as exc:
        yield sse_event(error_body(status_for(exc), exc.message))
    finally:
        await responses.aclose()
    yield b"data: [DONE]\n\n"


async def tokenize(request: Request) -> Response:
    """vLLM's ``POST /tokenize``: ``prompt`` or ``messages`` -> ``tokens``, ``count``, ``max_model_len``."""
    service = _service(request)
    body = await _json_body(request)
    _, text_model = _text_model(service, body)
    codec = text_model.codec
    if "messages" in body:
        tokens = codec.encode_chat(body["messages"], add_generation_prompt=body.get("add_generation_prompt", True))
    elif isinstance(body.get("prompt"), str):
        tokens = codec.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True) is not False)
    else:
        raise InvalidInput("give 'prompt' (a string) or 'messages'")
    out = {"count": len(tokens), "max_model_len": text_model.max_model_len, "tokens": tokens}
    if body.get("return_token_strs"):
        out["token_strs"] = codec.token_texts(tokens)
    return json_response(out)


async def detokenize(request: Request) -> Response:
    """vLLM's ``POST /detokenize``: ``tokens`` -> ``prompt``."""
    service = _service(request)
    body = await _json_body(request)
    _, text_model = _text_model(service, body)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise InvalidInput("'tokens' must be a list of token ids")
    size = text_model.codec.vocab_size
    bad = [t for t in tokens if not 0 <= t < size]
    if bad:
        raise InvalidInput(f"'tokens' has ids outside the vocabulary [0, {size}): {bad[:5]}")
    return json_response({"prompt": text_model.codec.decode(tokens, skip_special_tokens=False)})


router.add_api_route("/v1/completions", completions, methods=["POST"], summary="Complete a prompt (OpenAI-compatible)")
router.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"],
                     summary="Answer chat messages (OpenAI-compatible)")
router.add_api_route("/tokenize", tokenize, methods=["POST"], summary="Tokenize a prompt or messages (vLLM's)")
router.add_api_route("/detokenize", detokenize, methods=["POST"], summary="Token ids back to text (vLLM's)")
