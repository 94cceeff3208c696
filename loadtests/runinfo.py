"""What the serving benchmarks (``ensemble_overhead``, ``detect_bench``) share: the machine
and commit a run is recorded with, latency quantiles, waiting for a quiet machine, the
server's statistics diffed around a phase and pooled over rounds, and the ``--json`` /
``--out`` / ``--from-json`` tail of each script."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loadtests.procs import busy_cpu_s, own_cpu_s, tree_cpu_s

ROOT = Path(__file__).resolve().parents[1]


class Phase:
    """One measured phase of a benchmark: client-side latencies and failures."""

    def __init__(self) -> None:
        self.samples_ms: list[float] = []
        self.errors = 0
        self.messages: list[str] = []

    def failed(self, exc: BaseException) -> None:
        """Count a failed request (a benchmark keeps going); keep the first few messages."""
        self.errors += 1
        if len(self.messages) < 5:
            self.messages.append(f"{type(exc).__name__}: {exc}"[:300])


def quantiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
        "mean_ms": statistics.fmean(ordered),
    }


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
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


async def wait_for_quiet(server_pid: int, max_cores: float, timeout_s: float) -> dict:
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


def stats_delta(before: dict, after: dict) -> dict:
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


def pool(by_round: dict) -> dict:
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


def dirty(watched: tuple[str, ...]) -> list[str]:
    """Uncommitted paths among the code that is measured (read-only: no index refresh)."""
    lines = git("status", "--porcelain", "--", *watched).splitlines()
    return sorted({line[3:] for line in lines if line[3:]})


def record(module: str, watched: tuple[str, ...], json_path: str | None) -> dict:
    """The head of a results file: what ran, when, on which commit and machine."""
    started = datetime.datetime.now(datetime.UTC)
    return {
        "schema": 1,
        "command": f".venv/bin/python -m {module} " + " ".join(sys.argv[1:]),
        "date_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "dirty": dirty(watched),
        "machine": machine(),
        "json_path": json_path,
    }


def note_edits(results: dict, watched: tuple[str, ...]) -> None:
    """Record paths edited while the benchmark ran (someone changed the measured code)."""
    after = dirty(watched)
    if after != results["dirty"]:
        results["dirty_after"] = after


def add_output_arguments(parser: argparse.ArgumentParser, quiet_wait_s: float) -> None:
    """The quiet-machine wait and the --json / --out / --from-json options of every bench."""
    parser.add_argument("--quiet-cores", type=float, default=0.5,
                        help="before each round, wait for other processes to use at most this many cores")
    parser.add_argument("--quiet-wait", type=float, default=quiet_wait_s,
                        help="... for at most this many seconds in all (0: do not wait)")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--out", help="write the Markdown page here")
    parser.add_argument("--from-json", metavar="FILE", help="render the page from this results file; run nothing")


def quiet_wait_clause(results: dict) -> str:
    """How the run waited for a quiet machine, as a clause for the reports ("" if it did not)."""
    q = [w for w in results.get("quiet_wait") or [] if w.get("quiet") is not None]
    if not q:
        return ""
    return (f"; before each round it waited for other load of at most {q[0]['max_cores']:g} cores "
            f"({sum(w['waited_s'] for w in q):.0f} s in all; reached before {sum(bool(w['quiet']) for w in q)} "
            f"of {len(q)} rounds)")


def load_network(model_dir: Path):
    """A model's network loaded the way the server loads it (its config's runtime options):
    (runtime, signature)."""
    from dataclasses import replace

    from server import runtimes
    from server.repository.config import read_config
    from server.repository.model import LoadOptions, find_kind, instance_devices, model_file, runtime_options

    config = read_config(model_dir)
    devices = instance_devices(config)
    kind = find_kind(config, model_dir / "1")
    options = replace(runtime_options(config, "1", devices[0], 1, LoadOptions()), inputs=(), outputs=())
    runtime = runtimes.create(kind)
    signature = runtime.load(model_file(kind, config, model_dir / "1"), options)
    return runtime, signature


def session_options(runtime) -> dict:
    """The ONNX Runtime session's thread settings, as the reports print them ({} for other runtimes)."""
    try:
        so = runtime._session.get_session_options()
    except AttributeError:
        return {}
    return {"intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": str(so.execution_mode).rsplit(".", 1)[-1],
            "graph_optimization_level": str(so.graph_optimization_level).rsplit(".", 1)[-1],
            "allow_spinning": so.get_session_config_entry("session.intra_op.allow_spinning")}


def fmt(value, digits: int = 1) -> str:
    """A figure for a report ("n/a" when missing)."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


def div(a, b):
    """a / b, None when either is missing or b is 0."""
    return None if a is None or not b else a / b


def times(value) -> str:
    """A ratio as "1.23x" ("n/a" when missing)."""
    return "n/a" if value is None else f"{value:.2f}x"


def speedup_verdict(top: int, many, one, unit: str, speedup, target: float, met: bool, needed,
                    why_none: str) -> str:
    """"MET / MISSED: X unit at N streams / Y unit at 1 stream = Zx ..." for the scaling targets."""
    if speedup is None:
        return f"**MISSED**: the {top}-stream speedup could not be computed ({why_none})."
    figures = f"{fmt(many, 1)} {unit} at {top} streams / {fmt(one, 1)} {unit} at 1 stream = **{speedup:.2f}x**"
    if met:
        return f"**MET**: {figures}, at or above the {target:g}x target."
    return f"**MISSED**: {figures}, below the {target:g}x target (it needed {fmt(needed, 1)} {unit} at {top} streams)."


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def page_header(results: dict, title: str, module: str, page: str, machine_note: str, rest: str) -> list[str]:
    """A benchmark page's opening: title, how to regenerate it, command, date, commit, machine,
    other load, run time. ``machine_note`` ends the machine line; ``rest`` says what the run
    time beyond the measured phases went to."""
    m = results.get("machine", {})
    stem = page.rsplit("/", 1)[-1].removeprefix("benchmarks-").removesuffix(".md")
    lines = [
        f"# {title}",
        "",
        f"Written by `loadtests/{module}.py` from its results file; a benchmark, not a test. Regenerate the "
        f"page without rerunning: `.venv/bin/python -m loadtests.{module} --from-json "
        f"{results.get('json_path') or f'loadtests/results/{stem}-<date>.json'} --out {page}`.",
        "",
        f"* **Command:** `{results.get('command', 'n/a')}`",
        f"* **Date:** {results.get('date_utc', 'n/a')}; **commit:** `{results.get('commit', 'n/a')}`"
        + (f" (uncommitted changes in: {', '.join(results['dirty'])})" if results.get("dirty") else "")
        + (f"; **edited by someone else while it ran:** {', '.join(results['dirty_after'])}"
           if results.get("dirty_after") else ""),
        f"* **Machine:** {m.get('cores', '?')} cores ({m.get('cpu', 'unknown CPU')}), CPU only, {m.get('platform', '')}; "
        f"Python {m.get('python', '?')}. **The server and the load generator share the same {m.get('cores', '?')} "
        f"cores** (no pinning){machine_note}.",
    ]
    if "others_cores" in results:
        lines.append(f"* **Other load** on the machine during the measured phases: {results['others_cores']:.2f} cores "
                     f"on average (busy CPU that is neither the server's nor the load generator's, `/proc/stat`)"
                     f"{quiet_wait_clause(results)}")
    if "total_s" in results:
        total, measured = results.get("total_s"), results.get("measured_s")
        lines.append(f"* **Run time:** {'n/a' if total is None else f'{total:.0f}'} s in all "
                     f"({'n/a' if measured is None else f'{measured:.0f}'} s measured; the rest is {rest})")
    return lines


def finish(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict], render: Callable[[dict], str]) -> None:
    """Run (or, with ``--from-json``, re-read) the results, write ``--json``, render ``--out``."""
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
