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

from loadtests.procs import busy_cpu_s, own_cpu_s, tree_cpu_s

ROOT = Path(__file__).resolve().parents[1]
Call = Callable[[], Awaitable]

VARIANTS = ("direct", "ensemble", "preprocess")
MODEL_OF = {"direct": "digits", "ensemble": "digits_pipeline", "preprocess": "digits_preprocess"}
STEPS = ("digits_preprocess", "image_size", "digits", "digits_topk")  # the ensemble's steps
KEEP = {"digits", "digits_pipeline", *STEPS}  # the models the server is given
TRITON_ISSUE = "https://github.com/triton-inference-server/server/issues/5082"
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


# ---- the page ---------------------------------------------------------------------------


def ratios(results: dict) -> dict:
    """The headline figures, from the raw results (the page never stores them separately)."""
    v = results["variants"]
    d, e, p = v["direct"], v["ensemble"], v["preprocess"]
    return {
        "latency_ratio_c1": e["c1"]["p50_ms"] / d["c1"]["p50_ms"],
        "added_p50_ms_c1": e["c1"]["p50_ms"] - d["c1"]["p50_ms"],
        "added_p99_ms_c1": e["c1"]["p99_ms"] - d["c1"]["p99_ms"],
        "throughput_ratio_cN": e["cN"]["rps"] / d["cN"]["rps"],
        "added_p50_ms_cN": e["cN"]["p50_ms"] - d["cN"]["p50_ms"],
        "cpu_ratio_cN": e["cN"]["server_cpu_ms"] / d["cN"]["server_cpu_ms"],
        "added_cpu_ms_cN": e["cN"]["server_cpu_ms"] - d["cN"]["server_cpu_ms"],
        "preprocess_over_direct_p50_c1": p["c1"]["p50_ms"] / d["c1"]["p50_ms"],
    }


def _spread(results: dict) -> list[str]:
    """The two headline ratios round by round (the rounds pair the variants in time)."""
    rounds = {name: {row["round"]: row for row in results["variants"][name].get("rounds", [])} for name in VARIANTS}
    common = sorted(set(rounds["direct"]) & set(rounds["ensemble"]))
    if len(common) < 2:
        return []
    lat = [rounds["ensemble"][i]["c1"]["p50_ms"] / rounds["direct"][i]["c1"]["p50_ms"] for i in common]
    tput = [rounds["ensemble"][i]["cN"]["rps"] / rounds["direct"][i]["cN"]["rps"] for i in common]
    return [f"* Round by round: p50 ratio {min(lat):.2f}-{max(lat):.2f}x, throughput ratio "
            f"{min(tput):.2f}-{max(tput):.2f}x ({len(common)} rounds)"]


def _f(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pooled(results: dict, variant: str, key: str) -> dict:
    return results["variants"][variant].get("stats", {}).get(key, {}).get("pooled", {})


def _attribution(results: dict, key: str) -> list[str]:
    """Where a request's time goes, from the client's mean and the server's statistics (means)."""
    v = results["variants"]
    rows = []
    for name in VARIANTS:
        pooled = _pooled(results, name, key)
        top = pooled.get(MODEL_OF[name])
        mean = v[name][key].get("mean_ms")
        if top is None or mean is None:
            continue
        rows.append(f"| {name} | {_f(mean)} | {_f(mean - top['request_ms'])} | {_f(top['request_ms'])} | "
                    + " | ".join(_step_cell(pooled.get(s)) if name == "ensemble" else _direct_cell(name, s, pooled)
                                 for s in STEPS)
                    + f" | {_f(_executor_ms(pooled)) if name == 'ensemble' else ''} |")
    if not rows:
        return []
    label = "1 client" if key == "c1" else f"{results['settings']['concurrency']} clients"
    return [
        f"**{label}** (means, ms; a step cell is request time = queue + compute + scheduling, "
        "with queue / compute in brackets):",
        "",
        "| variant | client mean | client + HTTP | in the server | `digits_preprocess` | `image_size` (parallel) "
        "| `digits` | `digits_topk` | executor residual |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def _step_cell(s: dict | None) -> str:
    if s is None:
        return ""
    return f"{_f(s['request_ms'])} ({_f(s['queue_ms'])} / {_f(s['compute_ms'])})"


def _direct_cell(variant: str, step: str, pooled: dict) -> str:
    return _step_cell(pooled.get(step)) if MODEL_OF[variant] == step else ""


def _executor_ms(pooled: dict) -> float | None:
    """The ensemble's server time not spent in its critical chain of steps
    (preprocess -> digits -> topk): the executor, thread hand-offs, and waiting on the
    parallel image_size branch when it ends last."""
    top = pooled.get("digits_pipeline")
    chain = [pooled.get(s) for s in ("digits_preprocess", "digits", "digits_topk")]
    if top is None or any(c is None for c in chain):
        return None
    return top["request_ms"] - sum(c["request_ms"] for c in chain)


def render(results: dict) -> str:
    """The Markdown page, from the results dict alone (``--from-json`` re-renders it)."""
    s, m, v = results["settings"], results["machine"], results["variants"]
    r = ratios(results)
    n = s["concurrency"]
    d, e = v["direct"], v["ensemble"]
    lines = [
        "# Ensemble overhead: `digits_pipeline` vs the bare `digits` network",
        "",
        "Written by `loadtests/ensemble_overhead.py` from its results file; a benchmark, not a test. "
        "Regenerate the page without rerunning: `.venv/bin/python -m loadtests.ensemble_overhead "
        f"--from-json {results.get('json_path', 'loadtests/results/ensemble-<date>.json')} --out docs/benchmarks-ensemble.md`.",
        "",
        f"* **Command:** `{results.get('command', 'n/a')}`",
        f"* **Date:** {results.get('date_utc', 'n/a')}; **commit:** `{results.get('commit', 'n/a')}`"
        + (f" (uncommitted changes in: {', '.join(results['dirty'])})" if results.get("dirty") else ""),
        f"* **Machine:** {m.get('cores', '?')} cores ({m.get('cpu', 'unknown CPU')}), CPU only, {m.get('platform', '')}; "
        f"Python {m.get('python', '?')}; client and server on the same cores",
    ]
    if "others_cores" in results:
        q = [w for w in results.get("quiet_wait") or [] if w.get("quiet") is not None]
        waited = (f"; before each round it waited for other load of at most {q[0]['max_cores']:g} cores "
                  f"({sum(w['waited_s'] for w in q):.0f} s in all; reached before {sum(bool(w['quiet']) for w in q)} "
                  f"of {len(q)} rounds)") if q else ""
        lines.append(f"* **Other load** on the machine during the rounds: {results['others_cores']:.2f} cores "
                     f"of {m.get('cores', '?')} on average (busy CPU not the server's or the client's, from "
                     f"`/proc/stat`; per phase in the raw table){waited}")
    if "measured_s" in results or "total_s" in results:
        lines.append(f"* **Run time:** {_f(results.get('total_s'), 0)} s in all ({_f(results.get('measured_s'), 0)} s "
                     "of measured rounds; the rest is building the repository, starting the server, warm-up)")
    lines += [
        "",
        "## Method",
        "",
        "One server (`python -m server.cli serve`, 127.0.0.1), a temp repository built by "
        "`tests/integration/kinds_fixtures.py`, pruned to the five models involved. "
        f"Clients: `tritonclient.http.aio`, binary tensors, one held-out digit per request (the "
        f"{s.get('images', '?')} test images of `models.digits_data`, cycled). Three variants:",
        "",
        "* **direct**: `digits` (ONNX CNN) with the pre-decoded tensor (1, 1, 8, 8) FP32, the bare network;",
        "* **ensemble**: `digits_pipeline` with the PNG bytes, BYTES [1, 1]: `digits_preprocess` "
        "(Python step `image.decode_resize`, PIL) -> `digits` -> `digits_topk` (Python, top-3 labels), "
        "and `image_size` (Python, PIL) on the same bytes in parallel; LABELS, SCORES and SIZE returned;",
        "* **preprocess**: `digits_preprocess` alone with the PNG bytes (the decode step, for attribution).",
        "",
        f"Each round runs every variant (order rotated per round): {s['latency_requests']} sequential "
        f"requests (1 client: p50, p99), then {s['requests']} requests from {n} concurrent clients "
        f"(req/s, p50, p99). {s['rounds']} rounds after a warm-up; the table gives the median over the rounds. "
        "Server CPU per request is the server process tree's CPU time (`/proc`) over a phase divided by "
        "its requests; client CPU likewise for the load generator. "
        "All steps run in the server process (Python steps on worker threads), so no tensor crosses a "
        "process boundary. Batching as configured: `digits` waits up to 500 µs for a batch (preferred "
        "16 / 32), the Python steps batch without delay, `digits_preprocess` has 2 instances.",
        "",
        "## Results",
        "",
        f"| variant | 1 client: p50 (ms) | p99 (ms) | {n} clients: req/s | p50 (ms) | p99 (ms) "
        f"| server CPU ms / req ({n} clients) | (1 client) | client CPU ms / req ({n} clients) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        x = v[name]
        lines.append(
            f"| {name} (`{MODEL_OF[name]}`) | {_f(x['c1']['p50_ms'])} | {_f(x['c1']['p99_ms'])} | {_f(x['cN']['rps'], 0)} "
            f"| {_f(x['cN']['p50_ms'])} | {_f(x['cN']['p99_ms'])} | {_f(x['cN']['server_cpu_ms'], 3)} "
            f"| {_f(x['c1']['server_cpu_ms'], 3)} | {_f(x['cN'].get('client_cpu_ms'), 3)} | {x.get('errors', 0)} |"
        )
    lines += [
        "",
        "## Ratios",
        "",
        f"* Ensemble p50 / direct p50 at 1 client: **{r['latency_ratio_c1']:.2f}x** "
        f"(**{r['added_p50_ms_c1']:+.2f} ms** added; p99 {r['added_p99_ms_c1']:+.2f} ms)",
        f"* Ensemble throughput / direct throughput at {n} clients: **{r['throughput_ratio_cN']:.2f}x** "
        f"({_f(e['cN']['rps'], 0)} vs {_f(d['cN']['rps'], 0)} req/s; p50 {r['added_p50_ms_cN']:+.2f} ms)",
        f"* Server CPU per request at {n} clients, ensemble / direct: **{r['cpu_ratio_cN']:.2f}x** "
        f"({r['added_cpu_ms_cN']:+.3f} ms added)",
        f"* The decode step alone (preprocess) / direct, p50 at 1 client: {r['preprocess_over_direct_p50_c1']:.2f}x",
        *_spread(results),
        "",
    ]
    attribution = _attribution(results, "c1") + _attribution(results, "cN")
    if attribution:
        lines += [
            "## Where the time goes (server statistics)",
            "",
            "From Triton's statistics extension (`/v2/models/stats`), read before and after every phase. "
            "*Client + HTTP* is the client's mean latency minus the called model's mean request time in the "
            "server (tritonclient, aiohttp, the HTTP front end, decoding and encoding the body); *executor "
            "residual* is the ensemble's server time minus its chain of steps (preprocess + digits + topk): "
            "the executor itself, the hand-offs between steps, and waiting for `image_size` when it ends last.",
            "",
            *attribution,
        ]
    lines += ["## Interpretation", "", *_interpretation(results, r), ""]
    checks = results.get("checks")
    if checks:
        lines += [
            "## Checks",
            "",
            f"Before measuring, on the first {checks['images']} images: the ensemble's top-1 label equals the "
            f"direct call's argmax for {checks['ensemble_top1_equals_direct_argmax']}, SIZE is 8x8 for "
            f"{checks['size_is_8x8']}, and `digits_preprocess`'s PIXELS equal the client-side decode "
            f"(`pixels_from_png`) for {checks['preprocess_equals_client_decode']}.",
            "",
        ]
    lines += _raw(results)
    return "\n".join(lines).rstrip() + "\n"


def _interpretation(results: dict, r: dict) -> list[str]:
    v, n = results["variants"], results["settings"]["concurrency"]
    d, e, p = v["direct"], v["ensemble"], v["preprocess"]
    out = [f"* **Latency, 1 client.** The ensemble adds {r['added_p50_ms_c1']:.2f} ms to the bare network's "
           f"{d['c1']['p50_ms']:.2f} ms p50 ({r['latency_ratio_c1']:.2f}x)." + _split_c1(results)]
    direct_digits = _pooled(results, "direct", "c1").get("digits")
    if direct_digits:
        out.append(
            f"* **The bare network's own time, 1 client** (means): of {d['c1']['mean_ms']:.2f} ms, "
            f"{d['c1']['mean_ms'] - direct_digits['request_ms']:.2f} ms is client + HTTP, "
            f"{direct_digits['queue_ms']:.2f} ms waiting in `digits`' batcher (its 500 µs batching window, "
            f"waited out in full when no other request arrives; the ensemble's network step waits it too) and "
            f"{direct_digits['compute_ms']:.2f} ms in ONNX Runtime."
        )
    cpu = (
        f"* **Throughput, {n} clients.** The ensemble reaches {r['throughput_ratio_cN']:.2f}x the direct "
        f"throughput. The server spends {e['cN']['server_cpu_ms']:.3f} ms of CPU per ensemble request against "
        f"{d['cN']['server_cpu_ms']:.3f} ms for the bare network ({r['cpu_ratio_cN']:.2f}x, "
        f"{r['added_cpu_ms_cN']:+.3f} ms); the decode step called alone costs {p['cN']['server_cpu_ms']:.3f} ms, "
        "its HTTP request included. The rest of the ensemble's CPU goes to the second PIL decode "
        "(`image_size`), top-k, three more scheduled calls and the executor, in shares this run does not "
        f"separate. The client spends {d['cN'].get('client_cpu_ms', 0):.3f} / "
        f"{e['cN'].get('client_cpu_ms', 0):.3f} ms per request (direct / ensemble) of the same cores."
    )
    if d["cN"].get("server_cores") and e["cN"].get("server_cores"):
        machine = lambda x: (x["cN"]["server_cpu_ms"] + x["cN"].get("client_cpu_ms", 0)) * x["cN"]["rps"] / 1e3
        cpu += (
            f" The server process kept {d['cN']['server_cores']:.2f} / {e['cN']['server_cores']:.2f} cores busy "
            f"(direct / ensemble, medians; server and client together about {machine(d):.1f} / {machine(e):.1f} "
            f"of the {results.get('machine', {}).get('cores', '?')} cores). The server has one event loop, and "
            "its Python steps share one GIL, so most of its work is serial: while it is near one core busy, "
            "its throughput is about the inverse of its CPU per request, whatever the core count."
        )
    pooled = _pooled(results, "ensemble", "cN")
    chain = [pooled.get(s) for s in ("digits_preprocess", "digits", "digits_topk")]
    if all(chain):
        waiting = sum(c["request_ms"] - c["queue_ms"] - c["compute_ms"] for c in chain)
        top = pooled.get("digits_pipeline")
        cpu += (
            f" Latency under load: the ensemble's p50 is {r['added_p50_ms_cN']:+.2f} ms over the direct call's. "
            f"In the server's statistics its three chained steps spend {waiting:.2f} ms per request neither "
            "queued nor computing (waiting for an instance thread, or for the event loop, busy with "
            f"{n} connections, to resume the step)"
            + (f", out of {top['request_ms']:.2f} ms in the server" if top else "")
            + "."
        )
    out.append(cpu)
    out.append(
        "* **Not priced here:** the direct variant's client got pixels decoded before the clock started; a "
        "real client calling the network directly pays that decode itself. The ensemble moves that work "
        "into the server, and the ratios are what that move costs the server and the latency."
    )
    out.append(
        f"* **Triton, for context only.** The issue that asked for this page cites [triton-inference-server "
        f"#5082]({TRITON_ISSUE}) for Triton users reporting that ensembles with Python-backend steps cost 2-10x "
        "the bare model. That is their report, not a measurement made here: Triton was not run, and its "
        "Python backend runs each model in a separate stub process with shared-memory hand-offs, where "
        "deepserve's steps are threads of the server process. On this machine and this pipeline deepserve's "
        f"figures are {r['latency_ratio_c1']:.2f}x in p50 latency at 1 client ({_versus(r['latency_ratio_c1'])}) "
        f"and {1 / r['throughput_ratio_cN']:.2f}x in cost per request (inverse throughput) at {n} clients "
        f"({_versus(1 / r['throughput_ratio_cN'])})."
    )
    others, cores = results.get("others_cores"), results.get("machine", {}).get("cores")
    if others is not None and others > 0.25:
        out.append(
            f"* **The machine was not quiet:** other processes used {others:.2f} cores on average during the "
            f"rounds (of {cores}). Absolute figures, throughput above all, are lower and noisier than on an idle "
            "machine; alternating the variants round by round spreads the noise over all three, and the "
            "per-round table shows how far the rounds differ. Part of this figure is the kernel's own "
            "loopback work (softirq time is charged to no process)."
        )
    errors = {name: v[name].get("errors", 0) for name in VARIANTS}
    if any(errors.values()):
        out.append(f"* **Errors during the rounds:** {errors}; first messages: "
                   f"{[m for name in VARIANTS for m in v[name].get('error_messages', [])][:3]}")
    log = results.get("server_log") or []
    if log:
        out.append(f"* **Server log** (warning level and above): {len(log)} line(s); the last: `{log[-1][:200]}`")
    return out


def _versus(ratio: float, low: float = 2.0, high: float = 10.0) -> str:
    if ratio < low:
        return "below the reported range"
    return "inside the reported range" if ratio <= high else "above the reported range"


def _split_c1(results: dict) -> str:
    """The added mean time at 1 client, split exactly into the server's parts and client + HTTP."""
    v = results["variants"]
    ens, direct = _pooled(results, "ensemble", "c1"), _pooled(results, "direct", "c1")
    me, md = v["ensemble"]["c1"].get("mean_ms"), v["direct"]["c1"].get("mean_ms")
    executor = _executor_ms(ens)
    needed = ("digits_pipeline", "digits_preprocess", "digits", "digits_topk")
    if me is None or md is None or executor is None or "digits" not in direct or not all(k in ens for k in needed):
        return ""
    delta = me - md
    parts = {
        "the decode step (`digits_preprocess`)": ens["digits_preprocess"]["request_ms"],
        "the top-k step": ens["digits_topk"]["request_ms"],
        "the executor residual": executor,
        "the network step inside the ensemble vs called directly": ens["digits"]["request_ms"] - direct["digits"]["request_ms"],
        "client + HTTP (a BYTES body in, three outputs back)": (me - ens["digits_pipeline"]["request_ms"])
        - (md - direct["digits"]["request_ms"]),
    }
    share = lambda x: f" ({100 * x / delta:.0f}%)" if delta > 0 else ""
    text = "; ".join(f"{name} {value:+.2f} ms{share(value)}" for name, value in parts.items())
    decode = ens["digits_preprocess"]
    return (
        f" In means the ensemble adds {delta:.2f} ms ({md:.2f} -> {me:.2f} ms), which splits as: {text}. "
        f"The decode step computes for {decode['compute_ms']:.2f} ms of its {decode['request_ms']:.2f} ms; the rest "
        f"is scheduling (validation, {decode['queue_ms']:.2f} ms in its queue, the hand-off to a worker thread "
        "and back to the event loop). The `image_size` branch runs beside the decode step and is not on "
        "the chain; its cost shows up in CPU, and in the residual when it ends last."
    )


def _raw(results: dict) -> list[str]:
    out = ["## Raw results, per round", ""]
    n = results["settings"]["concurrency"]
    out += [
        f"| round | variant | 1 client: p50 | p99 | server CPU ms/req | {n} clients: req/s | p50 | p99 "
        "| server CPU ms/req | errors | other load (cores, 1 / N clients) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(row["round"], name, row) for name in VARIANTS for row in results["variants"][name].get("rounds", [])]
    for index, name, row in sorted(rows, key=lambda t: (t[0], VARIANTS.index(t[1]))):
        c1, cn = row["c1"], row["cN"]
        out.append(
            f"| {index} | {name} | {_f(c1['p50_ms'])} | {_f(c1['p99_ms'])} | {_f(c1['server_cpu_ms'], 3)} "
            f"| {_f(cn['rps'], 0)} | {_f(cn['p50_ms'])} | {_f(cn['p99_ms'])} | {_f(cn['server_cpu_ms'], 3)} "
            f"| {c1.get('errors', 0) + cn.get('errors', 0)} | {_f(c1.get('others_cores'))} / {_f(cn.get('others_cores'))} |"
        )
    if not rows:
        return []
    out += ["", f"Every figure, the server statistics by round included: `{results.get('json_path', 'the results JSON')}`."]
    return out


# ---- setup and the command line ---------------------------------------------------------


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
