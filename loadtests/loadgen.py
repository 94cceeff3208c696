"""A closed-loop HTTP load generator: N workers, each on its own connection, for a fixed time.

Every server in ``loadtests.bench`` is measured with this one generator, so the figures
differ only by the server. One run::

    warm-up (warmup_s)          measured window (duration_s)              drain
    |-------------------------|------------------------------------------|....|
    requests answered here     requests *answered* here are counted:       in-flight
    are thrown away            throughput = answered / duration_s,         requests end,
                               latency = send -> last body byte            not counted

Each worker owns one keep-alive connection (an aiohttp connector with ``limit=1``) and
sends its next request as soon as the previous answer is read (closed loop: the offered
load is the concurrency, never more). A response counts as an error when the status is
not 200 or the scenario's ``decode`` cannot read the expected output from it; the first
answer of every worker is also compared numerically with the expected output.

Command line (one point against a v2 server, binary tensors)::

    .venv/bin/python -m loadtests.loadgen --url http://127.0.0.1:8000 --model mlp_tiny \
        --shape 1,64 --concurrency 32 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import numpy as np

# decode(status, headers, body) -> the output array; raises ValueError when malformed.
Decoder = Callable[[int, Mapping[str, str], bytes], np.ndarray]


@dataclass(frozen=True)
class Scenario:
    """One kind of request: where it goes, its prebuilt body, and how to read the answer."""

    name: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    decode: Decoder
    expected: np.ndarray  # the output the server must return (checked on first answers)
    atol: float = 1e-3


@dataclass(frozen=True)
class LoadConfig:
    concurrency: int
    duration_s: float = 8.0
    warmup_s: float = 2.0
    request_timeout_s: float = 60.0


@dataclass
class LoadResult:
    scenario: str
    concurrency: int
    duration_s: float
    latencies_ms: list[float] = field(repr=False)  # sorted, successful requests in the window
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.completed / self.duration_s

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return self.latencies_ms[min(len(self.latencies_ms) - 1, int(q * len(self.latencies_ms)))]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(0.99)

    def as_dict(self) -> dict:
        return {
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "completed": self.completed,
            "errors": self.errors,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.percentile_ms(0.90), 3),
            "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 3) if self.latencies_ms else None,
            "error_samples": self.error_samples[:3],
        }


@dataclass
class _Window:
    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def record(self, sent: float, answered: float, problem: str | None) -> None:
        if not self.start <= answered <= self.end:
            return
        if problem is None:
            self.latencies.append((answered - sent) * 1e3)
        else:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(problem)


async def _one(session: aiohttp.ClientSession, scenario: Scenario) -> tuple[np.ndarray | None, str | None]:
    try:
        async with session.post(scenario.url, data=scenario.body, headers=scenario.headers) as resp:
            body = await resp.read()
            status, headers = resp.status, resp.headers
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return None, f"transport: {exc!r}"
    try:
        output = scenario.decode(status, headers, body)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return None, f"HTTP {status}: {exc} | {body[:160]!r}"
    if output.shape != scenario.expected.shape:
        return None, f"output shape {output.shape}, expected {scenario.expected.shape}"
    return output, None


async def _worker(scenario: Scenario, window: _Window, timeout_s: float) -> None:
    connector = aiohttp.TCPConnector(limit=1, force_close=False, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # No Accept-Encoding: tritonclient sends none, and the server would gzip every answer.
    skip = ("User-Agent", "Accept-Encoding")
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=skip) as session:
        first = True
        while (sent := time.perf_counter()) < window.end:
            output, problem = await _one(session, scenario)
            answered = time.perf_counter()
            if first and problem is None:
                first = False
                if not np.allclose(output, scenario.expected, atol=scenario.atol, rtol=1e-3):
                    worst = float(np.max(np.abs(output - scenario.expected)))
                    problem = f"wrong answer: max |error| {worst:.3g} > {scenario.atol}"
            window.record(sent, answered, problem)


async def run_load(scenario: Scenario, config: LoadConfig) -> LoadResult:
    """Drive ``scenario`` with ``config.concurrency`` closed-loop workers; see the module doc."""
    now = time.perf_counter()
    window = _Window(start=now + config.warmup_s, end=now + config.warmup_s + config.duration_s)
    await asyncio.gather(*(_worker(scenario, window, config.request_timeout_s) for _ in range(config.concurrency)))
    return LoadResult(
        scenario=scenario.name,
        concurrency=config.concurrency,
        duration_s=config.duration_s,
        latencies_ms=sorted(window.latencies),
        errors=window.errors,
        error_samples=window.error_samples,
    )


async def probe(scenario: Scenario) -> str | None:
    """One request; the problem with its answer, or None when it is right."""
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept-Encoding")) as session:
        output, problem = await _one(session, scenario)
    if problem is None and not np.allclose(output, scenario.expected, atol=scenario.atol, rtol=1e-3):
        problem = f"wrong answer: max |error| {float(np.max(np.abs(output - scenario.expected))):.3g}"
    return problem


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the generator shares the cores with the server: spend less)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    from loadtests import scenarios

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="mlp_tiny")
    parser.add_argument("--input", default="input")
    parser.add_argument("--output", default="logits")
    parser.add_argument("--shape", default="1,64", help="input shape, batch first (FP32)")
    parser.add_argument("--concurrency", "-c", type=int, default=32)
    parser.add_argument("--duration", "-d", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split(","))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    # Without the model file at hand the expected answer is the server's own first one.
    scenario = scenarios.v2_binary(args.url, args.model, args.input, args.output, x, expected=None)
    loop = new_event_loop()
    try:
        scenario = loop.run_until_complete(scenarios.learn_expected(scenario))
        result = loop.run_until_complete(run_load(scenario, LoadConfig(args.concurrency, args.duration, args.warmup)))
    finally:
        loop.close()
    print(json.dumps(result.as_dict(), indent=2))


if __name__ == "__main__":
    main()
