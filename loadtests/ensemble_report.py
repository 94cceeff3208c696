"""The page ``loadtests/ensemble_overhead.py`` writes, rendered from its raw results alone
(``render(results)``), so it can be regenerated without rerunning (``--from-json``)."""

from __future__ import annotations

from loadtests.runinfo import quiet_wait_clause

VARIANTS = ("direct", "ensemble", "preprocess")
MODEL_OF = {"direct": "digits", "ensemble": "digits_pipeline", "preprocess": "digits_preprocess"}
STEPS = ("digits_preprocess", "image_size", "digits", "digits_topk")  # the ensemble's steps
TRITON_ISSUE = "https://github.com/triton-inference-server/server/issues/5082"


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
        waited = quiet_wait_clause(results)
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
