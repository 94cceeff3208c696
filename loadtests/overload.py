"""How fast overload is refused while the server serves at capacity (issue #13's bar:
refusals in under 5 ms p99).

Two phases, each its own server on 127.0.0.1 with the trained ``digits`` network (fp32
ONNX, dynamic batching) and more closed-loop HTTP clients than it can hold:

  * ``queue``    the model's queue is bounded (``max_queue_size`` 16): a request finding it
                 full is refused by the batcher (503, OVERLOAD);
  * ``inflight`` ``--max-inflight`` caps the server (32 requests) and the model's queue is
                 not the limit: a request past the cap is refused before its body is read.

For each phase: requests answered 200 and refused 503 (each with p50 / p99 latency as the
client saw it), anything else (must be none), and the refusals' share. The clients share
the 2 cores with the server, so the refusal latency includes waiting for the event loop
behind the served requests: that is the figure a client gets.

    .venv/bin/python -m loadtests.overload --json loadtests/results/overload-<date>.json --out docs/benchmarks-overload.md
    .venv/bin/python -m loadtests.overload --from-json loadtests/results/overload-<date>.json --out docs/benchmarks-overload.md

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.procs import ServerProcess, free_port
from loadtests.runinfo import add_output_arguments, finish, note_edits, quantiles, record

WATCHED = ("server", "loadtests/overload.py")
TARGET_P99_MS = 5.0
PHASES = {
    "queue": {"max_queue_size": 16, "env": {}},
    "inflight": {"max_queue_size": 0, "env": {"DEEPSERVE_MAX_INFLIGHT": "32"}},
}


def build_repository(dest: Path, max_queue_size: int) -> None:
    from google.protobuf import text_format

    from export.default_repository import export_family_entry
    from export.families import get_family
    from export.repository import read_config

    export_family_entry(dest, get_family("digits"), "digits")
    config = read_config(dest / "digits")
    if max_queue_size:
        config.dynamic_batching.default_queue_policy.max_queue_size = max_queue_size
    (dest / "digits" / "config.pbtxt").write_text(text_format.MessageToString(config))


async def drive(url: str, clients: int, duration_s: float) -> dict:
    import httpx

    x = np.random.default_rng(0).random(64).round(3).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x}]}
    by_status: dict[int, list[float]] = {}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        end = time.monotonic() + duration_s

        async def one_client() -> None:
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v2/models/digits/infer", json=body)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                by_status.setdefault(response.status_code, []).append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    total = sum(len(v) for v in by_status.values())
    return {
        "clients": clients, "duration_s": duration_s, "requests": total, "errors": errors[:10], "error_count": len(errors),
        "by_status": {str(s): {"count": len(v), **quantiles(v)} for s, v in sorted(by_status.items())},
    }


def run(args: argparse.Namespace) -> dict:
    results = record("loadtests.overload", WATCHED, args.json)
    results["phases"] = {}
    for name, phase in PHASES.items():
        with tempfile.TemporaryDirectory(prefix="deepserve-overload-") as tmp:
            repo = Path(tmp) / "repo"
            build_repository(repo, phase["max_queue_size"])
            port = free_port()
            server = ServerProcess(
                f"deepserve ({name})",
                [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                 "--http-port", str(port), "--no-grpc", "--log-level", "warning"],
                f"http://127.0.0.1:{port}/v2/health/ready", env_extra=phase["env"], log_path=Path(tmp) / "server.log",
            )
            server.start()
            try:
                asyncio.run(drive(f"http://127.0.0.1:{port}", args.clients, 2.0))  # warm-up, not recorded
                measured = asyncio.run(drive(f"http://127.0.0.1:{port}", args.clients, args.duration))
            finally:
                server.stop()
            results["phases"][name] = {**measured, "max_queue_size": phase["max_queue_size"], "env": phase["env"]}
    note_edits(results, WATCHED)
    return results


def render(results: dict) -> str:
    lines = [
        "# Overload: how fast refusals come while serving at capacity",
        "",
        f"Generated by `{results['command']}` on {results['date_utc']}, commit `{results['commit']}`"
        f"{' (uncommitted: ' + ', '.join(results['dirty']) + ')' if results['dirty'] else ''}; "
        f"{results['machine'].get('cores', '?')} cores, clients on the same cores. Raw results: "
        f"`{results.get('json_path') or 'not saved'}`. Target: refusals (503) p99 under {TARGET_P99_MS:g} ms.",
        "",
        "| phase | limit | clients | requests | 200: count, p50 / p99 ms | 503: count, p50 / p99 ms | refused | other errors | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, p in results["phases"].items():
        ok, refused = p["by_status"].get("200", {}), p["by_status"].get("503", {})
        limit = f"model queue {p['max_queue_size']}" if p["max_queue_size"] else f"--max-inflight {p['env']['DEEPSERVE_MAX_INFLIGHT']}"
        p99 = refused.get("p99_ms")
        met = p99 is not None and p99 < TARGET_P99_MS
        verdicts.append(f"{name}: refusal p99 {p99:.2f} ms ({'met' if met else 'MISSED'})" if p99 is not None
                        else f"{name}: no refusal happened (the load did not reach the limit: not measured)")
        others = sum(v["count"] for s, v in p["by_status"].items() if s not in ("200", "503")) + p["error_count"]
        cell = (lambda q: f"{q.get('count', 0):,}, {q['p50_ms']:.2f} / {q['p99_ms']:.2f}" if q.get("count") else "0")
        lines.append(
            f"| {name} | {limit} | {p['clients']} | {p['requests']:,} | {cell(ok)} | {cell(refused)} | "
            f"{refused.get('count', 0) / max(1, p['requests']):.0%} | {others} | {'met' if met else '**missed**'} |")
    lines += ["", "Verdict: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=96)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per phase")
    add_output_arguments(parser, quiet_wait_s=0.0)
    finish(parser.parse_args(), run, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
