"""Render the figures ``loadtests.bench`` collected as ``docs/benchmarks.md``.

    .venv/bin/python -m loadtests.report loadtests/results/bench-latest.json --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# The performance issue's targets; the README's summary (loadtests.readme_summary) reads them here too.
TARGETS = {"efficiency": 0.8, "overhead_ms": 0.5, "fastapi_ratio": 1.5, "grpc_http_ratio": 0.9}


class Figures:
    def __init__(self, data: dict) -> None:
        self.data = data
        self.points = [p for p in data["points"] if not p.get("profiled") and "failed" not in p]

    def get(self, server: str, model: str, fmt: str, concurrency: int) -> dict | None:
        for p in self.points:
            if (p["server"], p["model"], p["format"], p["concurrency"]) == (server, model, fmt, concurrency):
                return p
        return None

    def inprocess(self, model: str) -> list[dict]:
        return self.data["inprocess"].get(model, {}).get("points", [])


def _f(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _x(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, digits)


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _rps(p: dict | None) -> float | None:
    return None if p is None else p["rps"]


def headline(fig: Figures) -> dict:
    """The summary's figures and the points they come from; ``loadtests.readme_summary`` uses the same."""
    h: dict = {"best": max(fig.inprocess("resnet_bench"), key=lambda p: p["rows_per_s"], default=None),
               "ds64": fig.get("deepserve", "resnet_bench", "v2-binary", 64),
               "ds64_i2": fig.get("deepserve", "resnet_bench_i2", "v2-binary", 64),
               "mlp_inproc": next((p for p in fig.inprocess("mlp_tiny") if p["batch"] == 1), None),
               "c1_nb": fig.get("deepserve", "mlp_tiny_nobatch", "v2-binary", 1),
               "c1_b": fig.get("deepserve", "mlp_tiny", "v2-binary", 1),
               "ds32": fig.get("deepserve", "mlp_tiny", "v2-binary", 32),
               "fa_json": fig.get("fastapi-naive", "mlp_tiny", "json-list", 32),
               "fa_raw": fig.get("fastapi-naive", "mlp_tiny", "raw-bytes", 32)}
    best_rows = h["best"] and h["best"]["rows_per_s"]
    h["eff"] = _ratio(_rps(h["ds64"]), best_rows)
    h["eff_i2"] = _ratio(_rps(h["ds64_i2"]), best_rows)
    for key, point in (("over_nb", h["c1_nb"]), ("over_b", h["c1_b"])):
        h[key] = (None if point is None or h["mlp_inproc"] is None
                  else round(point["p50_ms"] - h["mlp_inproc"]["p50_ms"], 3))
    h["r_json"] = _ratio(_rps(h["ds32"]), _rps(h["fa_json"]))
    h["r_raw"] = _ratio(_rps(h["ds32"]), _rps(h["fa_raw"]))
    return h


def batching_ratio(fig: Figures, model: str, concurrency: int) -> float | None:
    """deepserve req/s with dynamic batching over the ``_nobatch`` twin's, at one load point."""
    return _ratio(_rps(fig.get("deepserve", model, "v2-binary", concurrency)),
                  _rps(fig.get("deepserve", f"{model}_nobatch", "v2-binary", concurrency)))


def litserve_ratio(fig: Figures, model: str, concurrency: int) -> float | None:
    """deepserve (v2-binary) req/s over LitServe's best body format, at one load point."""
    lit = (_rps(fig.get("litserve", model, fmt, concurrency)) for fmt in ("json-list", "json-b64"))
    best = max((x for x in lit if x is not None), default=None)
    return _ratio(_rps(fig.get("deepserve", model, "v2-binary", concurrency)), best)


def _queue_delay_us(configs: dict, model: str) -> str:
    """``max_queue_delay_microseconds`` of a model as the run's config.pbtxt says it (0 when absent)."""
    match = re.search(r"max_queue_delay_microseconds:\s*(\d+)", configs.get(model, ""))
    return match.group(1) if match else ("0" if "dynamic_batching" in configs.get(model, "") else "?")


def summary(fig: Figures, configs: dict | None = None) -> tuple[list[str], dict]:
    h = headline(fig)
    delay = _queue_delay_us(configs or {}, "mlp_tiny")
    best, ds64, ds64_i2, mlp_inproc = h["best"], h["ds64"], h["ds64_i2"], h["mlp_inproc"]
    c1_nb, c1_b, ds32, fa_json, fa_raw = h["c1_nb"], h["c1_b"], h["ds32"], h["fa_json"], h["fa_raw"]
    eff, eff_i2, over_nb, over_b, r_json, r_raw = (h[k] for k in ("eff", "eff_i2", "over_nb", "over_b", "r_json", "r_raw"))
    rows = [
        "| # | figure | measured | raw numbers | target | |",
        "|---|---|---:|---|---|---|",
        (f"| 1 | serving efficiency: deepserve resnet_bench @64 clients / in-process ORT best batch | "
        f"**{_f(eff, 2)}** | {_f(_rps(ds64))} req/s vs {_f(best and best['rows_per_s'])} rows/s "
        f"(batch {best and best['batch']}) | >= 0.8 | {_met(None if eff is None else eff >= TARGETS['efficiency'])} |"),
        (f"| 1b | same, config variant `resnet_bench_i2` (2 instances x 1 thread) | {_f(eff_i2, 2)} | "
        f"{_f(_rps(ds64_i2))} req/s | (>= 0.8) | {_met(None if eff_i2 is None else eff_i2 >= TARGETS['efficiency'])} |"),
        (f"| 2a | request overhead: p50 @1 client minus in-process p50, mlp_tiny_nobatch | **+{_f(over_nb, 3)} ms** | "
        f"{_f(c1_nb and c1_nb['p50_ms'], 3)} ms vs {_f(mlp_inproc and mlp_inproc['p50_ms'], 3)} ms | <= +0.5 ms | "
        f"{_met(None if over_nb is None else over_nb <= TARGETS['overhead_ms'])} |"),
        (f"| 2a' | same on mlp_tiny (dynamic batching, max_queue_delay {delay} us) | +{_f(over_b, 3)} ms | "
        f"{_f(c1_b and c1_b['p50_ms'], 3)} ms | (<= +0.5 ms) | "
        f"{_met(None if over_b is None else over_b <= TARGETS['overhead_ms'])} |"),
        (f"| 2b | req/s @32 clients, mlp_tiny: deepserve / FastAPI naive (JSON body) | **{_x(r_json)}** | "
        f"{_f(_rps(ds32))} vs {_f(_rps(fa_json))} req/s | >= 1.5x | "
        f"{_met(None if r_json is None else r_json >= TARGETS['fastapi_ratio'])} |"),
        (f"| 2b' | same vs FastAPI naive (raw-bytes body) | **{_x(r_raw)}** | {_f(_rps(ds32))} vs "
        f"{_f(_rps(fa_raw))} req/s | >= 1.5x | {_met(None if r_raw is None else r_raw >= TARGETS['fastapi_ratio'])} |"),
    ]
    return rows, {"efficiency": eff, "overhead_nobatch_ms": over_nb, "overhead_batch_ms": over_b,
                  "fastapi_json_ratio": r_json, "fastapi_raw_ratio": r_raw}


def _point_cells(p: dict | None) -> str:
    if p is None:
        return "n/a | n/a | n/a"
    return f"{_f(p['rps'])} | {_f(p['p50_ms'], 2)} | {_f(p['p99_ms'], 2)}"


def _cpu(p: dict | None) -> str:
    if p is None:
        return "n/a | n/a"
    per_request = 1e3 * p["server_cpu_cores"] / p["rps"] if p["rps"] else float("nan")
    return (f"{p['server_cpu_cores']} / {p['loadgen_cpu_cores']} / {p.get('other_cpu_cores', '?')} | "
            f"{per_request:.2f}")


def section_efficiency(fig: Figures) -> list[str]:
    out = ["| in-process batch | runs | rows/s | p50 per run (ms) | p99 per run (ms) | CPU cores | CPU ms per row |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {p['batch']} | {p['runs']} | {_f(p['rows_per_s'])} | {_f(p['p50_ms'], 3)} | {_f(p['p99_ms'], 3)} | "
            f"{p.get('own_cpu_cores', 'n/a')} | {_f(1e3 * p.get('own_cpu_cores', float('nan')) / p['rows_per_s'], 2)} |"
            for p in fig.inprocess("resnet_bench")]
    out += ["", "| deepserve, 64 clients | req/s | p50 (ms) | p99 (ms) | errors | CPU cores server / loadgen / other | server CPU ms per request |",
            "|---|---:|---:|---:|---:|---|---:|"]
    for model in ("resnet_bench", "resnet_bench_i2", "resnet_bench_nobatch"):
        p = fig.get("deepserve", model, "v2-binary", 64)
        out.append(f"| `{model}` | {_point_cells(p)} | {p and p['errors']} | {_cpu(p)} |")
    return out + ["", *efficiency_ceiling(fig)]


def efficiency_ceiling(fig: Figures, cores: int = 2) -> list[str]:
    """How far the server could go on these cores at its measured CPU per request: the
    load generator's cores are not the server's, and every request costs the server its
    front end and batching on top of the runtime's share."""
    best = max(fig.inprocess("resnet_bench"), key=lambda p: p["rows_per_s"], default=None)
    p = fig.get("deepserve", "resnet_bench", "v2-binary", 64)
    if not best or not p or not p["rps"] or not best.get("own_cpu_cores"):
        return []
    server_ms = 1e3 * p["server_cpu_cores"] / p["rps"]
    runtime_ms = 1e3 * best["own_cpu_cores"] / best["rows_per_s"]
    ceiling_rps = (cores - p["loadgen_cpu_cores"]) / server_ms * 1e3
    return [(f"Ceiling on these {cores} cores: the load generator took {p['loadgen_cpu_cores']} cores at 64 clients and "
             f"each request cost the server {server_ms:.2f} ms of CPU (in-process: {runtime_ms:.2f} ms per row at batch "
             f"{best['batch']}), so with every remaining core busy the server could answer at most "
             f"{_f(ceiling_rps)} req/s = **{ceiling_rps / best['rows_per_s']:.2f}** of in-process; the 0.8 target needs "
             f"the server's CPU per request below {(cores - p['loadgen_cpu_cores']) / (0.8 * best['rows_per_s']) * 1e3:.2f} "
             f"ms, i.e. its front end and batching under "
             f"{(cores - p['loadgen_cpu_cores']) / (0.8 * best['rows_per_s']) * 1e3 - runtime_ms:.2f} ms per request.")]


def section_overhead(fig: Figures) -> list[str]:
    mlp = next((p for p in fig.inprocess("mlp_tiny") if p["batch"] == 1), None)
    out = [(f"In-process `session.run` on mlp_tiny, batch 1: p50 {_f(mlp and mlp['p50_ms'], 3)} ms, "
           f"p99 {_f(mlp and mlp['p99_ms'], 3)} ms."), "",
           ("| server | body | clients | req/s | p50 (ms) | p99 (ms) | errors | CPU cores server / loadgen / other | "
           "server CPU ms per request |"), "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    rows = [("deepserve", "mlp_tiny_nobatch", "v2-binary", 1), ("deepserve", "mlp_tiny", "v2-binary", 1),
            ("fastapi-naive", "mlp_tiny", "json-list", 1), ("fastapi-naive", "mlp_tiny", "raw-bytes", 1),
            ("deepserve", "mlp_tiny", "v2-binary", 32), ("deepserve", "mlp_tiny_nobatch", "v2-binary", 32),
            ("deepserve", "mlp_tiny", "v2-json", 32),
            ("fastapi-naive", "mlp_tiny", "json-list", 32), ("fastapi-naive", "mlp_tiny", "raw-bytes", 32),
            ("fastapi-naive+ds-opts", "mlp_tiny", "json-list", 32),
            ("fastapi-naive+ds-opts", "mlp_tiny", "raw-bytes", 32)]
    for server, model, fmt, c in rows:
        p = fig.get(server, model, fmt, c)
        out.append(f"| {server} | `{model}` {fmt} | {c} | {_point_cells(p)} | {p and p['errors']} | {_cpu(p)} |")
    return out


def section_batching(fig: Figures) -> list[str]:
    out = [("| model | clients | batching: req/s | p50 | p99 | off (`_nobatch`): req/s | p50 | p99 | "
           "throughput ratio on/off |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model in ("resnet_bench", "mlp_tiny"):
        for c in (1, 8, 32, 64):
            on = fig.get("deepserve", model, "v2-binary", c)
            off = fig.get("deepserve", f"{model}_nobatch", "v2-binary", c)
            out.append(f"| `{model}` | {c} | {_point_cells(on)} | {_point_cells(off)} | "
                       f"{_f(batching_ratio(fig, model, c), 2)} |")
    out.append("")
    out.append("Latencies in ms. deepserve over the binary tensor extension, one request = one row.")
    return out


def section_peer(fig: Figures) -> list[str]:
    out = [("| model | clients | deepserve v2-binary: req/s | p50 | p99 | LitServe JSON list: req/s | p50 | p99 | "
           "LitServe base64: req/s | p50 | p99 | deepserve / best LitServe |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model in ("resnet_bench", "mlp_tiny"):
        for c in (1, 8, 32, 64):
            ds = fig.get("deepserve", model, "v2-binary", c)
            lj = fig.get("litserve", model, "json-list", c)
            lb = fig.get("litserve", model, "json-b64", c)
            out.append(f"| `{model}` | {c} | {_point_cells(ds)} | {_point_cells(lj)} | {_point_cells(lb)} | "
                       f"{_x(litserve_ratio(fig, model, c))} |")
    failed = [p for p in fig.data["points"] if p["server"] == "litserve" and "failed" in p]
    if failed:
        out.append("")
        out += [f"* LitServe {p['model']} {p['format']} c={p['concurrency']} failed: {p['failed']}" for p in failed]
    return out


def _peer_cell(p: dict | None) -> str:
    return "n/a | n/a" if p is None else f"{_f(p['rps'])} | {_f(p['p99_ms'], 2)}"


def _cpu_ms(p: dict) -> float | None:
    return 1e3 * p["server_cpu_cores"] / p["rps"] if p.get("rps") and "server_cpu_cores" in p else None


def _who(p: dict) -> str:
    from loadtests.plots import LABELS

    return f"{LABELS[p['server']]} ({p['format']})"


def peer_verdict(points: dict[str, dict[int, dict]], concurrency: int) -> str:
    """Is deepserve ahead on throughput at equal or better p99 than every peer, at one load point?

    ``points`` is ``loadtests.plots.series(data)[model]``; each peer counts with its fastest format.
    """
    ds = points.get("deepserve", {}).get(concurrency)
    rivals = [p for server, by_c in points.items() if server != "deepserve" and (p := by_c.get(concurrency))]
    if ds is None or not rivals:
        return "not measured (deepserve or every peer missing)"
    fastest = max(rivals, key=lambda p: p["rps"])
    lowest = min(rivals, key=lambda p: p["p99_ms"])
    ratio = ds["rps"] / fastest["rps"]
    ds_cpu, cpu = _cpu_ms(ds), _cpu_ms(fastest)
    cpu_text = (f"server CPU per request {_f(ds_cpu, 3)} ms vs {_f(cpu, 3)} ms, server cores used "
                f"{ds.get('server_cpu_cores', 'n/a')} vs {fastest.get('server_cpu_cores', 'n/a')}")
    if ratio <= 1.0:
        return (f"**not ahead**: {_who(fastest)} {_f(fastest['rps'])} req/s vs deepserve {_f(ds['rps'])} "
                f"(deepserve {ratio:.2f}x, {100 * (1 - ratio):.0f} % fewer); p99 {_f(fastest['p99_ms'], 2)} vs "
                f"{_f(ds['p99_ms'], 2)} ms; {cpu_text}.")
    if lowest["p99_ms"] < ds["p99_ms"]:
        return (f"**ahead on throughput, not on p99**: {_f(ds['rps'])} req/s, {ratio:.2f}x the fastest peer "
                f"({_who(fastest)}, {_f(fastest['rps'])} req/s), but {_who(lowest)} has p99 "
                f"{_f(lowest['p99_ms'], 2)} ms vs deepserve's {_f(ds['p99_ms'], 2)} ms "
                f"({100 * (1 - lowest['p99_ms'] / ds['p99_ms']):.0f} % lower, at {_f(lowest['rps'])} req/s).")
    return (f"**ahead**: {_f(ds['rps'])} req/s, {ratio:.2f}x the fastest peer ({_who(fastest)}, "
            f"{_f(fastest['rps'])} req/s), at p99 {_f(ds['p99_ms'], 2)} ms vs the peers' lowest "
            f"{_f(lowest['p99_ms'], 2)} ms ({_who(lowest)}).")


def _versions(meta: dict) -> str:
    peers = meta.get("peers") or {}
    parts = [f"LitServe {meta.get('litserve') or 'n/a'}"]
    for name, label, dist in (("kserve", "KServe", "kserve"), ("rayserve", "Ray Serve", "ray")):
        v = peers.get(name) or {}
        extra = ", ".join(f"{d} {v[d]}" for d in ("fastapi", "uvicorn", "onnxruntime") if v.get(d))
        parts.append(f"{label} {v.get(dist) or 'n/a'}" + (f" ({extra})" if extra else ""))
    return "; ".join(parts)


def section_peers(data: dict, img_prefix: str = "img/") -> list[str]:
    """Every server at every client count on both models; verdicts at >= 8 clients; the plots."""
    from loadtests.plots import CONCURRENCY, LABELS, SERVERS, image_name, series

    meta = data.get("meta", {})
    s = series(data)
    out = [
        (f"The same ONNX files, the same session options (deepserve's: graph optimisation ALL, sequential, "
         "1 inter-op thread, no spinning), the same load generator and client counts; each peer in a virtual "
         f"environment of its own (`.venv/bin/python -m loadtests.peers setup`, under `{meta.get('peers_root', '/work/peer-venvs')}`), "
         f"none of them a dependency of deepserve. Versions: {_versions(meta)}. Every server on the same "
         f"{meta.get('cores', '?')} cores as the load generator."),
        "",
        "* **deepserve**: v2 binary tensors (tritonclient's body), dynamic batching `max_batch_size: 64`, "
        "`max_queue_delay_microseconds: 500`.",
        "* **FastAPI (no batching)**: `loadtests/baselines/fastapi_naive.py` with deepserve's session options "
        "(`fastapi-naive+ds-opts`), one `session.run` per request; raw FP32 bytes (`/predict_raw`, an async "
        "endpoint), and on mlp_tiny at 32 clients also the JSON list.",
        "* **LitServe**: section 4's server (`LitAPI(max_batch_size=64, batch_timeout=0.0005)`), JSON list and "
        "base64-in-JSON.",
        "* **KServe (no batching)**: `loadtests/baselines/kserve_onnx.py`, a `kserve.Model` served by "
        "`kserve.ModelServer` (one uvicorn worker, gRPC off, per-request logging off), which speaks the v2 REST "
        "protocol itself: the same v2 JSON and v2 binary bodies as deepserve. KServe's Python server has **no "
        "batcher**: KServe batches with its Go agent sidecar (`spec.predictor.batcher`: `maxBatchSize`, "
        "`maxLatency`), which exists only in a Kubernetes InferenceService, not in the pip package; so one "
        "`session.run` per request, inline in the event loop (`predict` is a coroutine). Its REST binary path is "
        "not zero-copy: `InferRequest.from_bytes` turns the received tensor into a Python list "
        "(`set_data_from_numpy(..., binary_data=False)`, one `.item()` per element) and `as_numpy()` turns it "
        "back, about 3.5 ms per request for resnet_bench's 12,288 floats on this CPU (2.5x the model's 1.4 ms), "
        "so its v2-binary is no faster than its v2 JSON there.",
        "* **Ray Serve**: `loadtests/baselines/rayserve_onnx.py`, one deployment, one replica behind Ray Serve's "
        "HTTP proxy (Ray's own processes: GCS, raylet, proxy, controller, replica), `@serve.batch("
        "max_batch_size=64, batch_wait_timeout_s=0.0005)` (LitServe's settings), `max_ongoing_requests=128`; "
        "JSON list.",
        "",
        ("Each peer's cell is its fastest body format at that point (the verdicts name it). Requests per second "
         "and p99 in ms; one request = one row."),
        "",
        "| model | clients | " + " | ".join(f"{label}: req/s | p99" for _, label, _ in SERVERS) + " |",
        "|---|---:|" + "---:|---:|" * len(SERVERS),
    ]
    for model, servers in s.items():
        for c in CONCURRENCY:
            out.append(f"| `{model}` | {c} | " + " | ".join(_peer_cell(servers[server].get(c)) for server, _, _ in SERVERS)
                       + " |")
    out += ["", ("Is deepserve ahead on throughput at equal or better p99 than every peer? (8 clients and more; "
                 "the comparison is with each peer's fastest format, and where deepserve is not ahead the line says "
                 "by how much and how the server CPU compares.)"), ""]
    behind = []
    for model, servers in s.items():
        for c in CONCURRENCY:
            if c < 8:
                continue
            line = peer_verdict(servers, c)
            out.append(f"* `{model}` at {c} clients: {line}")
            if not line.startswith("**ahead**") and not line.startswith("not measured"):
                behind.append(f"`{model}` at {c}")
    out += ["", (f"Not ahead (throughput, or p99): {', '.join(behind)}." if behind
                 else "deepserve is ahead at every point with 8 clients or more, against every peer measured there.")]
    failed = [p for p in data.get("points", []) if p["server"] in LABELS and p["server"] != "deepserve" and "failed" in p]
    if failed:
        out.append("")
        out += [f"* {LABELS[p['server']]} {p['model']} {p['format']} c={p['concurrency']} failed: {p['failed']}"
                for p in failed]
    out += [""] + [f"![{model}: throughput and p99 against clients, every server]({img_prefix}{image_name(model)})"
                   for model in s]
    return out


def _litserve_venv(data: dict) -> str:
    cmds = data.get("servers", {}).get("litserve", {}).get("cmds") or ["/work/peer-venv/bin/python"]
    return cmds[0].split()[0].removesuffix("/bin/python")


def section_profiles(data: dict) -> list[str]:
    from loadtests.profile_summary import render

    out: list[str] = []
    for name, prof in data.get("profiles", {}).items():
        if "summary" not in prof:
            continue
        p = prof["point"]
        out += [f"### {name}", "",
                (f"Profiled run (py-spy 100 Hz, `--nonblocking --threads`, not used in the tables above): "
                f"{_f(p['rps'])} req/s, p50 {_f(p['p50_ms'], 2)} ms."), "", render(prof["summary"]), ""]
    return out


def _noise(data: dict) -> str:
    points = [p for p in data["points"] if "other_cpu_cores" in p and not p.get("profiled")]
    inproc = [p for m in data["inprocess"].values() for p in m["points"] if "other_cpu_cores" in p]
    limit = data["meta"].get("max_other_cores", 0.2)
    noisy = [p for p in points if p["other_cpu_cores"] > limit]
    noisy_in = [p for p in inproc if p["other_cpu_cores"] > limit]
    others = [p["other_cpu_cores"] for p in points]
    if not others:
        return ""
    line = (f"* **Noise:** other processes used {min(others)}-{max(others)} cores during the load points "
            f"(mean {sum(others) / len(others):.2f}); {len(noisy)} of {len(points)} load points and "
            f"{len(noisy_in)} of {len(inproc)} in-process points stayed above {limit} cores after redos")
    if noisy:
        line += ": " + ", ".join(f"{p['server']} {p['model']} {p['format']} c={p['concurrency']} "
                                 f"({p['other_cpu_cores']})" for p in noisy)
    return line + "."


def section_ensemble(results_dir: Path = Path(__file__).with_name("results")) -> list[str]:
    """The headline of the newest ``ensemble-*.json`` (its own run; the page has the rest)."""
    from loadtests.ensemble_report import ratios

    files = sorted(results_dir.glob("ensemble-*.json"))
    if not files:
        return ["Not measured yet: `python -m loadtests.ensemble_overhead`."]
    results = json.loads(files[-1].read_text())
    r, v = ratios(results), results["variants"]
    return [
        (f"`loadtests/ensemble_overhead.py`, a separate run (`{files[-1].name}`, {results['date_utc']}, commit "
         f"`{results['commit']}`; method, attribution and raw figures in `docs/benchmarks-ensemble.md`): the "
         "`digits_pipeline` ensemble (PNG bytes -> Python decode -> digits CNN -> Python top-k, plus an image-size "
         "branch) against calling `digits` directly with the pre-decoded tensor, HTTP binary, one image per request."),
        "",
        "| figure | ensemble | direct | ratio |",
        "|---|---|---|---|",
        (f"| p50 at 1 client | {v['ensemble']['c1']['p50_ms']:.2f} ms | {v['direct']['c1']['p50_ms']:.2f} ms | "
         f"{r['latency_ratio_c1']:.2f}x (+{r['added_p50_ms_c1']:.2f} ms) |"),
        (f"| throughput at {results['settings']['concurrency']} clients | {v['ensemble']['cN']['rps']:,.0f} req/s | "
         f"{v['direct']['cN']['rps']:,.0f} req/s | {r['throughput_ratio_cN']:.2f}x |"),
        (f"| server CPU per request at {results['settings']['concurrency']} clients | "
         f"{v['ensemble']['cN']['server_cpu_ms']:.3f} ms | {v['direct']['cN']['server_cpu_ms']:.3f} ms | "
         f"{r['cpu_ratio_cN']:.2f}x |"),
    ]


def section_detect(results_dir: Path = Path(__file__).with_name("results")) -> list[str]:
    """The requirement's verdict from the newest ``detect-*.json`` (its own run)."""
    from loadtests.detect_report import verdict

    files = sorted(results_dir.glob("detect-*.json"))
    if not files:
        return ["Not measured yet: `python -m loadtests.detect_bench`."]
    results = json.loads(files[-1].read_text())
    return [
        (f"`loadtests/detect_bench.py`, a separate run (`{files[-1].name}`; p50 / p99 at 1 and 32 clients, where the "
         "time goes, method and raw figures in `docs/benchmarks-detect.md`): 32 clients uploading 640x480 JPEGs "
         "to `/v1/detect` against the detector's best in-process throughput on pre-decoded tensors, target >= 0.7."),
        "",
        f"* {verdict(results)}",
    ]


def section_images(results_dir: Path = Path(__file__).with_name("results")) -> list[str]:
    """The requirement's verdict from the newest ``images-*.json`` (its own run)."""
    from loadtests.images_report import headline, verdict

    files = sorted(results_dir.glob("images-*.json"))
    if not files:
        return ["Not measured yet: `python -m loadtests.images_bench`."]
    results = json.loads(files[-1].read_text())
    h = headline(results)
    return [
        (f"`loadtests/images_bench.py`, a separate run (`{files[-1].name}`; images/s, p50 / p99 and rows per network "
         "call at 1, 4 and 16 concurrent, method and raw figures in `docs/benchmarks-images.md`): `digits_diffusion` "
         "(step-level batched sampler) against a copy limited to one request per network call, "
         "`/v1/images/generations`, 25 steps, target >= 4x at 16 concurrent."),
        "",
        f"* {verdict(results)}",
        f"* Server vs in-process lock-step sampling: {_x(h['server_vs_inprocess'])}.",
    ]


def section_soak(results_dir: Path = Path(__file__).with_name("results")) -> list[str]:
    """The headline of the newest ``soak-*.json`` (its own run; the page has every minute)."""
    from loadtests.soak_report import headline as soak_headline
    from loadtests.soak_report import verdicts

    files = sorted(results_dir.glob("soak-*.json"))
    if not files:
        return ["Not measured yet: `make soak` (`python -m loadtests.soak`)."]
    results = json.loads(files[-1].read_text())
    h = soak_headline(results)
    return [
        (f"`loadtests/soak.py`, a separate run (`{files[-1].name}`, {results['date_utc']}, commit `{results['commit']}`; "
         "every minute, the probe and the method in `docs/benchmarks-soak.md`): "
         f"{h['minutes']} minutes of open-loop mixed traffic (v2 HTTP and gRPC on `digits`, `/v1/classify`, image "
         "generation, a trickle of bad requests) at "
         f"{h['load']:.0%} of the probed saturation, on a machine shared with other sessions' work."),
        "",
        *(f"* {line}" for line in verdicts(h)),
    ]


def section_transcription(results_dir: Path = Path(__file__).with_name("results")) -> list[str]:
    """The headline of the newest ``transcription-*.json`` (its own run)."""
    from loadtests.transcription_report import headline

    files = sorted(results_dir.glob("transcription-*.json"))
    if not files:
        return ["Not measured yet: `python -m loadtests.transcription_bench`."]
    results = json.loads(files[-1].read_text())
    return [
        (f"`loadtests/transcription_bench.py`, a separate run (`{files[-1].name}`; method, every round and the "
         "stage table in `docs/benchmarks-transcription.md`): long espeak-ng recordings through "
         "`/v1/audio/transcriptions` at 1, 4 and 8 concurrent streams; targets RTF <= 0.05 at 1 stream and "
         ">= 3x the 1-stream throughput at 8."),
        "",
        *headline(results),
    ]


def section_generation(results_dir: Path = Path(__file__).with_name("results")) -> list[str]:
    """The headline of the newest ``generation-*.json`` (its own run)."""
    from loadtests.generation_report import headline

    files = sorted(results_dir.glob("generation-*.json"))
    if not files:
        return ["Not measured yet: `python -m loadtests.generation_bench`."]
    results = json.loads(files[-1].read_text())
    return [
        (f"`loadtests/generation_bench.py`, a separate run (`{files[-1].name}`; method, latency percentiles at 1, 4 "
         "and 16 streams, baselines and the structured-output cost in `docs/benchmarks-generation.md`): the default "
         "`textgen` model streamed over `/v1/completions`; target: tokens/s at 16 streams >= 5x a single stream, "
         "against transformers' `generate()` one at a time and statically batched on the same weights."),
        "",
        *headline(results),
    ]


def render(data: dict) -> str:
    fig = Figures(data)
    meta = data["meta"]
    rows, _ = summary(fig, data.get("configs", {}))
    session = data["inprocess"].get("resnet_bench", {}).get("session", {})
    out = [
        "# Benchmarks",
        "",
        ("Written by `loadtests/bench.py`; do not edit by hand, re-run it. Benchmarks, not tests: "
        "nothing here is asserted, and a missed target is reported as measured."),
        "",
        f"* **Command:** `{meta['command']}` (from the repository root; wall time {meta.get('wall_s', '?')} s)",
        f"* **Date:** {meta['date']}; commit `{meta['commit']}`"
        + (" (with uncommitted changes under server/)" if meta.get("server_tree_dirty") else ""),
        (f"* **Machine:** {meta['cores']} cores ({meta['cpu']}), {meta['memory_gib']} GiB, CPU only, no GPU; "
        f"{meta['platform']}; Python {meta['python']}, onnxruntime {meta['onnxruntime']}, "
        f"LitServe {meta['litserve']}"),
        (f"* **Load:** `loadtests/loadgen.py`, closed loop, one keep-alive connection per client, in the "
        f"benchmark process, **on the same {meta['cores']} cores as the server**; each point "
        f"{meta['warmup_s']} s warm-up (discarded) + {meta['duration_s']} s measured; one request = one row "
        "(batch 1); every answer is checked for shape, and each client's first answer against in-process ONNX "
        "Runtime. Latency is client-side (send to last body byte). The \"CPU cores\" columns are CPU seconds "
        "per wall second of the server process tree, of the load generator, and of every other process on "
        "the machine (other sessions share this host; a point where others took more than "
        f"{meta.get('max_other_cores', 0.2)} cores was redone, up to {meta.get('retries', 2)} times, keeping the "
        "quietest attempt)."),
        _noise(data),
        "",
        "## Summary",
        "",
        *rows,
        "",
        "## 1. Serving efficiency (resnet_bench)",
        "",
        ("In-process: deepserve's own `OnnxRuntime` runtime class, loaded with the options the server derives "
        f"from the same config.pbtxt: `{json.dumps(session)}`; back-to-back `execute` on one thread."),
        "",
        *section_efficiency(fig),
        "",
        "## 2. Request overhead (mlp_tiny)",
        "",
        ("FastAPI naive = `loadtests/baselines/fastapi_naive.py`: `/predict` is a sync endpoint taking a pydantic "
        "`{\"input\": list[list[float]]}` body and returning `{\"logits\": out.tolist()}`; `/predict_raw` is an "
        "async endpoint reading the FP32 bytes and answering the output bytes. One `session.run` per request, "
        "no batching, uvicorn, one worker, access log off. `fastapi-naive` uses ONNX Runtime's default session "
        "(what a user gets); `fastapi-naive+ds-opts` copies deepserve's session options."),
        "",
        *section_overhead(fig),
        "",
        "## 3. Dynamic batching vs none",
        "",
        *section_batching(fig),
        "",
        "## 4. Peer: LitServe",
        "",
        (f"`loadtests/baselines/litserve_onnx.py` in its own venv (`{_litserve_venv(data)}`): `LitAPI(max_batch_size=64, "
        "batch_timeout=0.0005)` (deepserve's max_batch_size and max_queue_delay), `batch` concatenates rows, "
        "`unbatch` splits them, the same ONNX file with deepserve's session options, `LitServer(accelerator='cpu', "
        "workers_per_device=1)`: one API process + one inference worker process. LitServe has no binary tensor "
        "protocol; its `decode_request` gets the parsed JSON, so the two formats are a JSON list "
        "(`{\"input\": [[...]]}`) and base64 of the FP32 bytes inside JSON (`{\"input_b64\": ..., \"shape\": ...}`, "
        "answered the same way)."),
        "",
        *section_peer(fig),
        "",
        "## 4b. Peers side by side: FastAPI, LitServe, KServe, Ray Serve",
        "",
        *section_peers(data),
        "",
        "## 5. Ensemble overhead",
        "",
        *section_ensemble(),
        "",
        "## 6. Detection: `/v1/detect` vs the detector in-process",
        "",
        *section_detect(),
        "",
        "## 7. Image generation: step-level batching vs one at a time",
        "",
        *section_images(),
        "",
        "## 8. Soak: 30 minutes of mixed traffic at 70 % of saturation",
        "",
        *section_soak(),
        "",
        "## 9. Transcription: real-time factor and batching across streams",
        "",
        *section_transcription(),
        "",
        "## 10. Text generation: continuous batching across streams",
        "",
        *section_generation(),
        "",
        "## Exact configurations",
        "",
        ("Servers (`$WORK` is the benchmark's temp folder; the repository is written there by "
        "`python -m server.cli models build-bench`, plus `resnet_bench_i2`, a copy of resnet_bench with "
        "`instance_group.count: 2`, so 2 sessions with 1 intra-op thread each):"),
        "",
    ]
    for name, rec in data["servers"].items():
        env = " ".join(f"{k}={v}" for k, v in rec["env"].items())
        for cmd in dict.fromkeys(rec["cmds"]):
            out.append(f"* {name}: `{(env + ' ') if env else ''}{cmd}`")
    out.append("")
    for model, text in data["configs"].items():
        out += [f"<details><summary><code>{model}/config.pbtxt</code></summary>", "", "```", text.rstrip(), "```",
                "", "</details>", ""]
    findings = Path(__file__).with_name("findings.md")
    if findings.exists():
        out += [findings.read_text().rstrip(), ""]
    profiles = section_profiles(data)
    if profiles:
        out += ["## Where the server's CPU time goes (py-spy)", "", *profiles]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--resummarize", action="store_true", help="re-read the py-spy files where they still exist")
    args = parser.parse_args()
    data = json.loads(Path(args.json_path).read_text())
    if args.resummarize:
        from loadtests.profile_summary import summarize

        for profile in data.get("profiles", {}).values():
            if Path(profile["raw"]).exists():
                profile["summary"] = summarize(Path(profile["raw"]))
        Path(args.json_path).write_text(json.dumps(data, indent=1, default=str))
    Path(args.out).write_text(render(data))


if __name__ == "__main__":
    main()
