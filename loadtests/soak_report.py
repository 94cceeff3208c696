"""Render ``loadtests/results/soak-*.json`` (``loadtests.soak``) as ``docs/benchmarks-soak.md``.

    .venv/bin/python -m loadtests.soak --from-json loadtests/results/soak-<date>.json --out docs/benchmarks-soak.md
"""

from __future__ import annotations

# The page's targets. The issue asks for memory growth, errors and p99 drift to be *recorded*;
# "no errors" and "no unbounded growth" are its implied targets, the others are this page's.
MAX_UNEXPECTED = 0
MAX_LATE_GROWTH = 0.05  # RSS growth over the second half of the run, share of the RSS at its midpoint
MAX_LATE_GROWTH_MIB = 16.0  # ... or this many MiB, whichever is larger (allocator noise on a small server)
MAX_DRIFT = 1.5  # p99 of the last five minutes over the first five
MIN_RATE_SHARE = 0.95  # requests sent over requests planned


def _f(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _slope_mib_per_h(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minute, MiB), in MiB per hour."""
    if len(points) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return None if not sxx else sum((x - mx) * (y - my) for x, y in points) / sxx * 60.0


def headline(results: dict) -> dict:
    """The figures the page and ``loadtests.report``'s section lead with."""
    minutes = results.get("minutes") or []
    start = results["baseline"]["rss_mib"]
    end = minutes[-1]["rss_mib"] if minutes else None
    mid_index = len(minutes) // 2
    mid = minutes[mid_index - 1]["rss_mib"] if mid_index else start
    late_growth = None if end is None else end - mid
    late_limit = max(MAX_LATE_GROWTH * mid, MAX_LATE_GROWTH_MIB)
    sent = sum(m["sent"] for m in minutes)
    shed = sum(m["shed"] for m in minutes)
    answered = sum(m["answered"] for m in minutes)
    unexpected = sum(m["unexpected"] for m in minutes)
    expected = sum(m["expected_4xx"] for m in minutes)
    planned = results["planned_rps"]
    seconds = results.get("sending_s") or results["settings"]["duration_s"]
    achieved = sent / seconds if seconds else None
    pooled = results.get("pooled", {})
    first, last = pooled.get("first5", {}), pooled.get("last5", {})
    p99_first = first.get("all", {}).get("p99_ms")
    p99_last = last.get("all", {}).get("p99_ms")
    fast_first = first.get("fast", {}).get("p99_ms")
    fast_last = last.get("fast", {}).get("p99_ms")
    drift = _ratio(p99_last, p99_first)
    fast_drift = _ratio(fast_last, fast_first)
    rate_share = _ratio(achieved, planned)
    first_others = [m["others_cores"] for m in minutes[:5]]
    last_others = [m["others_cores"] for m in minutes[-5:]]
    return {
        "minutes": len(minutes),
        "saturation_rps": results["probe"]["saturation_rps"], "planned_rps": planned, "load": results["settings"]["load"],
        "achieved_rps": achieved, "answered_rps": answered / seconds if seconds else None, "rate_share": rate_share,
        "sent": sent, "shed": shed, "answered": answered, "expected_4xx": expected, "unexpected": unexpected,
        "rss_start_mib": start, "rss_end_mib": end, "rss_mid_mib": mid,
        "rss_peak_mib": max((m["rss_mib"] for m in minutes), default=None),
        "rss_growth_mib": None if end is None else end - start,
        "rss_growth_pct": None if end is None else 100.0 * (end - start) / start,
        "late_growth_mib": late_growth, "late_limit_mib": late_limit,
        "late_slope_mib_per_h": _slope_mib_per_h([(m["minute"], m["rss_mib"]) for m in minutes[mid_index:]]),
        "p99_first5_ms": p99_first, "p99_last5_ms": p99_last, "drift": drift,
        "others_first5": sum(first_others) / len(first_others) if first_others else None,
        "others_last5": sum(last_others) / len(last_others) if last_others else None,
        "fast_p99_first5_ms": fast_first, "fast_p99_last5_ms": fast_last, "fast_drift": fast_drift,
        "errors_ok": unexpected <= MAX_UNEXPECTED,
        "memory_ok": None if late_growth is None else late_growth <= late_limit,
        "drift_ok": None if drift is None else drift <= MAX_DRIFT,
        "rate_ok": None if rate_share is None else rate_share >= MIN_RATE_SHARE,
    }


def verdicts(h: dict) -> list[str]:
    """One line per target, each saying met or missed."""
    return [
        f"Unexpected errors (5xx, wrong answers, connection errors, timeouts): **{h['unexpected']:,}**, target "
        f"{MAX_UNEXPECTED}: {_met(h['errors_ok'])}.",
        f"Memory: server RSS {_f(h['rss_start_mib'])} MiB at the start, {_f(h['rss_end_mib'])} MiB at the end "
        f"({h['rss_growth_mib']:+.1f} MiB, {h['rss_growth_pct']:+.1f} %; peak {_f(h['rss_peak_mib'])} MiB); over the "
        f"second half {h['late_growth_mib']:+.1f} MiB (slope {_f(h['late_slope_mib_per_h'])} MiB/h), bounded if at most "
        f"{_f(h['late_limit_mib'])} MiB: {_met(h['memory_ok'])}."
        if h["rss_end_mib"] is not None else "Memory: no minute recorded: **missed**.",
        f"p99 drift, last five minutes over the first five: {_f(h['drift'], 2)}x ({_f(h['p99_first5_ms'])} -> "
        f"{_f(h['p99_last5_ms'])} ms, every good request); without image generation {_f(h['fast_drift'], 2)}x "
        f"({_f(h['fast_p99_first5_ms'])} -> {_f(h['fast_p99_last5_ms'])} ms); target <= {MAX_DRIFT}x: {_met(h['drift_ok'])} "
        f"(other processes used {_f(h['others_first5'], 2)} cores on average in the first five minutes, "
        f"{_f(h['others_last5'], 2)} in the last five).",
        f"Rate: planned {_f(h['planned_rps'])} req/s ({h['load']:.0%} of the probed {_f(h['saturation_rps'])} req/s), "
        f"sent {_f(h['achieved_rps'])} req/s ({_f(100 * h['rate_share'] if h['rate_share'] is not None else None)} %; "
        f"{h['shed']:,} shed by the client), target >= {MIN_RATE_SHARE:.0%} of planned: {_met(h['rate_ok'])}.",
    ]


def _failures(m: dict) -> str:
    f = m.get("metrics_failures") or {}
    return ", ".join(f"{k} {v:,.0f}" for k, v in sorted(f.items())) or "0"


def render(results: dict) -> str:
    h = headline(results)
    s, mc = results["settings"], results["machine"]
    missed = [name for name, ok in (("unexpected errors", h["errors_ok"]), ("bounded memory", h["memory_ok"]),
                                    ("p99 drift", h["drift_ok"]), ("rate", h["rate_ok"])) if ok is False]
    minutes = results.get("minutes") or []
    others = [m["others_cores"] for m in minutes]
    loads = [m["loadavg_1m"] for m in minutes]
    mix = ", ".join(f"{k} {v:.0%}" for k, v in s["mix"].items())
    out = [
        "# Soak: 30 minutes of mixed traffic at 70 % of saturation",
        "",
        ("Written by `loadtests/soak_report.py` from the results of `loadtests/soak.py` (issue #13); do not edit by "
         "hand. A benchmark, not a test: nothing is asserted, a missed target is reported as measured."),
        "",
        f"* **Command:** `{results['command']}` (from the repository root; page re-rendered with `--from-json`)",
        f"* **Results:** `{results.get('json_path')}`",
        f"* **Date:** {results['date_utc']}; commit `{results['commit']}`"
        + (f" with uncommitted changes in {', '.join(f'`{p}`' for p in results['dirty'])}" if results.get("dirty") else "")
        + (f"; edited while it ran: {', '.join(f'`{p}`' for p in results['dirty_after'])}" if results.get("dirty_after") else ""),
        (f"* **Machine:** {mc['cores']} cores ({mc['cpu']}), CPU only; {mc['platform']}; Python {mc['python']}, "
         + ", ".join(f"{k} {v}" for k, v in mc.get("versions", {}).items())),
        (f"* **Shared machine:** the server, the load generator *and other people's work* (test suites run by other "
         f"sessions) share these {mc['cores']} cores for the whole run; nothing waited for a quiet machine. Other "
         f"processes used {_f(min(others, default=None), 2)}-{_f(max(others, default=None), 2)} cores per minute "
         f"(mean {_f(sum(others) / len(others) if others else None, 2)}), the 1-minute load average ran "
         f"{_f(min(loads, default=None), 2)}-{_f(max(loads, default=None), 2)}: both are in the table, minute by minute. "
         "Latency and the saturation rate move with that load."),
        (f"* **Server:** `{s.get('server_cmd', '?')}` on a temp copy of the default repository "
         f"({', '.join(s.get('models', []))}); alive at the end: {results.get('server_alive_at_end')}."),
        (f"* **Traffic:** loopback only. Mix per request (seeded draw): {mix}. `http_digits` = v2 HTTP infer on `digits`, "
         f"binary tensors (httpx, {s.get('http_connections', '?')} keep-alive connections); `grpc_digits` = gRPC infer on "
         "`digits` (`tritonclient.grpc.aio`, one channel); `classify` = `POST /v1/classify`, one PNG, top_k 3; "
         f"`generate` = `POST /v1/images/generations`, `digits_diffusion`, {s['generate_steps']} steps; `bad` = wrong "
         "shape, unknown model, not an image, n=0, malformed JSON in turn, each expected to be a 4xx (an *expected* "
         "error). Every good answer is checked (logits shape, 3 predictions, an image)."),
        (f"* **Method:** a {s['warmup_s']:g} s warm-up, then the saturation probe: closed-loop clients at "
         f"{', '.join(map(str, s['probe_levels']))} concurrent, {s['probe_s']:g} s each; the best answered req/s is "
         f"saturation. Then an open loop for {s['duration_s']:g} s: requests sent on a fixed schedule at "
         f"{s['load']:.0%} of saturation; at most {s['max_outstanding']} in flight, an arrival finding them all busy is "
         "not sent (*shed by the client*; nothing queues in the client). Timeouts: "
         f"{s['timeout_s']:g} s ({s['generate_timeout_s']:g} s for generation). Sent / shed count in the minute they were "
         "due, answers and latency in the minute they came back. Latency is client-side, send to last byte, good "
         "requests only. RSS = VmRSS summed over the server's process tree (`/proc`), at the end of each minute. "
         "`/metrics` = the increase of `deepserve_request_failure_total` by model / reason (ensemble steps count "
         "separately, so one bad `/v1/classify` shows at both `digits_classify` and its step)."),
        "",
        "## Headline",
        "",
        *(f"* {line}" for line in verdicts(h)),
        f"* Expected errors (the bad requests, all answered 4xx): {h['expected_4xx']:,} of {h['answered']:,} answers.",
        "",
        ("**Missed:** " + ", ".join(missed) + "." if missed else "**Every target met.**"),
        "",
        "## Saturation probe (closed loop)",
        "",
        "| concurrency | answered req/s | good req/s | p50 ms | p99 ms | p99 ms w/o generation | unexpected | server cores | client cores | others cores |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in results["probe"]["levels"]:
        out.append(f"| {p['concurrency']} | {_f(p['rps'])} | {_f(p['good_rps'])} | {_f(p['p50_ms'])} | {_f(p['p99_ms'])} | "
                   f"{_f(p['fast_p99_ms'])} | {p['unexpected']} | {_f(p['server_cores'], 2)} | {_f(p['client_cores'], 2)} | "
                   f"{_f(p['others_cores'], 2)} |")
    out += [
        "",
        f"Saturation {_f(h['saturation_rps'])} req/s (at {results['probe']['at_concurrency']} concurrent); planned rate "
        f"{_f(h['planned_rps'])} req/s.",
        "",
        "## Minute by minute",
        "",
        ("| min | sent | shed | 200 | 4xx (expected) | unexpected | p50 ms | p99 ms | p99 ms w/o gen | gen p50 ms | RSS MiB | "
         "server cores | client cores | others cores | load 1m | `/metrics` failures |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in minutes:
        out.append(
            f"| {m['minute']} | {m['sent']:,} | {m['shed']:,} | {m['by_status'].get('200', 0):,} | {m['expected_4xx']:,} | "
            f"{m['unexpected']:,} | {_f(m['p50_ms'])} | {_f(m['p99_ms'])} | {_f(m['fast_p99_ms'])} | "
            f"{_f(m['by_kind'].get('generate', {}).get('p50_ms'))} | {_f(m['rss_mib'])} | {_f(m['server_cores'], 2)} | "
            f"{_f(m['client_cores'], 2)} | {_f(m['others_cores'], 2)} | {_f(m['loadavg_1m'], 2)} | {_failures(m)} |")
    pooled = results.get("pooled", {})
    if pooled:
        kinds = [k for k in s["mix"] if k != "bad"]
        out += ["", "## p99 by kind, first and last five minutes (pooled)", "",
                "| kind | p50 first | p50 last | p99 first | p99 last | drift |", "|---|---|---|---|---|---|"]
        for k in ("all", "fast", *kinds):
            a, b = pooled["first5"].get(k, {}), pooled["last5"].get(k, {})
            out.append(f"| {k} | {_f(a.get('p50_ms'))} | {_f(b.get('p50_ms'))} | {_f(a.get('p99_ms'))} | "
                       f"{_f(b.get('p99_ms'))} | {_f(_ratio(b.get('p99_ms'), a.get('p99_ms')), 2)}x |")
    errors = results.get("errors") or []
    out += ["", "## Unexpected errors (first 20)", ""]
    out += [f"* `{e}`" for e in errors] or ["None."]
    return "\n".join(out) + "\n"
