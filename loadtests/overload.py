"""How fast overload is refused while the server serves at capacity (issue #13's bar:
refusals in under 5 ms p99).

Two phases, each its own server on 127.0.0.1 with one model, ``busy`` (a Python model that
spends ~30 ms of CPU on numpy matrix products per batch of up to 8 rows, so the server is
at capacity below what the load generator can send), and more closed-loop HTTP clients
than it can hold:

  * ``queue``    the model's queue is bounded (``max_queue_size`` 16): a request finding it
                 full is refused by the batcher (503, OVERLOAD);
  * ``inflight`` ``--max-inflight`` caps the server (32 requests) and the model's queue is
                 not the limit: a request past the cap is refused before its body is read.

For each phase: requests answered 200 and refused 503 (each with p50 / p99 latency as the
client saw it), anything else (must be none), and the refusals' share, for two kinds of
client: the **load** (``--clients`` closed-loop asyncio clients in this process, which keep
the server at its limit; their latencies include their own event loop's queueing) and a
**probe** (a separate process sending one request at a time, which sees what a fresh
client gets from a server at capacity: the headline figure). All share the 2 cores.

    .venv/bin/python -m loadtests.overload --json loadtests/results/overload-<date>.json --out docs/benchmarks-overload.md
    .venv/bin/python -m loadtests.overload --from-json loadtests/results/overload-<date>.json --out docs/benchmarks-overload.md

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from loadtests.procs import ServerProcess, free_port
from loadtests.runinfo import add_output_arguments, finish, note_edits, quantiles, record

WATCHED = ("server", "loadtests/overload.py")
TARGET_P99_MS = 5.0
PHASES = {
    "queue": {"max_queue_size": 4, "env": {}},
    "inflight": {"max_queue_size": 0, "env": {"DEEPSERVE_MAX_INFLIGHT": "8"}},
}


BUSY_MODEL = '''
import numpy as np


class Busy:
    def setup(self, context):
        self.a = np.random.default_rng(0).random((256, 256)).astype(np.float32)

    def execute(self, inputs):
        b = self.a
        for _ in range(24):  # ~30 ms of CPU per batch on this machine, whatever its rows
            b = np.tanh(self.a @ b)
        return {"Y": inputs["X"] * 2}
'''


def build_repository(dest: Path, max_queue_size: int) -> None:
    (dest / "busy" / "1").mkdir(parents=True)
    (dest / "busy" / "1" / "model.py").write_text(BUSY_MODEL)
    queue = f"default_queue_policy {{ max_queue_size: {max_queue_size} }}" if max_queue_size else ""
    (dest / "busy" / "config.pbtxt").write_text(f"""
name: "busy"
backend: "python"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ {queue} }}
""")


def _body() -> dict:
    return {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}


def _summary(by_status: dict[int, list[float]], errors: list[str], **head) -> dict:
    total = sum(len(v) for v in by_status.values())
    return {**head, "requests": total, "errors": errors[:10], "error_count": len(errors),
            "by_status": {str(s): {"count": len(v), **quantiles(v)} for s, v in sorted(by_status.items())}}


def probe(url: str, start_after_s: float, duration_s: float, out) -> None:
    """One request at a time from its own process (``multiprocessing``): what a new client
    gets while the load holds the server at its limit."""
    import httpx

    body, by_status, errors = _body(), {}, []
    time.sleep(start_after_s)
    end = time.monotonic() + duration_s
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                response = client.post(f"{url}/v2/models/busy/infer", json=body)
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
                continue
            by_status.setdefault(response.status_code, []).append((time.perf_counter() - started) * 1000)
    out.put(_summary(by_status, errors, clients=1, duration_s=duration_s))


async def drive(url: str, clients: int, duration_s: float) -> dict:
    import httpx

    body = _body()
    by_status: dict[int, list[float]] = {}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        end = time.monotonic() + duration_s

        async def one_client() -> None:
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v2/models/busy/infer", json=body)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                by_status.setdefault(response.status_code, []).append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return _summary(by_status, errors, clients=clients, duration_s=duration_s)


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
            url = f"http://127.0.0.1:{port}"
            try:
                asyncio.run(drive(url, args.clients, 2.0))  # warm-up, not recorded
                out = multiprocessing.Queue()
                prober = multiprocessing.Process(target=probe, args=(url, 1.0, args.duration - 2.0, out))
                prober.start()
                measured = asyncio.run(drive(url, args.clients, args.duration))
                probed = out.get(timeout=60)
                prober.join(30)
            finally:
                server.stop()
            results["phases"][name] = {**measured, "probe": probed, "max_queue_size": phase["max_queue_size"],
                                       "env": phase["env"]}
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
        "| phase | limit | client | requests | 200: count, p50 / p99 ms | 503: count, p50 / p99 ms | refused | other errors | target (probe's 503 p99) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []

    def cell(q: dict) -> str:
        return f"{q.get('count', 0):,}, {q['p50_ms']:.2f} / {q['p99_ms']:.2f}" if q.get("count") else "0"

    for name, phase in results["phases"].items():
        limit = (f"model queue {phase['max_queue_size']}" if phase["max_queue_size"]
                 else f"--max-inflight {phase['env']['DEEPSERVE_MAX_INFLIGHT']}")
        p99 = phase.get("probe", {}).get("by_status", {}).get("503", {}).get("p99_ms")
        met = p99 is not None and p99 < TARGET_P99_MS
        verdicts.append(f"{name}: the probe's refusal p99 {p99:.2f} ms ({'met' if met else 'MISSED'})" if p99 is not None
                        else f"{name}: the probe was never refused (not measured)")
        for who, p in (("load", phase), ("probe", phase.get("probe"))):
            if p is None:
                continue
            ok, refused = p["by_status"].get("200", {}), p["by_status"].get("503", {})
            others = sum(v["count"] for s, v in p["by_status"].items() if s not in ("200", "503")) + p["error_count"]
            target = ("met" if met else "**missed**") if who == "probe" else ""
            lines.append(
                f"| {name} | {limit} | {who} ({p['clients']}) | {p['requests']:,} | {cell(ok)} | {cell(refused)} | "
                f"{refused.get('count', 0) / max(1, p['requests']):.0%} | {others} | {target} |")
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
