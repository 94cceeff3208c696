"""gRPC (tritonclient.grpc.aio) vs HTTP with binary tensors (tritonclient.http.aio), one server.

The two figures issue #3 asks for, measured in one run with the protocols alternating
round by round (so a noisy neighbour hits both), medians reported:
  * per-request overhead: p50 / p99 latency of sequential requests (concurrency 1) on the
    tiny ``simple`` model (FP32 INPUT0 + INPUT1 [1, 16] -> sum, difference; no batching delay
    beyond its 500 µs);
  * throughput: requests/s from N concurrent clients (default 64) on the default CNN
    ``digits`` (one 1x8x8 image per request, dynamic batching).

It starts its own server on loopback (temp repository: the test suite's tiny models plus the
default repository) unless ``--grpc-url`` / ``--http-url`` point at one.

    .venv/bin/python -m loadtests.grpc_vs_http [--requests 4000] [--rounds 3] [--out docs/benchmarks-grpc.md]

The client and the server share the host; on a small machine they compete for cores, so
compare the protocols with each other, not with other hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from loadtests.procs import tree_cpu_s

ROOT = Path(__file__).resolve().parents[1]
Call = Callable[[], Awaitable]


def _simple_inputs(module) -> list:
    a = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    return inputs


def _digit_inputs(module) -> list:
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    tensor = module.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


async def _latency(call: Call, count: int) -> tuple[float, float]:
    """Sequential requests: (p50, p99) in milliseconds."""
    for _ in range(min(50, count)):  # warm-up
        await call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1e3)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


async def _throughput(call: Call, count: int, concurrency: int) -> float:
    """``count`` requests from ``concurrency`` workers: requests per second."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    await asyncio.gather(*(call() for _ in range(concurrency)))  # warm-up, opens connections
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def measure(
    grpc_url: str, http_url: str, requests: int, concurrency: int, rounds: int, server_pid: int | None = None
) -> dict:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http as httpclient
    import tritonclient.http.aio as http_aio

    grpc_client = grpc_aio.InferenceServerClient(grpc_url)
    http_client = http_aio.InferenceServerClient(http_url, conn_limit=max(100, concurrency))
    try:
        simple = {"gRPC": _simple_inputs(grpcclient), "HTTP binary": _simple_inputs(httpclient)}
        digits = {"gRPC": _digit_inputs(grpcclient), "HTTP binary": _digit_inputs(httpclient)}
        h_simple_out = [httpclient.InferRequestedOutput("OUTPUT0"), httpclient.InferRequestedOutput("OUTPUT1")]
        h_digits_out = [httpclient.InferRequestedOutput("logits")]
        tiny: dict[str, Call] = {
            "gRPC": lambda: grpc_client.infer("simple", simple["gRPC"]),
            "HTTP binary": lambda: http_client.infer("simple", simple["HTTP binary"], outputs=h_simple_out),
        }
        cnn: dict[str, Call] = {
            "gRPC": lambda: grpc_client.infer("digits", digits["gRPC"]),
            "HTTP binary": lambda: http_client.infer("digits", digits["HTTP binary"], outputs=h_digits_out),
        }
        samples: dict[str, list[tuple[float, ...]]] = {name: [] for name in tiny}
        for _ in range(rounds):
            for name in tiny:
                p50, p99 = await _latency(tiny[name], max(200, requests // 4))
                cpu_before = tree_cpu_s(server_pid) if server_pid else 0.0
                rps = await _throughput(cnn[name], requests, concurrency)
                cpu_after = tree_cpu_s(server_pid) if server_pid else 0.0
                cpu_ms = (cpu_after - cpu_before) * 1e3 / (requests + concurrency)
                samples[name].append((p50, p99, rps, cpu_ms))
    finally:
        await grpc_client.close()
        await http_client.close()
    results = {}
    for name, runs in samples.items():
        p50, p99, rps, cpu_ms = (statistics.median(column) for column in zip(*runs, strict=True))
        results[name] = {"p50_ms": p50, "p99_ms": p99, "rps": rps, "server_cpu_ms": cpu_ms}
    return results


def report(results: dict, args: argparse.Namespace) -> str:
    g, h = results["gRPC"], results["HTTP binary"]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# gRPC vs HTTP (binary tensors)",
        "",
        "Written by `loadtests/grpc_vs_http.py`; a benchmark, not a test.",
        "",
        f"* **Command:** `.venv/bin/python -m loadtests.grpc_vs_http --requests {args.requests} "
        f"--rounds {args.rounds} --concurrency {args.concurrency} --out {args.out}`",
        f"* **Date:** {stamp}; **machine:** {os.cpu_count()} cores, CPU only, {platform.platform()}; "
        "client and server on the same cores",
        f"* Clients: `tritonclient.grpc.aio` and `tritonclient.http.aio` (binary tensors), {args.rounds} "
        "alternating rounds, medians.",
        "",
        f"| protocol | tiny `simple`, c=1: p50 (ms) | p99 (ms) | default CNN `digits`, c={args.concurrency}: req/s "
        "| server CPU ms per request |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        cpu = f"{r['server_cpu_ms']:.3f}" if r["server_cpu_ms"] else "n/a"
        lines.append(f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:.0f} | {cpu} |")
    lines += [
        "",
        f"* gRPC / HTTP throughput on `digits` at {args.concurrency} clients: **{g['rps'] / h['rps']:.2f}x** "
        "(bar: >= 0.9, issue #9; issue #3 asked >= 1)",
        f"* gRPC - HTTP p50 at one client on `simple`: **{g['p50_ms'] - h['p50_ms']:+.3f} ms** (bar: <= 0)",
    ]
    findings = Path(__file__).with_name("grpc_findings.md")
    if findings.exists():
        lines += ["", findings.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-url", help="host:port of a running server (default: start one)")
    parser.add_argument("--http-url", help="host:port of a running server (default: start one)")
    parser.add_argument("--requests", type=int, default=4000, help="requests per throughput run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--out", help="write the Markdown report here as well")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        grpc_url, http_url, pid = args.grpc_url, args.http_url, None
        if not (grpc_url and http_url):
            sys.path.insert(0, str(ROOT))
            from export.default_repository import build_default_repository
            from tests.integration import server_fixtures as fx

            repo = fx.build_repository(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            build_default_repository(repo)
            env = {"DEEPSERVE_GRPC_MAX_MESSAGE_BYTES": str(64 * 1024 * 1024)}
            server = stack.enter_context(fx.running_server(repo, extra_env=env))
            grpc_url, http_url, pid = server.grpc_url, server.http_url, server.pid
        results = asyncio.run(measure(grpc_url, http_url, args.requests, args.concurrency, args.rounds, pid))
    text = report(results, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
