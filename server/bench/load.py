"""The async load generator of ``deepserve bench``.

Each level runs like this (as perf_analyzer measures, and as ``loadtests/loadgen.py`` does)::

    warm-up (warmup_s)     | stats |  measured window (duration_s, or until N answers)  | stats | drain
    answers thrown away    |  GET  |  answers that arrive here are counted             |  GET  | not counted

* closed loop (``concurrency``): N workers, each sends its next request as soon as its last
  answer is read;
* open loop (``rate``): requests start at Poisson arrival times (exponential gaps, mean 1/rate)
  whatever the answers do; at most ``max_inflight`` are outstanding (more count as the error
  ``client: max in-flight``).

The server-side split comes from the statistics extension (``GET /v2/models/{m}/stats``, or
gRPC ``ModelStatistics``) read just before and after the window: per request queue, compute
input / infer / output and overhead (request time minus those), and the average batch size
(``inference_count`` / ``execution_count`` deltas).

Targets: :class:`HttpV2` (JSON or binary tensors), :class:`GrpcV2` (prebuilt
``ModelInferRequest``\\ s over ``grpc.aio``), :class:`Stream` (``/v1/chat/completions`` or
``/v1/completions`` with ``stream: true``: time to first token and tokens/s) and
:class:`Upload` (a multipart file to ``/v1/classify`` or ``/v1/audio/transcriptions``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

Progress = Callable[[float, int, int], None]  # (fraction of the window done, answered, errors)


@dataclass
class Outcome:
    ok: bool
    status: str  # "200", "HTTP 503", "gRPC UNAVAILABLE", "transport: ConnectError", ...
    ttft_s: float | None = None  # streams: seconds from send to the first token
    tokens: int = 0  # streams: completion tokens


def base_url(url: str, default_scheme: str = "http") -> str:
    return url.rstrip("/") if "://" in url else f"{default_scheme}://{url.rstrip('/')}"


def _stats_path(model: str, version: str) -> str:
    return f"/v2/models/{model}/versions/{version}/stats" if version else f"/v2/models/{model}/stats"


class Target:
    """What one request is, and how to read the server's statistics."""

    kind = "v2"

    async def open(self, max_connections: int) -> None: ...

    async def close(self) -> None: ...

    async def send(self, i: int) -> Outcome:
        raise NotImplementedError

    async def stats(self) -> list[dict] | None:
        return None


class _Http(Target):
    def __init__(self, url: str, model: str = "", version: str = "", headers: Mapping[str, str] | None = None,
                 timeout_s: float = 60.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url, self.model, self.version = base_url(url), model, version
        self.headers = dict(headers or {})
        self.timeout_s, self.transport = timeout_s, transport
        self.client: httpx.AsyncClient | None = None
        self.admin: httpx.AsyncClient | None = None

    async def open(self, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        kwargs = {"base_url": self.url, "headers": self.headers, "timeout": self.timeout_s, "transport": self.transport}
        self.client = httpx.AsyncClient(limits=limits, **kwargs)
        self.admin = httpx.AsyncClient(**kwargs)  # stats stay off the saturated pool

    async def close(self) -> None:
        for client in (self.client, self.admin):
            if client is not None:
                await client.aclose()

    async def stats(self) -> list[dict] | None:
        if not self.model or self.admin is None:
            return None
        try:
            response = await self.admin.get(_stats_path(self.model, self.version))
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            stats = response.json().get("model_stats")
        except (ValueError, AttributeError):
            return None
        return stats if isinstance(stats, list) else None

    async def _post(self, path: str, **kwargs) -> Outcome:
        assert self.client is not None
        try:
            response = await self.client.post(path, **kwargs)
        except httpx.TimeoutException:
            return Outcome(False, "timeout")
        except httpx.HTTPError as exc:
            return Outcome(False, f"transport: {type(exc).__name__}")
        if response.status_code == 200:
            return Outcome(True, "200")
        return Outcome(False, f"HTTP {response.status_code}")


class HttpV2(_Http):
    """``POST /v2/models/{m}[/versions/{v}]/infer`` with prebuilt bodies (cycled)."""

    def __init__(self, url: str, model: str, bodies: Sequence[tuple[bytes, Mapping[str, str]]], version: str = "", **kw) -> None:
        super().__init__(url, model, version, **kw)
        self.bodies = list(bodies)
        self.path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"

    async def send(self, i: int) -> Outcome:
        body, headers = self.bodies[i % len(self.bodies)]
        return await self._post(self.path, content=body, headers=headers)


class Upload(_Http):
    """A multipart ``file`` (and form fields) to a ``/v1`` task route."""

    def __init__(self, url: str, path: str, file: Path, fields: Mapping[str, str] | None = None,
                 stats_model: str = "", **kw) -> None:
        super().__init__(url, stats_model, **kw)
        self.path, self.filename, self.data = path, Path(file).name, Path(file).read_bytes()
        self.fields = dict(fields or {})

    async def send(self, i: int) -> Outcome:
        return await self._post(self.path, files={"file": (self.filename, self.data)}, data=self.fields)


class Stream(_Http):
    """``/v1/chat/completions`` or ``/v1/completions`` with ``stream: true``: the first
    chunk with text is the first token; the usage chunk (``stream_options.include_usage``)
    gives the completion tokens (the count of text chunks when it is missing)."""

    kind = "stream"

    def __init__(self, url: str, model: str, chat: bool, prompt: str, max_tokens: int, **kw) -> None:
        super().__init__(url, model, **kw)
        self.chat = chat
        self.path = "/v1/chat/completions" if chat else "/v1/completions"
        self.body: dict[str, Any] = {"model": model, "stream": True, "max_tokens": max_tokens,
                                     "stream_options": {"include_usage": True}}
        if chat:
            self.body["messages"] = [{"role": "user", "content": prompt}]
        else:
            self.body["prompt"] = prompt

    def _text(self, chunk: dict) -> str:
        text = ""
        for choice in chunk.get("choices") or []:
            text += ((choice.get("delta") or {}).get("content") or "") if self.chat else (choice.get("text") or "")
        return text

    async def send(self, i: int) -> Outcome:
        assert self.client is not None
        start = time.perf_counter()
        first: float | None = None
        chunks, usage = 0, None
        try:
            async with self.client.stream("POST", self.path, json=self.body) as response:
                if response.status_code != 200:
                    await response.aread()
                    return Outcome(False, f"HTTP {response.status_code}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        return Outcome(False, "stream error")
                    if self._text(chunk):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - start
                    usage = chunk.get("usage") or usage
        except httpx.TimeoutException:
            return Outcome(False, "timeout")
        except httpx.HTTPError as exc:
            return Outcome(False, f"transport: {type(exc).__name__}")
        except ValueError:
            return Outcome(False, "stream: bad JSON")
        tokens = int(usage.get("completion_tokens", chunks)) if isinstance(usage, dict) else chunks
        return Outcome(True, "200", ttft_s=first, tokens=tokens)


class GrpcV2(Target):
    """``ModelInfer`` over ``grpc.aio`` with prebuilt requests (cycled); statistics from
    ``ModelStatistics``."""

    def __init__(self, url: str, model: str, requests: Sequence, version: str = "",
                 headers: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> None:
        self.url = url.split("://", 1)[-1].rstrip("/")
        self.model, self.version, self.requests = model, version, list(requests)
        self.metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self.timeout_s = timeout_s
        self.channel = None
        self.stub = None

    async def open(self, max_connections: int) -> None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.aio.insecure_channel(self.url, options=options)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def send(self, i: int) -> Outcome:
        import grpc

        try:
            await self.stub.ModelInfer(self.requests[i % len(self.requests)], timeout=self.timeout_s,
                                       metadata=self.metadata or None)
        except grpc.aio.AioRpcError as exc:
            return Outcome(False, f"gRPC {exc.code().name}")
        return Outcome(True, "OK")

    async def stats(self) -> list[dict] | None:
        import grpc
        from google.protobuf.json_format import MessageToDict
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelStatisticsRequest(name=self.model, version=self.version or "")
        try:
            response = await self.stub.ModelStatistics(request, timeout=self.timeout_s, metadata=self.metadata or None)
        except grpc.aio.AioRpcError:
            return None
        return MessageToDict(response, preserving_proto_field_name=True).get("model_stats", [])


# -- statistics --------------------------------------------------------------------------------


def _totals(stats: list[dict] | None) -> dict[str, int] | None:
    """Counters summed over the versions listed (gRPC's JSON gives uint64 as strings and
    leaves zeros out, hence ``int(... or 0)``)."""
    if stats is None:
        return None
    totals: Counter[str] = Counter()
    for entry in stats:
        totals["inference_count"] += int(entry.get("inference_count") or 0)
        totals["execution_count"] += int(entry.get("execution_count") or 0)
        for key, value in (entry.get("inference_stats") or {}).items():
            totals[f"{key}.count"] += int((value or {}).get("count") or 0)
            totals[f"{key}.ns"] += int((value or {}).get("ns") or 0)
    return dict(totals)


def server_split(before: list[dict] | None, after: list[dict] | None) -> dict[str, Any] | None:
    """perf_analyzer's server-side view of the window, per successful request, in µs."""
    a, b = _totals(after), _totals(before)
    if a is None or b is None:
        return None
    d = lambda key: a.get(key, 0) - b.get(key, 0)
    requests = d("success.count")
    split: dict[str, Any] = {
        "requests": requests, "failed": d("fail.count"),
        "inference_count": d("inference_count"), "execution_count": d("execution_count"),
        "avg_batch": round(d("inference_count") / d("execution_count"), 3) if d("execution_count") > 0 else None,
    }
    if requests <= 0:
        return split
    per = lambda key: d(f"{key}.ns") / requests / 1e3
    parts = {"queue_us": per("queue"), "compute_input_us": per("compute_input"),
             "compute_infer_us": per("compute_infer"), "compute_output_us": per("compute_output")}
    request_us = per("success")
    split.update({k: round(v, 1) for k, v in parts.items()})
    split["request_us"] = round(request_us, 1)
    split["overhead_us"] = round(max(0.0, request_us - sum(parts.values())), 1)
    return split


# -- one level -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    mode: str  # "concurrency" or "rate"
    value: float

    @property
    def label(self) -> str:
        return f"concurrency {int(self.value)}" if self.mode == "concurrency" else f"{self.value:g} req/s"


@dataclass
class _Window:
    target_count: int | None = None
    start: float | None = None
    end: float | None = None
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    stream_rates: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: Counter = field(default_factory=Counter)
    full: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def answered(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def record(self, sent: float, answered: float, outcome: Outcome) -> None:
        if self.start is None or answered < self.start or (self.end is not None and answered > self.end):
            return
        if outcome.ok:
            self.latencies.append(answered - sent)
            if outcome.ttft_s is not None:
                self.ttfts.append(outcome.ttft_s)
                generating = (answered - sent) - outcome.ttft_s
                if outcome.tokens > 1 and generating > 0:
                    self.stream_rates.append((outcome.tokens - 1) / generating)
            self.tokens += outcome.tokens
        else:
            self.errors[outcome.status] += 1
        if self.target_count is not None and self.answered >= self.target_count:
            self.full.set()


def _pct(values: Sequence[float], q: float, scale: float = 1e3) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)) * scale, 3) if len(values) else None


async def run_level(target: Target, level: Level, duration_s: float = 5.0, requests: int | None = None,
                    warmup_s: float = 1.0, max_inflight: int = 1000, seed: int = 0,
                    progress: Progress | None = None) -> dict[str, Any]:
    """One level: warm-up, statistics, the measured window, statistics, drain. Returns the
    level's row (see :mod:`server.bench.report` for the fields)."""
    window = _Window(target_count=requests)
    stop = asyncio.Event()
    tasks: set[asyncio.Task] = set()

    async def one(i: int) -> None:
        sent = time.perf_counter()
        outcome = await target.send(i)
        window.record(sent, time.perf_counter(), outcome)

    async def worker(k: int, step: int) -> None:
        i = k
        while not stop.is_set():
            await one(i)
            i += step
            await asyncio.sleep(0)  # an answer that never suspended (an error at once) still lets the clock run

    async def arrivals(rate: float) -> None:
        rng = np.random.default_rng(seed)
        due, i = time.perf_counter(), 0
        while not stop.is_set():
            due += rng.exponential(1.0 / rate)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                break
            if len(tasks) >= max_inflight:
                window.record(due, time.perf_counter(), Outcome(False, "client: max in-flight"))
                continue
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1

    if level.mode == "concurrency":
        n = max(1, int(level.value))
        drivers = [asyncio.create_task(worker(k, n)) for k in range(n)]
    elif level.mode == "rate":
        if not level.value > 0:
            raise ValueError("a request rate must be > 0")
        drivers = [asyncio.create_task(arrivals(float(level.value)))]
    else:
        raise ValueError(f"unknown level mode {level.mode!r}")

    try:
        if warmup_s > 0:
            await asyncio.sleep(warmup_s)
        before = await target.stats()
        window.start = time.perf_counter()
        while True:
            now = time.perf_counter()
            if requests is not None:
                done = window.answered / requests
                if window.full.is_set():
                    break
            else:
                done = (now - window.start) / duration_s
                if done >= 1.0:
                    break
            if progress is not None:
                progress(min(done, 1.0), len(window.latencies), sum(window.errors.values()))
            wait = 0.1 if requests is not None else min(0.1, window.start + duration_s - now)
            if requests is not None:
                try:
                    await asyncio.wait_for(window.full.wait(), timeout=wait)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(max(0.0, wait))
        window.end = time.perf_counter()
        after = await target.stats()
    finally:
        stop.set()
        await asyncio.gather(*drivers, return_exceptions=True)
        if tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
    if progress is not None:
        progress(1.0, len(window.latencies), sum(window.errors.values()))

    elapsed = window.end - window.start
    ok = len(window.latencies)
    row: dict[str, Any] = {
        "mode": level.mode, "level": level.value if level.mode == "rate" else int(level.value),
        "window_s": round(elapsed, 4), "requests": ok, "errors": sum(window.errors.values()),
        "errors_by_status": dict(sorted(window.errors.items())),
        "throughput_rps": round(ok / elapsed, 3) if elapsed > 0 else 0.0,
        "p50_ms": _pct(window.latencies, 50), "p90_ms": _pct(window.latencies, 90),
        "p95_ms": _pct(window.latencies, 95), "p99_ms": _pct(window.latencies, 99),
        "mean_ms": round(float(np.mean(window.latencies)) * 1e3, 3) if ok else None,
        "max_ms": round(max(window.latencies) * 1e3, 3) if ok else None,
        "server": server_split(before, after),
    }
    if target.kind == "stream":
        row.update({
            "ttft_p50_ms": _pct(window.ttfts, 50), "ttft_p99_ms": _pct(window.ttfts, 99),
            "tokens": window.tokens,
            "tokens_per_s": round(window.tokens / elapsed, 2) if elapsed > 0 else 0.0,
            "stream_tokens_per_s": round(float(np.mean(window.stream_rates)), 2) if window.stream_rates else None,
        })
    return row


async def sweep(target: Target, levels: Sequence[Level], duration_s: float = 5.0, requests: int | None = None,
                warmup_s: float = 1.0, max_inflight: int = 1000,
                progress: Callable[[Level], Progress | None] | None = None) -> list[dict[str, Any]]:
    """Every level in turn over one set of connections (sized for the largest level)."""
    width = max((int(lv.value) if lv.mode == "concurrency" else max_inflight) for lv in levels)
    await target.open(max(1, width))
    try:
        rows = []
        for level in levels:
            rows.append(await run_level(target, level, duration_s, requests, warmup_s, max_inflight,
                                        progress=progress(level) if progress else None))
        return rows
    finally:
        await target.close()


def parse_levels(spec: str, integer: bool = True) -> list[float]:
    """``"1,2,4"``, or ``"start:end[:step]"`` (perf_analyzer's range, step added; default 1)."""
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = [float(p) for p in spec.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, end = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1.0
            if step <= 0 or end < start:
                raise ValueError
            count = int(math.floor((end - start) / step + 1e-9)) + 1
            values = [start + i * step for i in range(count)]
        else:
            values = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"{spec!r}: expected a list (1,2,4) or a range (start:end[:step])") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{spec!r}: levels must be > 0")
    if integer:
        if any(v != int(v) for v in values):
            raise ValueError(f"{spec!r}: concurrency levels must be integers")
        return [int(v) for v in values]
    return values
