"""The page ``loadtests/detect_bench.py`` writes, rendered from its raw results alone
(``render(results)``), so it can be regenerated without rerunning (``--from-json``)."""

from __future__ import annotations

import statistics

from loadtests.runinfo import quiet_wait_clause

TARGET = 0.7  # the bar: /v1/detect at 32 clients >= 0.7 x in-process rows/s
ENSEMBLE, NETWORK = "shapes_detect", "shapes"
PRE, POST = "shapes_detect_pre", "shapes_detect_post"
STEPS = (PRE, NETWORK, POST)  # the ensemble's chain, in order
STEP_WHAT = {PRE: "decode + letterbox", NETWORK: "network (ONNX Runtime)", POST: "peaks + NMS"}
REQUIREMENT = ("With 32 concurrent clients uploading 640×480 JPEGs, detection throughput is at least 0.7 × the "
               "detector's in-process throughput on pre-decoded tensors, measured in the same run.")


def _f(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def headline(results: dict) -> dict:
    """The requirement's figures, from the raw results (the page never stores them separately)."""
    best = results["inprocess"]["best_rows_per_s"]
    rps = results["detect"]["cN"]["rps"]
    target = results.get("settings", {}).get("target", TARGET)
    ratio = rps / best if best else None
    return {"ratio": ratio, "target": target, "met": ratio is not None and ratio >= target,
            "detect_rps": rps, "inprocess_rows_per_s": best, "best_batch": results["inprocess"]["best_batch"],
            "needed_rps": target * best if best else None}


def quiet_ratio(results: dict, max_others: float = 0.5) -> dict | None:
    """The same ratio from the phases during which other processes used at most ``max_others``
    cores: per batch size the median of its quiet (a) phases, the best of those, and the median
    of the quiet (b) phases at N clients. None when either side has no quiet phase."""
    rounds = results.get("rounds") or []
    by_batch: dict[str, list[float]] = {}
    for r in rounds:
        for batch, p in r["inprocess"].items():
            if p.get("others_cores", 1e9) <= max_others:
                by_batch.setdefault(batch, []).append(p["rows_per_s"])
    quiet_b = [r["cN"]["rps"] for r in rounds if r["cN"].get("others_cores", 1e9) <= max_others]
    if not by_batch or not quiet_b:
        return None
    best_batch = max(by_batch, key=lambda b: statistics.median(by_batch[b]))
    best = statistics.median(by_batch[best_batch])
    rps = statistics.median(quiet_b)
    return {"max_others": max_others, "a_phases": sum(len(v) for v in by_batch.values()),
            "a_total": sum(len(r["inprocess"]) for r in rounds), "b_phases": len(quiet_b), "b_total": len(rounds),
            "best_batch": int(best_batch), "inprocess_rows_per_s": best, "detect_rps": rps, "ratio": rps / best}


def verdict(results: dict) -> str:
    """One plain sentence: met or missed, with the numbers."""
    h = headline(results)
    if h["ratio"] is None:
        return "The ratio could not be computed (no in-process throughput)."
    n = results["settings"]["concurrency"]
    figures = (f"{_f(h['detect_rps'], 1)} req/s at {n} clients / {_f(h['inprocess_rows_per_s'], 1)} rows/s in-process "
               f"(batch {h['best_batch']}) = **{h['ratio']:.2f}**")
    if h["met"]:
        return f"**Met**: {figures}, at or above the {h['target']:g} target."
    return (f"**Missed**: {figures}, below the {h['target']:g} target (it needed {_f(h['needed_rps'], 1)} req/s, "
            f"{_f(h['needed_rps'] - h['detect_rps'], 1)} more than measured).")


def _pooled(results: dict, key: str) -> dict:
    return results["detect"].get("stats", {}).get(key, {}).get("pooled", {})


def breakdown(results: dict, key: str) -> dict | None:
    """The client's mean latency split exactly into parts (means, ms): client + HTTP outside
    the ensemble, each step's compute, the steps' queues, and the rest of the server's time
    (steps neither queued nor computing, plus the executor residual). None without statistics."""
    pooled, mean = _pooled(results, key), results["detect"][key].get("mean_ms")
    top = pooled.get(ENSEMBLE)
    steps = [pooled.get(s) for s in STEPS]
    if top is None or mean is None or any(s is None for s in steps):
        return None
    pre, net, post = steps
    executor = top["request_ms"] - sum(s["request_ms"] for s in steps)
    waiting = sum(s["request_ms"] - s["queue_ms"] - s["compute_ms"] for s in steps)
    return {
        "mean_ms": mean,
        "client_http_ms": mean - top["request_ms"],
        "server_ms": top["request_ms"],
        "decode_ms": pre["compute_ms"],
        "network_ms": net["compute_ms"],
        "nms_ms": post["compute_ms"],
        "queue_ms": sum(s["queue_ms"] for s in steps),
        "network_queue_ms": net["queue_ms"],
        "scheduling_ms": waiting + executor,
        "executor_ms": executor,
    }


def cpu_budget(results: dict, key: str = "cN") -> dict | None:
    """Server CPU per image (``/proc``), split with the in-process costs of the same steps: the
    network at the batch size nearest the server's mean batch, decode + letterbox and peaks +
    NMS (deepserve's own step classes, called in-process); the rest is everything else the
    server does per image. None without those figures."""
    steps, x = results.get("steps_inprocess"), results["detect"][key]
    by_batch = results["inprocess"]["by_batch"]
    if not steps or x.get("server_cpu_ms") is None:
        return None
    mean_batch = _pooled(results, key).get(NETWORK, {}).get("mean_batch") or 1.0
    batch = min(by_batch, key=lambda b: abs(int(b) - mean_batch))
    network = by_batch[batch].get("own_cpu_ms_per_row")
    if network is None:
        return None
    server = x["server_cpu_ms"]
    return {"server_ms": server, "client_ms": x.get("client_cpu_ms") or 0.0, "network_ms": network,
            "network_batch": int(batch), "server_mean_batch": mean_batch, "decode_ms": steps["decode_cpu_ms"],
            "nms_ms": steps["nms_cpu_ms"], "rest_ms": server - network - steps["decode_cpu_ms"] - steps["nms_cpu_ms"]}


def render(results: dict) -> str:
    """The Markdown page, from the results dict alone (``--from-json`` re-renders it)."""
    s, m = results["settings"], results.get("machine", {})
    ip, det = results["inprocess"], results["detect"]
    h, n = headline(results), s["concurrency"]
    weights = s.get("weights", {})
    lines = [
        "# `/v1/detect` under load: the shapes detector over HTTP vs in-process",
        "",
        "Written by `loadtests/detect_bench.py` from its results file; a benchmark, not a test. Regenerate the "
        "page without rerunning: `.venv/bin/python -m loadtests.detect_bench --from-json "
        f"{results.get('json_path', 'loadtests/results/detect-<date>.json')} --out docs/benchmarks-detect.md`.",
        "",
        f"* **Command:** `{results.get('command', 'n/a')}`",
        f"* **Date:** {results.get('date_utc', 'n/a')}; **commit:** `{results.get('commit', 'n/a')}`"
        + (f" (uncommitted changes in: {', '.join(results['dirty'])})" if results.get("dirty") else ""),
        f"* **Machine:** {m.get('cores', '?')} cores ({m.get('cpu', 'unknown CPU')}), CPU only, {m.get('platform', '')}; "
        f"Python {m.get('python', '?')}. **The server and the load generator share the same {m.get('cores', '?')} "
        "cores** (no pinning); the in-process measurement runs in the load generator's process while the server idles.",
        f"* **Weights:** `{weights.get('path', '?')}` (sha256 `{weights.get('sha256', '?')}`, input "
        f"{weights.get('input_size', '?')} px)" + ("" if weights.get("trained", True) else
                                                   " — **an untrained, seeded detector: a dry run of the mechanics, "
                                                   "not the shipped model**"),
    ]
    if "others_cores" in results:
        waited = quiet_wait_clause(results)
        lines.append(f"* **Other load** on the machine during the measured phases: {results['others_cores']:.2f} cores "
                     f"on average (busy CPU that is neither the server's nor the load generator's, `/proc/stat`){waited}")
    if "total_s" in results:
        lines.append(f"* **Run time:** {_f(results.get('total_s'), 0)} s in all ({_f(results.get('measured_s'), 0)} s "
                     "measured; the rest is exporting the network, drawing the scenes, starting the server, warm-up)")
    lines += [
        "",
        "## The requirement",
        "",
        f"> {REQUIREMENT}",
        "",
        f"* {verdict(results)}",
        *_round_ratios(results),
        *_quiet_line(results),
        "",
        "## Figures",
        "",
        "| measurement | throughput | p50 (ms) | p99 (ms) | server cores | load-generator cores "
        "| server CPU ms / image | load-generator CPU ms / image | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best = ip["by_batch"].get(str(ip["best_batch"]), {})
    lines.append(
        f"| (a) in-process ONNX Runtime, pre-decoded tensors, batch {ip['best_batch']} (best of "
        f"{', '.join(ip['by_batch'])}) | {_f(ip['best_rows_per_s'], 1)} rows/s | {_f(best.get('p50_ms'))} per call "
        f"| {_f(best.get('p99_ms'))} per call | {_f(best.get('server_cores'))} (idle) | {_f(best.get('own_cores'))} | "
        f"| {_f(best.get('own_cpu_ms_per_row'), 1)} | 0 |"
    )
    for key, label in (("c1", "1 client"), ("cN", f"{n} clients")):
        x = det[key]
        lines.append(
            f"| (b) `POST /v1/detect`, multipart JPEG, {label} | {_f(x['rps'], 1)} req/s | {_f(x['p50_ms'])} "
            f"| {_f(x['p99_ms'])} | {_f(x.get('server_cores'))} | {_f(x.get('client_cores'))} "
            f"| {_f(x.get('server_cpu_ms'), 1)} | {_f(x.get('client_cpu_ms'), 1)} | {x.get('errors', 0)} |"
        )
    lines += [
        "",
        f"Latency percentiles of (b) are over every request of the {s['rounds']} rounds "
        f"({det['c1'].get('samples', '?')} at 1 client, {det['cN'].get('samples', '?')} at {n} clients); throughput "
        "and CPU figures are medians over the rounds. In-process p50 / p99 are per `execute` call (a whole batch).",
        "",
        "In-process throughput by batch size (rows/s, median over the rounds; one thread calls `execute` back to back):",
        "",
        "| batch | rows/s | p50 ms / call | p99 ms / call | CPU ms / row |",
        "|---:|---:|---:|---:|---:|",
    ]
    for batch, x in ip["by_batch"].items():
        lines.append(f"| {batch} | {_f(x['rows_per_s'], 1)} | {_f(x.get('p50_ms'))} | {_f(x.get('p99_ms'))} "
                     f"| {_f(x.get('own_cpu_ms_per_row'), 1)} |")
    lines += ["", *_where(results), "## Interpretation", "", *_interpretation(results, h), ""]
    lines += _checks(results)
    lines += _method(results)
    lines += _raw(results)
    return "\n".join(lines).rstrip() + "\n"


def _round_ratios(results: dict) -> list[str]:
    ratios = [r["ratio"] for r in results.get("rounds", []) if r.get("ratio") is not None]
    if len(ratios) < 2:
        return []
    return [f"* Round by round (each round's (b) at {results['settings']['concurrency']} clients over its own best "
            f"(a)): {', '.join(f'{x:.2f}' for x in ratios)}"]


def _quiet_line(results: dict) -> list[str]:
    q = quiet_ratio(results)
    if q is None:
        return ["* No quiet phase (other load at most 0.5 cores) on one side or both: no quiet-phase ratio."]
    met = q["ratio"] >= results["settings"].get("target", TARGET)
    agrees = met == headline(results)["met"]
    tail = f"{'met' if met else 'missed'} as well" if agrees else f"{'met' if met else 'missed'} there, unlike the headline"
    return [f"* Quiet phases only (other load at most {q['max_others']:g} cores: {q['a_phases']} of {q['a_total']} "
            f"in-process phases, {q['b_phases']} of {q['b_total']} at {results['settings']['concurrency']} clients): "
            f"{q['detect_rps']:.1f} req/s / {q['inprocess_rows_per_s']:.1f} rows/s (batch {q['best_batch']}) = "
            f"**{q['ratio']:.2f}**, {tail}."]


def _where(results: dict) -> list[str]:
    n = results["settings"]["concurrency"]
    out = []
    rows = []
    for key, label in (("c1", "1 client"), ("cN", f"{n} clients")):
        b = breakdown(results, key)
        if b is None:
            continue
        share = lambda x, b=b: f"{x:.2f} ({100 * x / b['mean_ms']:.0f}%)" if b["mean_ms"] else _f(x)
        rows.append(f"| {label} | {b['mean_ms']:.2f} | {share(b['client_http_ms'])} | {share(b['decode_ms'])} "
                    f"| {share(b['network_ms'])} | {share(b['nms_ms'])} | {share(b['queue_ms'])} "
                    f"| {share(b['scheduling_ms'])} |")
    if not rows:
        return []
    out += [
        "## Where the time goes",
        "",
        "The client's mean latency, split exactly (means, ms, share of the mean) with the server's own statistics "
        "(Triton's statistics extension, `/v2/models/stats`, read before and after every measured phase):",
        "",
        "| clients | client mean | client + HTTP | decode + letterbox (`shapes_detect_pre` compute) "
        "| network (`shapes` compute) | peaks + NMS (`shapes_detect_post` compute) | queues (3 steps) "
        "| scheduling + executor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "*Client + HTTP* is the client's mean minus the ensemble's mean request time in the server: the load "
        "generator, loopback TCP, the HTTP front end, multipart parsing of the upload, the JSON answer, and "
        "waiting for the server's event loop. *Queues* are the time requests wait in the three steps' dynamic "
        "batchers; *scheduling + executor* is the steps' time neither queued nor computing (waiting for an "
        "instance thread or for the event loop to resume the step) plus the ensemble's time outside its steps. "
        "A step's compute is per request as Triton counts it: the whole batch's time, charged to each request in it.",
        "",
        "Per step (means, ms):",
        "",
        "| clients | step | requests | request | queue | compute | mean batch | compute / row |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("c1", "1 client"), ("cN", f"{n} clients")):
        pooled = _pooled(results, key)
        for step in (ENSEMBLE, *STEPS):
            x = pooled.get(step)
            if x is None:
                continue
            what = "ensemble (all steps)" if step == ENSEMBLE else STEP_WHAT[step]
            per_row = x["compute_ms"] / x["mean_batch"] if x.get("mean_batch") and step != ENSEMBLE else None
            lines_batch = _f(x.get("mean_batch")) if step != ENSEMBLE else ""
            out.append(f"| {label} | `{step}` {what} | {x['requests']} | {_f(x['request_ms'])} | "
                       f"{_f(x['queue_ms']) if step != ENSEMBLE else ''} | {_f(x['compute_ms']) if step != ENSEMBLE else ''} "
                       f"| {lines_batch} | {_f(per_row)} |")
    out.append("")
    c = cpu_budget(results)
    if c is not None:
        share = lambda v: f"{v:.1f} | {100 * v / c['server_ms']:.0f}%"
        out += [
            f"CPU per image at {n} clients, what limits throughput on shared cores: the server's CPU (its process "
            "tree, `/proc`) split with the in-process cost of the same work, measured in this run:",
            "",
            "| | CPU ms / image | share of the server's |",
            "|---|---:|---:|",
            f"| network, in-process at batch {c['network_batch']} (the server's mean batch: "
            f"{c['server_mean_batch']:.1f}) | {share(c['network_ms'])} |",
            f"| decode + letterbox (`image.decode_resize`, in-process) | {share(c['decode_ms'])} |",
            f"| peaks + NMS (`detect.centernet`, in-process) | {share(c['nms_ms'])} |",
            f"| the rest: HTTP, multipart, JSON, batchers, executor, thread hand-offs | {share(c['rest_ms'])} |",
            f"| **server, measured** | **{c['server_ms']:.1f}** | 100% |",
            f"| load generator (same cores) | {c['client_ms']:.1f} | |",
            "",
        ]
    return out


def _interpretation(results: dict, h: dict) -> list[str]:
    s, ip, det = results["settings"], results["inprocess"], results["detect"]
    n, cores = s["concurrency"], results.get("machine", {}).get("cores", "?")
    cn = det["cN"]
    out = []
    if h["ratio"] is not None:
        out.append(f"* **The requirement is {'met' if h['met'] else 'missed'}.** At {n} clients `/v1/detect` serves "
                   f"{h['detect_rps']:.1f} images/s against {h['inprocess_rows_per_s']:.1f} rows/s for the bare network "
                   f"in-process: {h['ratio']:.2f}x, {'at or above' if h['met'] else 'below'} {h['target']:g}.")
    best = ip["by_batch"].get(str(ip["best_batch"]), {})
    per_row, cores_a = best.get("own_cpu_ms_per_row"), best.get("own_cores")
    if per_row and cores_a and cn.get("server_cpu_ms") is not None:
        total = cn["server_cpu_ms"] + (cn.get("client_cpu_ms") or 0)
        cores_b = (cn.get("server_cores") or 0) + (cn.get("client_cores") or 0)
        out.append(
            f"* **Why this ratio: CPU per image.** In-process the network costs {per_row:.1f} ms of CPU per row "
            f"with {cores_a:.2f} cores busy (batch {ip['best_batch']}). Over HTTP at {n} clients each image costs "
            f"the server {cn['server_cpu_ms']:.1f} ms and the load generator {cn.get('client_cpu_ms') or 0:.1f} ms, "
            f"{total:.1f} ms on the same {cores} cores, with {cores_b:.2f} cores busy (server "
            f"{_f(cn.get('server_cores'))}, load generator {_f(cn.get('client_cores'))}). Throughput is cores busy over "
            f"CPU per image, so the ratio is ({cores_b:.2f} / {cores_a:.2f} cores) x ({per_row:.1f} / {total:.1f} ms) "
            f"= {cores_b / cores_a:.2f} x {per_row / total:.2f} = {cores_b / cores_a * per_row / total:.2f} "
            "(the measured ratio, up to the rounds' medians). Everything the server does beside the network "
            "(decode, letterbox, multipart, NMS, JSON, scheduling), and the load generator, is paid from the "
            "network's cores."
            + ("" if h["met"] or not cores_b else
               f" To reach {h['target']:g} with these cores busy, an image may cost at most "
               f"{cores_b / cores_a * per_row / h['target']:.1f} ms of CPU in all, "
               f"{total - cores_b / cores_a * per_row / h['target']:.1f} ms less than measured.")
        )
    c = cpu_budget(results)
    if c is not None:
        out.append(
            f"* **Where the server's CPU goes at {n} clients** (table above): of {c['server_ms']:.1f} ms per image, "
            f"the network is about {c['network_ms']:.1f} ms, decode + letterbox {c['decode_ms']:.1f} ms, peaks + NMS "
            f"{c['nms_ms']:.1f} ms, and {c['rest_ms']:.1f} ms is the rest (HTTP, multipart, JSON, batchers, executor, "
            "thread hand-offs, contention). In-process figures are each step alone on a quiet thread; under load "
            "the same work can cost more (caches, the GIL), which the rest absorbs."
        )
    b1, bn = breakdown(results, "c1"), breakdown(results, "cN")
    if b1 is not None:
        out.append(
            f"* **1 client.** Of {b1['mean_ms']:.2f} ms, the network computes for {b1['network_ms']:.2f} ms, "
            f"decode + letterbox {b1['decode_ms']:.2f} ms, peaks + NMS {b1['nms_ms']:.2f} ms, the batchers hold "
            f"requests {b1['queue_ms']:.2f} ms (the network's 500 µs batching window is waited out in full when no "
            f"other request comes: {b1['network_queue_ms']:.2f} ms), scheduling {b1['scheduling_ms']:.2f} ms, and "
            f"client + HTTP {b1['client_http_ms']:.2f} ms."
        )
    if bn is not None:
        parts = {"client + HTTP": bn["client_http_ms"], "queues": bn["queue_ms"], "network compute": bn["network_ms"],
                 "decode + letterbox": bn["decode_ms"], "peaks + NMS": bn["nms_ms"],
                 "scheduling + executor": bn["scheduling_ms"]}
        ranked = sorted(parts.items(), key=lambda kv: -kv[1])
        net = _pooled(results, "cN").get(NETWORK, {})
        out.append(
            f"* **{n} clients.** Of {bn['mean_ms']:.2f} ms mean latency: "
            + ", ".join(f"{k} {v:.2f} ms ({100 * v / bn['mean_ms']:.0f}%)" for k, v in ranked)
            + f". With {n} requests in flight and the cores saturated, latency is mostly waiting: "
            f"Little's law gives {n} / {cn['rps']:.1f} req/s = {1e3 * n / cn['rps']:.0f} ms. The network ran "
            f"batches of {_f(net.get('mean_batch'))} on average."
        )
    others = results.get("others_cores")
    if others is not None and others > 0.25:
        out.append(f"* **The machine was not quiet:** other processes used {others:.2f} cores on average during the "
                   f"measured phases (of {cores}). Both (a) and (b) lose to it, alternating round by round, but the "
                   "absolute figures are lower and noisier than on an idle machine." + _cores_spread(results))
    if not s.get("weights", {}).get("trained", True):
        out.append("* **Untrained weights:** the detector finds nothing above the score threshold, so peaks + NMS "
                   "work on empty candidate lists; the network's cost is the trained one's (same graph).")
    errors = det.get("errors", 0)
    if errors:
        out.append(f"* **Errors during the rounds:** {errors}; first messages: {det.get('error_messages', [])[:3]}")
    log = results.get("server_log") or []
    if log:
        out.append(f"* **Server log** (warning level and above): {len(log)} line(s); the last: `{log[-1][:200]}`")
    return out


def _cores_spread(results: dict) -> str:
    a, b = [], []
    for r in results.get("rounds") or []:
        best = r["inprocess"].get(str(r.get("best_batch")), {})
        if best.get("own_cores") is not None:
            a.append(best["own_cores"])
        b.append((r["cN"].get("server_cores") or 0) + (r["cN"].get("client_cores") or 0))
    if len(a) < 2:
        return ""
    return (f" Across the rounds (a) kept {min(a):.2f}-{max(a):.2f} cores busy and (b) at "
            f"{results['settings']['concurrency']} clients {min(b):.2f}-{max(b):.2f} (raw table): the ratio "
            "follows how many cores each side got.")


def _checks(results: dict) -> list[str]:
    c = results.get("checks")
    if not c:
        return []
    return [
        "## Checks",
        "",
        f"Before measuring, each of the {c['images']} scenes was sent once: {c['answered']} answered 200 with "
        f"width x height {c['sizes']}; {c['detections']} detections in all ({c['detections'] / max(1, c['images']):.1f} "
        f"per image against {c['ground_truth'] / max(1, c['images']):.1f} objects drawn); recall of the drawn objects "
        f"at IoU 0.5, same class: {_f(c.get('recall_at_50'))}; precision {_f(c.get('precision_at_50'))}."
        + (f" The server's three steps called in-process (decode -> network -> peaks + NMS, batch 1) found the "
           f"same number of detections as `/v1/detect` for {c['same_count']} of {c['images']} images."
           if "same_count" in c else ""),
        "",
    ]


def _method(results: dict) -> list[str]:
    s = results["settings"]
    n = s["concurrency"]
    return [
        "## Method",
        "",
        f"* **Images:** {s['images']} fresh scenes from `models.shapes_data.make_scene` (seed {s['seed']}, not the "
        f"training or held-out seed), drawn at {s['image_size']} directly: the generator's first draw, the image size, "
        "is answered with 640x480 and everything else (background, clutter, 1-8 shapes, noise, a JPEG round trip "
        f"at quality 40-95) is the generator's own. Mean JPEG size {_f(s.get('mean_jpeg_bytes', 0) / 1024, 1)} KiB.",
        "* **Server:** `python -m server.cli serve` on 127.0.0.1, a temp repository with `shapes` (the ONNX export of "
        f"`get_family(\"shapes\")` by `export_family_entry`: {_config_text(s.get('configs', {}).get(NETWORK))}) and "
        "`shapes_detect` (`export.pipelines.write_detect_pipeline`): `shapes_detect_pre` (`image.decode_resize`, "
        f"letterbox; {_config_text(s.get('configs', {}).get(PRE))}) -> `shapes` -> `shapes_detect_post` "
        f"(`detect.centernet`; {_config_text(s.get('configs', {}).get(POST))}).",
        "* **(a) in-process:** `server.runtimes.onnxruntime.OnnxRuntime` loaded with the options the server derives "
        "from the entry's `config.pbtxt` (`server.repository.model.runtime_options`: "
        f"{_session_text(results)}), fed the same scenes decoded and letterboxed beforehand "
        f"(`shapes_data.letterbox`), batches of {', '.join(map(str, s['batches']))}, {s['inprocess_s']:g} s each, "
        "one thread calling `execute` back to back.",
        f"* **(b) over HTTP:** `POST /v1/detect`, multipart/form-data with one `file` part (the JPEG), bodies built "
        f"once before the run; {s.get('client', 'aiohttp')}, one keep-alive connection per client. 1 client: "
        f"sequential requests for {s['latency_s']:g} s. {n} clients: {n} workers back to back, {s['settle_s']:g} s to "
        f"settle, then a {s['load_s']:g} s window: throughput is the answers completed in the window over its "
        "length, latencies those of the answers completed in it.",
        f"* **Rounds:** {s['rounds']}, (a) and (b) alternating (the order flips every round), after a warm-up. CPU "
        "from `/proc`: the server's process tree and the load generator's own process, over each phase.",
        "",
    ]


def _config_text(c: dict | None) -> str:
    if not c:
        return "as written"
    batching = (f"dynamic batching, preferred {' / '.join(map(str, c['preferred'])) or 'none'}, "
                f"{c['delay_us']} µs window" if c.get("dynamic_batching") else "no dynamic batching")
    return f"max batch {c['max_batch_size']}, {batching}, {c['instances']} CPU instance(s)"


def _session_text(results: dict) -> str:
    so = results["inprocess"].get("session") or {}
    if not so:
        return "as the server would"
    return ", ".join(f"{k} {v}" for k, v in so.items())


def _raw(results: dict) -> list[str]:
    rounds = results.get("rounds") or []
    if not rounds:
        return []
    n = results["settings"]["concurrency"]
    batches = list(results["inprocess"]["by_batch"])
    out = [
        "## Raw results, per round",
        "",
        f"| round | order | (a) rows/s by batch {' / '.join(batches)} | 1 client: p50 | p99 | {n} clients: req/s "
        f"| p50 | p99 | ratio | cores busy: (a) / (b) at {n} clients | other load (cores) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rounds:
        a = r["inprocess"]
        c1, cn = r["c1"], r["cN"]
        best = a.get(str(r.get("best_batch")), {})
        cores_b = (cn.get("server_cores") or 0) + (cn.get("client_cores") or 0)
        out.append(
            f"| {r['round']} | {r.get('order', '')} | {' / '.join(_f(a[b]['rows_per_s'], 1) for b in batches if b in a)} "
            f"| {_f(c1['p50_ms'])} | {_f(c1['p99_ms'])} | {_f(cn['rps'], 1)} | {_f(cn['p50_ms'])} | {_f(cn['p99_ms'])} "
            f"| {_f(r.get('ratio'))} | {_f(best.get('own_cores'))} / {cores_b:.2f} | {_f(r.get('others_cores'))} |"
        )
    out += ["", f"Every figure, the server statistics by round included: `{results.get('json_path', 'the results JSON')}`."]
    return out
