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
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from loadtests.ensemble_report import MODEL_OF, STEPS, VARIANTS, ratios, render  # noqa: F401 (re-exported)
from loadtests.procs import busy_cpu_s, own_cpu_s, tree_cpu_s
from loadtests.runinfo import (
    add_output_arguments,
    finish,
    note_edits,
    pool,
    quantiles,
    record,
    stats_delta,
    wait_for_quiet,
)

ROOT = Path(__file__).resolve().parents[1]
Call = Callable[[], Awaitable]

KEEP = {"digits", "digits_pipeline", *STEPS}  # the models the server is given
MAX_ERROR_SHARE = 0.1  # a phase with more failed requests than this aborts the run


# ---- the run ----------------------------------------------------------------------------

# The measured code, checked for uncommitted edits before and after a run.
WATCHED = ("server/", "models/", "export/", "tests/integration/kinds_fixtures.py", "tests/integration/server_fixtures.py", "loadtests/procs.py")


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
            seen = await wait_for_quiet(server_pid, args.quiet_cores, budget)
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
                        **quantiles(phase.samples_ms),
                        "requests": done,
                        "errors": phase.errors,
                        "seconds": wall,
                        "rps": len(phase.samples_ms) / elapsed,
                        "server_cores": server_s / wall,
                        "server_cpu_ms": server_s * 1e3 / done,
                        "client_cpu_ms": client_s * 1e3 / done,
                        "others_cores": others,
                    }
                    data[name]["stats"][key][round_index + 1] = stats_delta(before, after)
                data[name]["rounds"].append(row)
    finally:
        await client.close()
    for name in VARIANTS:
        rounds = data[name]["rounds"]
        for key in ("c1", "cN"):
            fields = ("p50_ms", "p99_ms", "mean_ms", "rps", "server_cpu_ms", "client_cpu_ms", "server_cores")
            data[name][key] = {f: statistics.median(r[key][f] for r in rounds) for f in fields}
            data[name]["stats"][key] = {"by_round": data[name]["stats"][key], "pooled": pool(data[name]["stats"][key])}
    phases = [row[key] for name in VARIANTS for row in data[name]["rounds"] for key in ("c1", "cN")]
    wall = sum(ph["seconds"] for ph in phases)
    return {
        "checks": checks,
        "variants": data,
        "others_cores": sum(ph["others_cores"] * ph["seconds"] for ph in phases) / wall,  # during the phases
        "quiet_wait": quiet,
        "measured_s": wall,
    }


# ---- helpers ---------------------------------------------------------------------------


def _repository(dest: Path) -> Path:
    from tests.integration.kinds_fixtures import build_kinds_repository

    build_kinds_repository(dest)
    for entry in dest.iterdir():  # serve only what is measured: no idle torch runtime, no broken models
        if entry.is_dir() and entry.name not in KEEP:
            shutil.rmtree(entry)
    return dest


def run(args: argparse.Namespace) -> dict:
    from tests.integration import server_fixtures as fx

    wall0 = time.perf_counter()
    results: dict = {
        **record("loadtests.ensemble_overhead", WATCHED, args.json),
        "settings": {"rounds": args.rounds, "requests": args.requests, "latency_requests": args.latency_requests,
                     "concurrency": args.concurrency, "images": 450, "protocol": "HTTP, binary tensors (tritonclient.http.aio)",
                     "models": MODEL_OF},
    }
    with tempfile.TemporaryDirectory(prefix="deepserve-ensemble-") as tmp:
        repo = _repository(Path(tmp) / "repo")
        with fx.running_server(repo, wait_for="ready") as server:
            results.update(asyncio.run(measure(server.http_url, server.pid, args)))
            results["server_log"] = [line for line in server.log().splitlines() if line.strip()][-50:]
    results["total_s"] = time.perf_counter() - wall0
    note_edits(results, WATCHED)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests per variant per round at --concurrency")
    parser.add_argument("--latency-requests", type=int, default=500, help="sequential requests per variant per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    add_output_arguments(parser, quiet_wait_s=60.0)
    args = parser.parse_args()

    finish(args, run, render)


if __name__ == "__main__":
    main()
