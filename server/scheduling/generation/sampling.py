"""Per-request sampling: the parameters a request may set, checked, and the draw itself.

numpy only (the runner hands over float32 logits). Each sequence draws from its own
generator, seeded from the request's ``seed`` (choice ``i`` of ``n`` uses ``seed + i``),
so what a sequence samples never depends on which other sequences share its batch.

Order of operations on one row of logits: presence and frequency penalties over the
tokens generated so far (OpenAI's definition), the grammar's mask (structured output),
then greedy when ``temperature`` is 0, else temperature, ``top_k``, ``top_p`` and one
draw. ``logprobs`` are the model's own: log-softmax of the raw logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.core.errors import InvalidInput

MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP = 8


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None
    max_tokens: int | None = None  # None = the rest of the context
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    response_format: Mapping[str, Any] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _number(p: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = p.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"'{key}' must be a number")
    if not low <= value <= high:
        raise InvalidInput(f"'{key}' must be between {low:g} and {high:g}, not {value:g}")
    return float(value)


def _integer(p: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    value = p.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'{key}' must be an integer")
    if not low <= value <= high:
        raise InvalidInput(f"'{key}' must be between {low} and {high}, not {value}")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list | tuple) or not all(isinstance(s, str) and s for s in stops):
        raise InvalidInput("'stop' must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP:
        raise InvalidInput(f"'stop' takes at most {MAX_STOP} strings, not {len(stops)}")
    return tuple(stops)


def _token_ids(value: Any, vocab_size: int) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise InvalidInput("'stop_token_ids' must be a list of token ids")
    bad = [t for t in value if not 0 <= t < vocab_size]
    if bad:
        raise InvalidInput(f"'stop_token_ids' has ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
    return tuple(value)


def params_from(p: Mapping[str, Any], vocab_size: int) -> SamplingParams:
    """A request's sampling parameters (OpenAI's and vLLM's names), each checked."""
    logprobs = p.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise InvalidInput("'logprobs' must be true or false")
    top_logprobs = _integer(p, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    response_format = p.get("response_format")
    if response_format is not None and not isinstance(response_format, Mapping):
        raise InvalidInput("'response_format' must be an object such as {\"type\": \"json_object\"}")
    seed = p.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInput("'seed' must be an integer")
    ignore_eos = p.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise InvalidInput("'ignore_eos' must be true or false")
    return SamplingParams(
        temperature=_number(p, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(p, "top_p", 1.0, 1e-6, 1.0),
        top_k=_integer(p, "top_k", 0, -1, vocab_size) or 0,
        seed=seed,
        max_tokens=_integer(p, "max_tokens", None, 1, 1 << 30),
        stop=_stops(p.get("stop")),
        stop_token_ids=_token_ids(p.get("stop_token_ids"), vocab_size),
        ignore_eos=ignore_eos,
        presence_penalty=_number(p, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(p, "frequency_penalty", 0.0, -2.0, 2.0),
        logprobs=bool(logprobs) or top_logprobs > 0,
        top_logprobs=top_logprobs,
        n=_integer(p, "n", 1, 1, MAX_N),
        response_format=response_format,
    )


@dataclass(frozen=True, slots=True)
class Draw:
    token: int
    logprob: float  # the model's log-probability of ``token``
    top: tuple[tuple[int, float], ...]  # the ``top_logprobs`` most likely tokens and theirs


def log_softmax(row: np.ndarray) -> np.ndarray:
    shifted = row.astype(np.float64) - float(np.max(row))
    return shifted - math.log(float(np.exp(shifted).sum()))


def sample(
    logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, counts: Mapping[int, int],
    allowed: np.ndarray | None = None,
) -> Draw:
    """One token from one row of logits (float32 [vocab]). ``counts``: how often each token
    was generated so far (penalties); ``allowed``: the grammar's mask, or None."""
    row = logits.astype(np.float64, copy=True)
    if counts and (params.presence_penalty or params.frequency_penalty):
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        times = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        row[ids] -= params.presence_penalty + params.frequency_penalty * times
    if allowed is not None:
        row[~allowed] = -np.inf
    if params.greedy:
        token = int(np.argmax(row))
    else:
        token = _draw(row / params.temperature, params, rng)
    model = log_softmax(logits) if params.logprobs else None
    if model is None:
        return Draw(token, 0.0, ())
    top: tuple[tuple[int, float], ...] = ()
    if params.top_logprobs:
        best = np.argpartition(-model, params.top_logprobs - 1)[:params.top_logprobs]
        best = best[np.argsort(-model[best], kind="stable")]
        top = tuple((int(t), float(model[t])) for t in best)
    return Draw(token, float(model[token]), top)


def _draw(row: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    if 0 < params.top_k < row.size:
        kth = np.partition(row, -params.top_k)[-params.top_k]
        row[row < kth] = -np.inf
    probs = np.exp(row - np.max(row))
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = int(np.searchsorted(cumulative, params.top_p)) + 1  # the smallest set reaching top_p
        cut = np.zeros_like(probs)
        cut[order[:keep]] = probs[order[:keep]]
        probs = cut / cut.sum()
    u = rng.random()
    return int(min(np.searchsorted(np.cumsum(probs), u * probs.sum(), side="right"), probs.size - 1))
