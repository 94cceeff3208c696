"""What an ensemble costs over calling its network directly, in one server, one run.

Three variants, over HTTP with binary tensors (``tritonclient.http.aio``), one held-out digit
per request, alternating round by round (the order rotates each round, so a noisy
neighbour hits every variant), medians over the rounds:

  * ``direct``     ``digits`` with the pre-decoded tensor (1, 1, 8, 8) FP32: the bare network;
  * ``ensemble``   ``digits_pipeline`` with the PNG bytes, shape [1, 1]: decode -> network ->
                   top-k, plus the image-size branch (four Python / ONNX steps, in-process);
  * ``preprocess`` ``digits_preprocess`` alone with the PNG bytes: the decode step by itself.

For each: p50 / p99 latency of sequential requests (1 client), requests/s and p50 / p99 from
``--concurrency`` clients (default 32), server CPU ms per request (the server process tree,
``/proc``), client CPU ms per request, and the server's own statistics (Triton's statistics
extension) of every model involved, diffed around each phase, to say where the time goes.

    .venv/bin/python -m loadtests.ensemble_overhead --out docs/benchmarks-ensemble.md \\
        --json loadtests/results/ensemble-<date>.json [--rounds 3] [--requests 5000]
    .venv/bin/python -m loadtests.ensemble_overhead --from-json loadtests/results/ensemble-<date>.json \\
        --out docs/benchmarks-ensemble.md          # re-render the page, no run

It starts its own server on 127.0.0.1 (a temp repository from
``tests/integration/kinds_fixtures.py``, pruned to the models measured). Client and server
share the host's cores; compare the variants with each other, not with other hosts.
A benchmark, not a test: nothing is asserted beyond a correctness check of the answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from loadtests.ensemble_report import MODEL_OF, STEPS, VARIANTS, ratios, render  # noqa: F401 (re-exported)
from loadtests.procs import busy_cpu_s, own_cpu_s, tree_cpu_s

ROOT = Path(__file__).resolve().parents[1]
Call = Callable[[], Awaitable]

KEEP = {"digits", "digits_pipeline", *STEPS}  # the models the server is given
MAX_ERROR_SHARE = 0.1  # a phase with more failed requests than this aborts the run


# ---- the run ----------------------------------------------------------------------------


class Phase:
    """One measured phase of one variant: latencies, failures."""

    def __init__(self) -> None:
        self.samples_ms: list[float] = []
        self.errors = 0
        self.messages: list[str] = []

    async def timed(self, call: Call) -> None:
        started = time.perf_counter()
        try:
            await call()
        except Exception as exc:  # counted and reported; a bench keeps going
            self.errors += 1
            if len(self.messages) < 5:
                self.messages.append(f"{type(exc).__name__}: {exc}")
            return
        self.samples_ms.append((time.perf_counter() - started) * 1e3)

    def check(self, variant: str, attempted: int) -> None:
        if self.errors > MAX_ERROR_SHARE * attempted:
            raise RuntimeError(f"{variant}: {self.errors} of {attempted} requests failed; first: {self.messages[:1]}")


def _quantiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
        "mean_ms": statistics.fmean(ordered),
    }


async def _sequential(call: Call, count: int) -> Phase:
    phase = Phase()
    for _ in range(count):
        await phase.timed(call)
    return phase


async def _concurrent(call: Call, count: int, concurrency: int) -> tuple[Phase, float]:
    """``count`` requests from ``concurrency`` workers: (latencies, seconds taken)."""
    phase, remaining = Phase(), count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await phase.timed(call)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return phase, time.perf_counter() - started


def _stats_delta(before: dict, after: dict) -> dict:
    """Per model, what the server recorded between two ``/v2/models/stats`` snapshots."""
    out = {}
    for name, a in after.items():
        b = before.get(name)
        if b is None:
            continue
        ia, ib = a["inference_stats"], b["inference_stats"]

        def diff(key: str, field: str, ia: dict = ia, ib: dict = ib) -> int:
            return ia[key][field] - ib[key][field]

        ok = diff("success", "count")
        if not ok:
            continue
        compute_ns = sum(diff(k, "ns") for k in ("compute_input", "compute_infer", "compute_output"))
        executions = a["execution_count"] - b["execution_count"]
        rows = a["inference_count"] - b["inference_count"]
        out[name] = {
            "requests": ok,
            "request_ms": diff("success", "ns") / ok / 1e6,  # accepted -> answered, in the server
            "queue_ms": diff("queue", "ns") / max(1, diff("queue", "count")) / 1e6,
            "compute_ms": compute_ns / max(1, diff("compute_infer", "count")) / 1e6,
            "executions": executions,
            "mean_batch": rows / executions if executions else None,
            "failed": diff("fail", "count"),
        }
    return out


async def _snapshot(client) -> dict:
    stats = await client.get_inference_statistics()
    return {row["name"]: row for row in stats["model_stats"]}


def _inputs(httpclient, images: list[bytes], pixels: np.ndarray) -> dict[str, list]:
    """Per variant, one prepared request per held-out image."""
    direct, encoded = [], []
    for data, x in zip(images, pixels, strict=True):
        tensor = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(x[None].astype(np.float32))
        direct.append(tensor)
        tensor = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object), binary_data=True)
        encoded.append(tensor)
    return {"direct": direct, "ensemble": encoded, "preprocess": encoded}


def _outputs(httpclient) -> dict[str, list]:
    out = lambda *names: [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
    return {"direct": out("logits"), "ensemble": out("LABELS", "SCORES", "SIZE"), "preprocess": out("PIXELS")}


async def _check_answers(client, inputs: dict, outputs: dict, pixels: np.ndarray, count: int) -> dict:
    """The three variants agree on the first ``count`` images (so the bench measures real work)."""
    top1_ok = size_ok = pixels_ok = 0
    for i in range(count):
        direct = await client.infer("digits", [inputs["direct"][i]], outputs=outputs["direct"])
        pipeline = await client.infer("digits_pipeline", [inputs["ensemble"][i]], outputs=outputs["ensemble"])
        decoded = await client.infer("digits_preprocess", [inputs["preprocess"][i]], outputs=outputs["preprocess"])
        label = pipeline.as_numpy("LABELS")[0][0]
        top1_ok += int(label.decode() if isinstance(label, bytes) else label) == int(direct.as_numpy("logits").argmax())
        size_ok += pipeline.as_numpy("SIZE").tolist() == [[8, 8]]
        pixels_ok += bool(np.allclose(decoded.as_numpy("PIXELS"), pixels[i][None], atol=1e-6))
    return {"images": count, "ensemble_top1_equals_direct_argmax": top1_ok, "size_is_8x8": size_ok,
            "preprocess_equals_client_decode": pixels_ok}


async def measure(http_url: str, server_pid: int, args: argparse.Namespace) -> dict:
    import tritonclient.http as httpclient
    import tritonclient.http.aio as http_aio

    from models.digits_data import load_split
    from tests.integration.kinds_fixtures import digit_pngs, pixels_from_png

    x = load_split().x_test  # (450, 1, 8, 8) in [0, 1]
    images = digit_pngs(x)
    pixels = np.stack([pixels_from_png(data) for data in images])  # what the client would decode
    client = http_aio.InferenceServerClient(http_url, conn_limit=max(100, args.concurrency))
    data: dict = {name: {"rounds": [], "errors": 0, "error_messages": [], "stats": {"c1": {}, "cN": {}}} for name in VARIANTS}
    try:
        inputs, outputs = _inputs(httpclient, images, pixels), _outputs(httpclient)
        checks = await _check_answers(client, inputs, outputs, pixels, min(32, len(images)))
        counters = dict.fromkeys(VARIANTS, 0)

        def call_of(name: str) -> Call:
            model, prepared, wanted = MODEL_OF[name], inputs[name], outputs[name]

            def call() -> Awaitable:
                counters[name] += 1
                return client.infer(model, [prepared[counters[name] % len(prepared)]], outputs=wanted)

            return call

        calls = {name: call_of(name) for name in VARIANTS}
        for name in VARIANTS:  # warm-up: connections, every step's batcher, the batch shapes ONNX Runtime sees
            await _sequential(calls[name], 50)
            await _concurrent(calls[name], max(20 * args.concurrency, args.requests // 4), args.concurrency)
        quiet, budget = [], args.quiet_wait
        for round_index in range(args.rounds):
            seen = await _wait_for_quiet(server_pid, args.quiet_cores, budget)
            budget = max(0.0, budget - seen["waited_s"])
            quiet.append(seen)
            order = VARIANTS[round_index % len(VARIANTS):] + VARIANTS[: round_index % len(VARIANTS)]
            for name in order:
                call, row = calls[name], {"round": round_index + 1}
                for key, run in (
                    ("c1", lambda c=call: _sequential(c, args.latency_requests)),
                    ("cN", lambda c=call: _concurrent(c, args.requests, args.concurrency)),
                ):
                    before = await _snapshot(client)
                    server0, client0, busy0 = tree_cpu_s(server_pid), own_cpu_s(), busy_cpu_s()
                    wall0 = time.perf_counter()
                    outcome = await run()
                    wall = time.perf_counter() - wall0
                    server_s, client_s = tree_cpu_s(server_pid) - server0, own_cpu_s() - client0
                    others = max(0.0, (busy_cpu_s() - busy0 - server_s - client_s) / wall)  # not ours
                    after = await _snapshot(client)
                    phase, elapsed = outcome if isinstance(outcome, tuple) else (outcome, wall)
                    attempted = args.latency_requests if key == "c1" else args.requests
                    phase.check(name, attempted)
                    data[name]["errors"] += phase.errors
                    data[name]["error_messages"] = (data[name]["error_messages"] + phase.messages)[:5]
                    done = len(phase.samples_ms) + phase.errors
                    row[key] = {
                        **_quantiles(phase.samples_ms),
                        "requests": done,
                        "errors": phase.errors,
                        "seconds": wall,
                        "rps": len(phase.samples_ms) / elapsed,
                        "server_cores": server_s / wall,
                        "server_cpu_ms": server_s * 1e3 / done,
                        "client_cpu_ms": client_s * 1e3 / done,
                        "others_cores": others,
                    }
                    data[name]["stats"][key][round_index + 1] = _stats_delta(before, after)
                data[name]["rounds"].append(row)
    finally:
        await client.close()
    for name in VARIANTS:
        rounds = data[name]["rounds"]
        for key in ("c1", "cN"):
            fields = ("p50_ms", "p99_ms", "mean_ms", "rps", "server_cpu_ms", "client_cpu_ms", "server_cores")
            data[name][key] = {f: statistics.median(r[key][f] for r in rounds) for f in fields}
            data[name]["stats"][key] = {"by_round": data[name]["stats"][key], "pooled": _pool(data[name]["stats"][key])}
    phases = [row[key] for name in VARIANTS for row in data[name]["rounds"] for key in ("c1", "cN")]
    wall = sum(ph["seconds"] for ph in phases)
    return {
        "checks": checks,
        "variants": data,
        "others_cores": sum(ph["others_cores"] * ph["seconds"] for ph in phases) / wall,  # during the phases
        "quiet_wait": quiet,
        "measured_s": wall,
    }


async def _wait_for_quiet(server_pid: int, max_cores: float, timeout_s: float) -> dict:
    """Before a round: wait (up to ``timeout_s``, sampling a second at a time) until processes
    other than the server and this client use at most ``max_cores``; what was seen is
    recorded, the run goes on either way."""
    started = time.monotonic()
    if timeout_s <= 0:
        return {"max_cores": max_cores, "others_cores": None, "quiet": None, "waited_s": 0.0}
    while True:
        t0, busy0, ours0 = time.perf_counter(), busy_cpu_s(), tree_cpu_s(server_pid) + own_cpu_s()
        await asyncio.sleep(1.0)
        load = max(0.0, (busy_cpu_s() - busy0 - (tree_cpu_s(server_pid) + own_cpu_s() - ours0)) / (time.perf_counter() - t0))
        waited = time.monotonic() - started
        if load <= max_cores or waited >= timeout_s:
            return {"max_cores": max_cores, "others_cores": load, "quiet": load <= max_cores, "waited_s": waited}


def _pool(by_round: dict) -> dict:
    """Server statistics over every round: request-weighted means."""
    pooled: dict = {}
    for stats in by_round.values():
        for model, s in stats.items():
            p = pooled.setdefault(model, {"requests": 0, "request_ms": 0.0, "queue_ms": 0.0, "compute_ms": 0.0,
                                          "executions": 0, "rows_x": 0.0, "failed": 0})
            n = s["requests"]
            p["requests"] += n
            for f in ("request_ms", "queue_ms", "compute_ms"):
                p[f] += s[f] * n
            p["executions"] += s["executions"]
            p["rows_x"] += (s["mean_batch"] or 0) * s["executions"]
            p["failed"] += s["failed"]
    for p in pooled.values():
        n = p["requests"] or 1
        for f in ("request_ms", "queue_ms", "compute_ms"):
            p[f] /= n
        rows = p.pop("rows_x")
        p["mean_batch"] = rows / p["executions"] if p["executions"] else None
    return pooled


# ---- helpers ---------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _dirty() -> list[str]:
    """Uncommitted paths among the code that is measured (read-only: no index refresh)."""
    watched = ("server/", "models/", "export/", "tests/integration/kinds_fixtures.py",
               "tests/integration/server_fixtures.py", "loadtests/procs.py")
    lines = _git("status", "--porcelain", "--", *watched).splitlines()
    return sorted({line[3:] for line in lines if line[3:]})


def _machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("onnxruntime", "pillow", "numpy", "tritonclient", "aiohttp", "uvloop"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {"cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def _repository(dest: Path) -> Path:
    from tests.integration.kinds_fixtures import build_kinds_repository

    build_kinds_repository(dest)
    for entry in dest.iterdir():  # serve only what is measured: no idle torch runtime, no broken models
        if entry.is_dir() and entry.name not in KEEP:
            shutil.rmtree(entry)
    return dest


def run(args: argparse.Namespace) -> dict:
    from tests.integration import server_fixtures as fx

    started, wall0 = datetime.datetime.now(datetime.UTC), time.perf_counter()
    results: dict = {
        "schema": 1,
        "command": ".venv/bin/python -m loadtests.ensemble_overhead " + " ".join(sys.argv[1:]),
        "date_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "dirty": _dirty(),
        "machine": _machine(),
        "settings": {"rounds": args.rounds, "requests": args.requests, "latency_requests": args.latency_requests,
                     "concurrency": args.concurrency, "images": 450, "protocol": "HTTP, binary tensors (tritonclient.http.aio)",
                     "models": MODEL_OF},
        "json_path": args.json,
    }
    with tempfile.TemporaryDirectory(prefix="deepserve-ensemble-") as tmp:
        repo = _repository(Path(tmp) / "repo")
        with fx.running_server(repo, wait_for="ready") as server:
            results.update(asyncio.run(measure(server.http_url, server.pid, args)))
            results["server_log"] = [line for line in server.log().splitlines() if line.strip()][-50:]
    results["total_s"] = time.perf_counter() - wall0
    dirty_after = _dirty()
    if dirty_after != results["dirty"]:
        results["dirty_after"] = dirty_after  # someone edited the measured code during the run
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests per variant per round at --concurrency")
    parser.add_argument("--latency-requests", type=int, default=500, help="sequential requests per variant per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--quiet-cores", type=float, default=0.5,
                        help="before each round, wait for other processes to use at most this many cores")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="... for at most this many seconds in all (0: do not wait)")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--out", help="write the Markdown page here")
    parser.add_argument("--from-json", metavar="FILE", help="render the page from this results file; run nothing")
    args = parser.parse_args()

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        results.setdefault("json_path", args.from_json)
    else:
        results = run(args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
