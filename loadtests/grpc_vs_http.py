"""gRPC (tritonclient.grpc.aio) vs HTTP with binary tensors (tritonclient.http.aio) on one model.

Two figures per protocol:
  * concurrency 1: p50 / p99 latency of sequential requests;
  * concurrency N (default 64): throughput in requests/s over a fixed number of requests.

Without ``--grpc-url`` / ``--http-url`` it starts its own server on a temp repository holding
the test suite's tiny ``simple`` model (FP32 INPUT0 + INPUT1 [rows, 16] -> sum, difference):
the figures then measure the frontends and the batcher, not a network.

    .venv/bin/python loadtests/grpc_vs_http.py [--rows 1] [--requests 2000] [--concurrency 64]

The client and the server share the host; on a small machine they compete for cores, so
compare protocols with each other, not with other hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _inputs(module, rows: int) -> list:
    a = np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float32)
    inputs = [module.InferInput("INPUT0", [rows, 16], "FP32"), module.InferInput("INPUT1", [rows, 16], "FP32")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    return inputs


async def _latency(call: Callable[[], Awaitable], count: int) -> tuple[float, float]:
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


async def _throughput(call: Callable[[], Awaitable], count: int, concurrency: int) -> float:
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
    grpc_url: str, http_url: str, model: str, rows: int, requests: int, concurrency: int, rounds: int
) -> dict:
    """Protocols alternate round by round (so a noisy neighbour hits both); medians per figure."""
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http as httpclient
    import tritonclient.http.aio as http_aio

    results: dict[str, dict] = {}
    grpc_client = grpc_aio.InferenceServerClient(grpc_url)
    http_client = http_aio.InferenceServerClient(http_url, conn_limit=max(100, concurrency))
    try:
        g_inputs, h_inputs = _inputs(grpcclient, rows), _inputs(httpclient, rows)
        h_outputs = [httpclient.InferRequestedOutput("OUTPUT0"), httpclient.InferRequestedOutput("OUTPUT1")]
        calls = {
            "gRPC (tritonclient.grpc.aio)": lambda: grpc_client.infer(model, g_inputs),
            "HTTP binary (tritonclient.http.aio)": lambda: http_client.infer(model, h_inputs, outputs=h_outputs),
        }
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                p50, p99 = await _latency(call, max(200, requests // 4))
                rps = await _throughput(call, requests, concurrency)
                samples[name].append((p50, p99, rps))
        for name, runs in samples.items():
            p50, p99, rps = (statistics.median(column) for column in zip(*runs, strict=True))
            results[name] = {"p50_ms": p50, "p99_ms": p99, "rps": rps}
    finally:
        await grpc_client.close()
        await http_client.close()
    return results


def report(results: dict, rows: int, concurrency: int) -> str:
    lines = [
        f"| protocol | c=1 p50 (ms) | c=1 p99 (ms) | c={concurrency} throughput (req/s) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:.0f} |")
    return f"model `simple`, {rows} row(s) of 2x16 FP32 per request (medians of alternating rounds)\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-url", help="host:port of a running server (default: start one)")
    parser.add_argument("--http-url", help="host:port of a running server (default: start one)")
    parser.add_argument("--model", default="simple")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000, help="requests per throughput run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        grpc_url, http_url = args.grpc_url, args.http_url
        if not (grpc_url and http_url):
            sys.path.insert(0, str(ROOT / "tests" / "integration"))
            import server_fixtures as fx

            repo = fx.build_repository(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            env = {"DEEPSERVE_GRPC_MAX_MESSAGE_BYTES": str(64 * 1024 * 1024)}
            server = stack.enter_context(fx.running_server(repo, extra_env=env))
            grpc_url, http_url = server.grpc_url, server.http_url
        results = asyncio.run(
            measure(grpc_url, http_url, args.model, args.rows, args.requests, args.concurrency, args.rounds)
        )
    print(report(results, args.rows, args.concurrency))


if __name__ == "__main__":
    main()
