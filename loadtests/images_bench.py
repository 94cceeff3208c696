"""Diffusion image generation under load: step-level batching vs one at a time, one server, one run.

The issue's requirement, measured here: *images/s at 1, 4 and 16 concurrent requests,
diffusion at 25 steps. Step-level batching must reach at least 4x one-at-a-time throughput
at 16 concurrent, measured in one run. p50 and p99 latency at each level.*

  * ``batched``  ``digits_diffusion`` as the default repository builds it: the step-level
                 sampler puts every in-flight request's step in one network call (up to
                 ``max_step_rows`` rows);
  * ``single``   ``digits_diffusion_single``, a copy with ``max_step_rows`` "2": a guided
                 request takes two rows, so each network call serves one request (one at a time);

both behind ``POST /v1/images/generations`` (n=1, a digit prompt, a seed, ``steps`` 25, the
model's default guidance), from 1, 4 and 16 concurrent clients (asyncio + httpx, one
keep-alive connection each, closed loop), a fixed number of requests per phase. For each
phase: images/s, client-side p50 / p99, CPU of the server / client / others (``/proc``), and
the server's own statistics diffed around it (rows per network call, mean call time).
Rounds alternate the two variants at every level (the order flips each round); medians over
rounds. The in-process reference: the same ONNX U-Net, loaded by deepserve's runtime class
with the server's options, driven by ``server.pipelines.ddim.sample`` for 16 images in lock
step, once per round.

    .venv/bin/python -m loadtests.images_bench --out docs/benchmarks-images.md \\
        --json loadtests/results/images-<date>.json
    .venv/bin/python -m loadtests.images_bench --from-json loadtests/results/images-<date>.json \\
        --out docs/benchmarks-images.md                  # re-render the page, no run

It starts its own server on 127.0.0.1 (a temp repository); all traffic is loopback. Server
and load generator share the host's cores. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.images_report import BATCHED, LEVELS, MODEL_OF, SINGLE, TARGET, VARIANTS, headline, render  # noqa: F401 (re-exported)
from loadtests.procs import busy_cpu_s, own_cpu_s, tree_cpu_s
from loadtests.runinfo import (
    Phase,
    add_output_arguments,
    finish,
    load_network,
    note_edits,
    package_version,
    quantiles,
    record,
    session_options,
    stats_delta,
    wait_for_quiet,
)

ROOT = Path(__file__).resolve().parents[1]
SEED = 424_242  # the bench's own seeds
STEPS = 25
SINGLE_ROWS = 2  # one guided request per network call
INPROCESS_IMAGES = 16
MAX_ERROR_SHARE = 0.1  # a phase with more failed requests than this aborts the run
ROUTE = "/v1/images/generations"

# The measured code, checked for uncommitted edits before and after a run.
WATCHED = ("server/", "export/", "models/digit_unet.py", "models/weights/", "tests/integration/server_fixtures.py",
           "loadtests/procs.py", "loadtests/images_bench.py")


# ---- the repository ------------------------------------------------------------------------


def build_repository(dest: Path) -> dict:
    """The default repository pruned to ``digits_diffusion``, plus ``digits_diffusion_single``
    (the same files, ``max_step_rows`` "2"). Returns each entry's sampler parameters."""
    from google.protobuf import text_format

    from export.default_repository import build_default_repository
    from server.repository.config import parameters, read_config

    build_default_repository(dest)
    for entry in dest.iterdir():  # serve only what is measured
        if entry.is_dir() and entry.name != BATCHED:
            shutil.rmtree(entry)
    shutil.copytree(dest / BATCHED, dest / SINGLE)
    config = read_config(dest / SINGLE)
    config.name = SINGLE
    config.parameters["max_step_rows"].string_value = str(SINGLE_ROWS)
    (dest / SINGLE / "config.pbtxt").write_text(text_format.MessageToString(config))
    out = {}
    for name in (BATCHED, SINGLE):
        c = read_config(dest / name)
        if c.name != name:
            raise RuntimeError(f"{name}/config.pbtxt names '{c.name}'")
        out[name] = parameters(c)
    if out[SINGLE].get("max_step_rows") != str(SINGLE_ROWS):
        raise RuntimeError(f"{SINGLE} has max_step_rows {out[SINGLE].get('max_step_rows')!r}")
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# ---- in-process ------------------------------------------------------------------------------






class Reference:
    """``ddim.sample`` over the served network, with the server's schedule and defaults."""

    def __init__(self, model_dir: Path, params: dict) -> None:
        from server.pipelines.ddim import NoiseSchedule
        from server.scheduling.diffusion import SamplerConfig

        self.runtime, signature = load_network(model_dir)
        defaults = SamplerConfig(NoiseSchedule(), (1, 16, 16))
        self.schedule = NoiseSchedule(int(params.get("train_steps", 1000)), float(params.get("beta_start", 1e-4)),
                                      float(params.get("beta_end", 0.02)))
        self.null_class = int(params.get("null_class", defaults.null_class))
        self.guidance = float(params.get("default_guidance_scale", defaults.default_guidance))
        self.shape = tuple(next(t for t in signature.inputs if t.name == "x").shape[1:])
        self.rows = 0

    def net(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        self.rows = len(t)
        return self.runtime.execute({"x": x.astype(np.float32), "t": t, "y": y})["eps"]

    def sample(self, labels: np.ndarray, seeds: np.ndarray, steps: int) -> tuple[np.ndarray, float]:
        from server.pipelines import ddim

        t0 = time.perf_counter()
        images = ddim.sample(self.net, labels, seeds, steps, self.guidance, self.schedule, self.null_class, self.shape)
        return images, time.perf_counter() - t0


# ---- over HTTP -----------------------------------------------------------------------------


class Client:
    def __init__(self, base_url: str, connections: int) -> None:
        import httpx

        self.base = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=300.0,
                                      limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))

    async def generate(self, model: str, label: int, seed: int, steps: int = STEPS) -> str:
        body = {"prompt": str(label), "model": model, "n": 1, "seed": seed, "steps": steps}
        resp = await self.http.post(ROUTE, json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.json()["data"][0]["b64_json"]

    async def stats(self, model: str) -> dict:
        resp = await self.http.get(f"/v2/models/{model}/stats")
        resp.raise_for_status()
        return {row["name"]: row for row in resp.json()["model_stats"]}

    async def close(self) -> None:
        await self.http.aclose()


def decode_png(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), np.float32) / 255.0


async def closed_loop(client: Client, model: str, count: int, concurrency: int, first: int) -> tuple[Phase, float]:
    """``count`` requests from ``concurrency`` workers back to back: (latencies, seconds)."""
    phase, issued = Phase(), 0

    async def worker() -> None:
        nonlocal issued
        while issued < count:
            i = first + issued
            issued += 1
            began = time.perf_counter()
            try:
                await client.generate(model, i % 10, SEED + i)
            except Exception as exc:  # counted and reported
                phase.failed(exc)
                continue
            phase.samples_ms.append((time.perf_counter() - began) * 1e3)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return phase, time.perf_counter() - started


def batch_delta(before: dict, after: dict) -> dict:
    """Network calls by rows, and their compute time, between two stats snapshots of one model."""
    def table(row: dict) -> dict:
        return {b["batch_size"]: (b["compute_infer"]["count"], b["compute_infer"]["ns"]) for b in row.get("batch_stats", [])}

    a, b = table(after), table(before)
    calls, ns = {}, 0
    for size, (count, total) in a.items():
        n0, t0 = b.get(size, (0, 0))
        if count - n0:
            calls[str(size)] = count - n0
            ns += total - t0
    return {"calls_by_rows": calls, "network_ns": ns}


async def phase_point(client: Client, server_pid: int, variant: str, concurrency: int, count: int, first: int) -> tuple[Phase, dict]:
    model = MODEL_OF[variant]
    before = await client.stats(model)
    server0, client0, busy0 = tree_cpu_s(server_pid), own_cpu_s(), busy_cpu_s()
    phase, elapsed = await closed_loop(client, model, count, concurrency, first)
    server_s, client_s = tree_cpu_s(server_pid) - server0, own_cpu_s() - client0
    others = max(0.0, (busy_cpu_s() - busy0 - server_s - client_s) / elapsed)
    after = await client.stats(model)
    if phase.errors > MAX_ERROR_SHARE * count:
        raise RuntimeError(f"{variant} at {concurrency}: {phase.errors} of {count} requests failed; first: {phase.messages[:1]}")
    stats = stats_delta(before, after).get(model, {})
    batches = batch_delta(before[model], after[model])
    figures = {
        **quantiles(phase.samples_ms),
        "requests": count, "images": len(phase.samples_ms), "errors": phase.errors, "seconds": elapsed,
        "images_per_s": len(phase.samples_ms) / elapsed,
        "server_cores": server_s / elapsed, "client_cores": client_s / elapsed, "others_cores": others,
        "calls": stats.get("executions", 0), "rows_per_call": stats.get("mean_batch"),
        "server_request_ms": stats.get("request_ms"), "server_queue_ms": stats.get("queue_ms"),
        "failed_in_server": stats.get("failed", 0), **batches,
    }
    return phase, figures


# ---- the run -------------------------------------------------------------------------------


def requests_for(concurrency: int, args: argparse.Namespace) -> int:
    return max(args.min_requests, args.requests_per_client * concurrency)


async def check_answers(client: Client, reference: Reference, base_url: str) -> dict:
    """16 images from the server (batched variant, concurrently) against the in-process
    reference for the same labels and seeds; one call of the v2 generate route."""
    import httpx

    labels = np.arange(INPROCESS_IMAGES) % 10
    seeds = np.array([SEED - 1 - i for i in range(INPROCESS_IMAGES)])
    pngs = await asyncio.gather(*(client.generate(BATCHED, int(d), int(s)) for d, s in zip(labels, seeds, strict=True)))
    served = np.stack([decode_png(p) for p in pngs])
    local, _ = reference.sample(labels, seeds, STEPS)
    local = local.reshape(served.shape)
    diff = np.abs(served - local).reshape(len(served), -1).mean(axis=1)
    tolerance = 0.01
    out = {"images": len(served), "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(np.abs(served - local).max()),
           "close": int((diff <= tolerance).sum()), "close_tolerance": tolerance}
    generate: dict = {}
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=120.0) as http:
            resp = await http.post(f"/v2/models/{BATCHED}/generate",
                                   json={"label": int(labels[0]), "seed": int(seeds[0]), "steps": STEPS})
        generate["status"] = resp.status_code
        if resp.status_code == 200:
            image = np.asarray(resp.json().get("image"), np.float32).reshape(served[0].shape)
            generate["same_image"] = bool(np.abs(np.clip(np.rint(image * 255), 0, 255) / 255 - served[0]).max() <= 1 / 255 + 1e-6)
        else:
            generate["error"] = resp.text[:200]
    except Exception as exc:  # recorded, not fatal
        generate["error"] = f"{type(exc).__name__}: {exc}"[:200]
    out["generate"] = generate
    return out


async def measure(base_url: str, server_pid: int, reference: Reference, args: argparse.Namespace) -> dict:
    client = Client(base_url, max(args.levels) + 4)
    levels = list(args.levels)
    data: dict = {v: {"samples": {str(c): [] for c in levels}, "errors": 0, "error_messages": [],
                      "stats": {str(c): [] for c in levels}} for v in VARIANTS}
    rounds: list[dict] = []
    labels = np.arange(INPROCESS_IMAGES) % 10
    seeds = SEED + 10_000 + np.arange(INPROCESS_IMAGES)
    first = 0
    try:
        checks = await check_answers(client, reference, base_url)
        for v in VARIANTS:  # warm-up: connections, the row counts ONNX Runtime sees
            await closed_loop(client, MODEL_OF[v], 2, 1, 10**6)
            await closed_loop(client, MODEL_OF[v], 2 * max(levels), max(levels), 10**6)
        reference.sample(labels, seeds, STEPS)
        quiet, budget = [], args.quiet_wait
        for index in range(args.rounds):
            seen = await wait_for_quiet(server_pid, args.quiet_cores, budget)
            budget = max(0.0, budget - seen["waited_s"])
            quiet.append(seen)
            order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
            row: dict = {"round": index + 1, "order": " then ".join(order), "phases": {v: {} for v in VARIANTS}}
            busy0, ours0, t0 = busy_cpu_s(), tree_cpu_s(server_pid) + own_cpu_s(), time.perf_counter()
            for c in levels:
                count = requests_for(c, args)
                for v in order:
                    phase, figures = await phase_point(client, server_pid, v, c, count, first)
                    first += count
                    row["phases"][v][str(c)] = figures
                    data[v]["samples"][str(c)] += phase.samples_ms
                    data[v]["errors"] += phase.errors
                    data[v]["error_messages"] = (data[v]["error_messages"] + phase.messages)[:5]
            runs = [reference.sample(labels, seeds, STEPS)[1] for _ in range(args.inprocess_runs)]
            row["inprocess_s"] = runs
            row["inprocess_images_per_s"] = INPROCESS_IMAGES / statistics.median(runs)
            wall = time.perf_counter() - t0
            row["seconds"] = wall
            row["others_cores"] = max(0.0, (busy_cpu_s() - busy0 - (tree_cpu_s(server_pid) + own_cpu_s() - ours0)) / wall)
            rounds.append(row)
    finally:
        await client.close()
    variants: dict = {}
    for v in VARIANTS:
        by_c = {}
        for c in levels:
            points = [r["phases"][v][str(c)] for r in rounds]
            calls = sum(p["calls"] for p in points)
            rows = sum((p["rows_per_call"] or 0) * p["calls"] for p in points)
            hist: dict[str, int] = {}
            for p in points:
                for size, n in p["calls_by_rows"].items():
                    hist[size] = hist.get(size, 0) + n
            by_c[str(c)] = {
                "images_per_s": statistics.median(p["images_per_s"] for p in points),
                "rounds_images_per_s": [p["images_per_s"] for p in points],
                **quantiles(data[v]["samples"][str(c)]),
                "samples": len(data[v]["samples"][str(c)]),
                "errors": sum(p["errors"] for p in points),
                "calls": calls, "rows": rows, "rows_per_call": rows / calls if calls else None,
                "calls_by_rows": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
                "network_ms_per_call": sum(p["network_ns"] for p in points) / calls / 1e6 if calls else None,
                "network_busy": sum(p["network_ns"] for p in points) / 1e9 / sum(p["seconds"] for p in points),
                "server_cores": statistics.median(p["server_cores"] for p in points),
                "client_cores": statistics.median(p["client_cores"] for p in points),
                "server_request_ms": statistics.median(p["server_request_ms"] or 0.0 for p in points),
            }
        variants[v] = {"model": MODEL_OF[v], "by_concurrency": by_c, "errors": data[v]["errors"],
                       "error_messages": data[v]["error_messages"]}
    runs = [s for r in rounds for s in r["inprocess_s"]]
    seconds = statistics.median(runs)
    measured = sum(r["seconds"] for r in rounds)
    return {
        "checks": checks,
        "variants": variants,
        "inprocess": {"images": INPROCESS_IMAGES, "steps": STEPS, "guidance_scale": reference.guidance,
                      "rows_per_call": reference.rows, "runs_s": runs, "seconds": seconds,
                      "images_per_s": INPROCESS_IMAGES / seconds, "session": session_options(reference.runtime)},
        "rounds": rounds,
        "others_cores": sum(r["others_cores"] * r["seconds"] for r in rounds) / measured,
        "quiet_wait": quiet,
        "measured_s": measured,
    }


def run(args: argparse.Namespace) -> dict:
    from tests.integration import server_fixtures as fx

    wall0 = time.perf_counter()
    results: dict = {**record("loadtests.images_bench", WATCHED, args.json)}
    with tempfile.TemporaryDirectory(prefix="deepserve-images-") as tmp:
        repo = Path(tmp) / "repo"
        t = time.perf_counter()
        params = build_repository(repo)
        build_s = time.perf_counter() - t
        reference = Reference(repo / BATCHED, params[BATCHED])
        weights = ROOT / "models" / "weights" / "digits_unet.safetensors"
        results["settings"] = {
            "rounds": args.rounds, "concurrency": list(args.levels), "steps": STEPS, "target": TARGET,
            "requests": {str(c): requests_for(c, args) for c in args.levels},
            "route": ROUTE, "guidance_scale": reference.guidance, "seed": SEED, "inprocess_runs": args.inprocess_runs,
            "max_step_rows": {"batched": int(params[BATCHED].get("max_step_rows", 64)),
                              "single": int(params[SINGLE]["max_step_rows"])},
            "parameters": params,
            "model_sha256": _sha(repo / BATCHED / "1" / "model.onnx"),
            "weights": {"path": str(weights.relative_to(ROOT)), "sha256": _sha(weights)} if weights.exists() else None,
            "client": "httpx " + package_version("httpx") + ", asyncio",
            "setup_s": {"build_repository": build_s},
        }
        try:
            with fx.running_server(repo, wait_for="ready", timeout_s=180) as server:
                results.update(asyncio.run(measure(f"http://{server.http_url}", server.pid, reference, args)))
                results["server_log"] = [line for line in server.log().splitlines() if line.strip()][-50:]
        finally:
            reference.runtime.unload()
    results["total_s"] = time.perf_counter() - wall0
    note_edits(results, WATCHED)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrency levels")
    parser.add_argument("--requests-per-client", type=int, default=6, help="requests per phase = this x concurrency ...")
    parser.add_argument("--min-requests", type=int, default=16, help="... but at least this many")
    parser.add_argument("--inprocess-runs", type=int, default=3, help="in-process samplings of 16 images per round")
    add_output_arguments(parser, quiet_wait_s=60.0)
    args = parser.parse_args()

    finish(args, run, render)


if __name__ == "__main__":
    main()
