"""The page ``loadtests/generation_bench.py`` writes, rendered from its raw results alone
(``render(results)``), so it can be regenerated without rerunning (``--from-json``).

Every figure on the page is computed here from the results file: the per-request lists the
bench recorded (time to first token, time per output token, inter-token gaps, tokens),
each phase's wall time, the baselines' wall times, the server's ``/metrics`` diffs. Nothing
is retyped.

    .venv/bin/python -m loadtests.generation_report --from-json loadtests/results/generation-<date>.json \\
        --out docs/benchmarks-generation.md
"""

from __future__ import annotations

import argparse
import statistics

from loadtests.runinfo import div as _div
from loadtests.runinfo import fmt as _f
from loadtests.runinfo import page_header, speedup_verdict
from loadtests.runinfo import times as _x

MODEL = "textgen"
LEVELS = (1, 4, 16)
TARGET_SPEEDUP = 5.0  # the bar: tokens/s at 16 streams >= 5x that of 1 stream
REQUIREMENT = ("On this CPU, with the default model, measured in one run: aggregate tokens/s at 16 concurrent "
               "streams >= 5 x a single stream; p50 and p99 time to first token and time per output token at 1, 4 "
               "and 16 streams; compared against a one-request-at-a-time loop over transformers' generate() on the "
               "same weights (the naive baseline), and against transformers' static batching. Also: response_format "
               "json_object and json_schema, enforced while sampling ... Measure what it costs in throughput.")
PAGE = "docs/benchmarks-generation.md"


def _streams(level) -> str:
    return f"{level} stream{'' if str(level) == '1' else 's'}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def quantile(values, q: float) -> float | None:
    """The nearest-rank quantile used by every bench page (``ordered[int(q * (n - 1))]``; the
    median is ``statistics.median``)."""
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    if q == 0.5:
        return statistics.median(ordered)
    return ordered[int(q * (len(ordered) - 1))]


# ---- figures from a phase ---------------------------------------------------------------------


def tokens_per_s(phase: dict | None) -> float | None:
    """Output tokens generated in the phase / the phase's wall seconds."""
    if not phase:
        return None
    return _div(phase.get("output_tokens"), phase.get("wall_s"))


def phase_summary(phase: dict | None) -> dict:
    """p50 / p99 of TTFT, TPOT (per request) and inter-token gaps (``itl_q``: the bench's
    quantiles of every gap; older files hold the gaps as ``itl_ms``); tokens/s; counts."""
    phase = phase or {}
    ttft, tpot, itl = phase.get("ttft_ms", []), phase.get("tpot_ms", []), phase.get("itl_ms", [])
    server = phase.get("server") or {}
    return {
        "level": phase.get("level"),
        "requests": len(phase.get("ttft_ms", [])),
        "errors": phase.get("errors", 0),
        "output_tokens": phase.get("output_tokens"),
        "wall_s": phase.get("wall_s"),
        "tokens_per_s": tokens_per_s(phase),
        "mean_tokens": _div(phase.get("output_tokens"), len(ttft)) if ttft else None,
        "ttft_p50": quantile(ttft, 0.5), "ttft_p99": quantile(ttft, 0.99),
        "tpot_p50": quantile(tpot, 0.5), "tpot_p99": quantile(tpot, 0.99),
        "itl_p50": (phase.get("itl_q") or {}).get("p50_ms", quantile(itl, 0.5)),
        "itl_p99": (phase.get("itl_q") or {}).get("p99_ms", quantile(itl, 0.99)),
        "e2e_p50": quantile(phase.get("e2e_ms", []), 0.5),
        "server_cores": phase.get("server_cores"), "client_cores": phase.get("client_cores"),
        "others_cores": phase.get("others_cores"),
        "server_tpot_ms": _div((server.get("tpot_sum_s") or 0) * 1e3, server.get("tpot_count")),
        "server_ttft_ms": _div((server.get("ttft_sum_s") or 0) * 1e3, server.get("ttft_count")),
        "finish": phase.get("finish", {}),
        "valid_json": phase.get("valid_json"),
    }


def level(results: dict, lv: int) -> dict | None:
    return results.get("levels", {}).get(str(lv))


def top_level(results: dict) -> int:
    return max(int(k) for k in results.get("levels", {"16": None}))


def baseline_rates(results: dict) -> dict:
    """Tokens/s of the naive loop (all its tokens / the loop's wall time) and of static
    batching (tokens of one batch / the median run's wall time)."""
    b = results.get("baselines") or {}
    naive, static = b.get("naive") or {}, b.get("static") or {}
    runs = static.get("runs_s") or []
    static_wall = statistics.median(runs) if runs else None
    naive_wall = sum(naive.get("per_request_s") or []) or None
    return {
        "naive": _div(naive.get("tokens"), naive_wall),
        "naive_requests": len(naive.get("per_request_s") or []),
        "naive_p50_s": quantile(naive.get("per_request_s") or [], 0.5),
        "static": _div(static.get("tokens_per_run"), static_wall),
        "static_batch": static.get("batch"),
        "static_wall_s": static_wall,
        "static_runs": len(runs),
    }


def verdict(results: dict) -> dict:
    target = results.get("settings", {}).get("targets", {}).get("speedup", TARGET_SPEEDUP)
    top = top_level(results)
    one, many = tokens_per_s(level(results, 1)), tokens_per_s(level(results, top))
    speedup = _div(many, one)
    return {"top": top, "one": one, "many": many, "speedup": speedup, "target": target,
            "met": speedup is not None and speedup >= target,
            "needed": None if one is None else target * one}


def speedup_sentence(v: dict) -> str:
    return speedup_verdict(v["top"], v["many"], v["one"], "tokens/s", v["speedup"], v["target"], v["met"], v["needed"],
                           f"no tokens at 1 stream or at {v['top']}")


def why_sentence(results: dict) -> str | None:
    """The speedup as (server cores busy) x (tokens per server CPU second): both are ratios
    of the same phase figures, so their product is the speedup exactly."""
    v = verdict(results)
    one, many = level(results, 1) or {}, level(results, v["top"]) or {}
    c1, ct, t1, tt = one.get("server_cores"), many.get("server_cores"), v["one"], v["many"]
    if not (c1 and ct and t1 and tt):
        return None
    e1, et = t1 / c1, tt / ct
    s1, st = phase_summary(one), phase_summary(many)
    cores = results.get("machine", {}).get("cores", "?")
    step = ""
    if s1["itl_p50"] and st["itl_p50"]:
        step = (f" One decode step for one sequence took {_f(s1['itl_p50'], 2)} ms (p50 gap between its tokens at 1 "
                f"stream); a step carrying {v['top']} sequences took {_f(st['itl_p50'], 2)} ms "
                f"({_x(_div(st['itl_p50'], s1['itl_p50']))} the time for {v['top']}x the tokens): at this model size a "
                "step's cost is mostly fixed per step (Python, the engine's planning and sampling, kernel launches, "
                "reading the weights), not per token, so batching sequences into one step is what scales.")
    return (f"Why: at 1 stream the server kept {c1:.2f} of the {cores} cores busy, {e1:.0f} tokens per CPU second; at "
            f"{v['top']} streams {ct:.2f} cores, {et:.0f} tokens per CPU second. Speedup = {_x(ct / c1)} (cores busy, "
            f"{v['top']} vs 1 stream) x {_x(et / e1)} (tokens per CPU second) = {_x(tt / t1)}.{step}")


def structured_rows(results: dict) -> list[dict]:
    """Free text and each response_format at the structured phase's concurrency."""
    s = results.get("structured") or {}
    lv = s.get("level")
    if lv is None:
        return []
    free = phase_summary(level(results, lv))
    rows = [{"name": f"free text (the {_streams(lv)} phase above)", **free, "vs_free": 1.0 if free["tokens_per_s"] else None,
             "tpot_vs_free": 1.0 if free["tpot_p50"] else None}]
    for name in ("json_object", "json_schema"):
        if name not in s:
            continue
        p = phase_summary(s[name])
        rows.append({"name": f"`{name}`", **p, "vs_free": _div(p["tokens_per_s"], free["tokens_per_s"]),
                     "tpot_vs_free": _div(p["tpot_p50"], free["tpot_p50"])})
    return rows


def structured_sentence(results: dict) -> str | None:
    rows = structured_rows(results)
    if len(rows) < 2:
        return None
    lv = results["structured"]["level"]
    parts = []
    for r in rows[1:]:
        parts.append(f"{r['name']} {_f(r['tokens_per_s'], 1)} tokens/s ({_x(r['vs_free'])} of free text; "
                     f"p50 TPOT {_f(r['tpot_p50'], 2)} ms = {_x(r['tpot_vs_free'])} free text's, "
                     f"{_f(r['mean_tokens'], 1)} tokens per request)")
    return (f"Structured output at {_streams(lv)}: free text {_f(rows[0]['tokens_per_s'], 1)} tokens/s "
            f"(p50 TPOT {_f(rows[0]['tpot_p50'], 2)} ms); " + "; ".join(parts) + ". The per-token cost (TPOT) is the "
            "grammar's mask; tokens/s also pays each request's time to first token over fewer tokens, since "
            "structured answers stop early (`finish_reason` stop).")


def baseline_sentence(results: dict) -> str | None:
    b = baseline_rates(results)
    if b["naive"] is None and b["static"] is None:
        return None
    v = verdict(results)
    return (f"Baselines (transformers `generate()`, same weights, prompts and max tokens, the server stopped): naive "
            f"one-at-a-time loop {_f(b['naive'], 1)} tokens/s; static batch of {b['static_batch']} "
            f"{_f(b['static'], 1)} tokens/s. The server at 1 stream is {_x(_div(v['one'], b['naive']))} the naive loop; "
            f"at {v['top']} streams {_x(_div(v['many'], b['naive']))} the naive loop and "
            f"{_x(_div(v['many'], b['static']))} static batching.{_step_compare(results)}")


def _step_compare(results: dict) -> str:
    """Time per decode step: transformers (one request's time / its tokens; one batch's time /
    its tokens per row) against the server's p50 gap between tokens, at 1 and at 16 sequences."""
    b = baseline_rates(results)
    v = verdict(results)
    n = results.get("settings", {}).get("max_tokens")
    one, top = phase_summary(level(results, 1)), phase_summary(level(results, v["top"]))
    if not n or b["naive_p50_s"] is None or b["static_wall_s"] is None or one["itl_p50"] is None:
        return ""
    others = (results.get("baselines") or {}).get("others_cores")
    load = "" if others is None else f" (other load during the baselines: {others:.2f} cores)"
    return (f" Per decode step, transformers took {b['naive_p50_s'] * 1e3 / n:.2f} ms for one sequence and "
            f"{b['static_wall_s'] * 1e3 / n:.2f} ms for a batch of {b['static_batch']}{load}; the server "
            f"{_f(one['itl_p50'], 2)} ms and {_f(top['itl_p50'], 2)} ms (p50 gap between tokens at 1 and "
            f"{v['top']} streams): the same weights, so the difference is the server's per-step work outside the "
            "model's arithmetic (its engine loop, fixed 16-row tiles and padded attention for batch invariance, one "
            "HTTP event per token) plus the cores it shares with the load generator and other load.")


# ---- the page ---------------------------------------------------------------------------------


def headline(results: dict) -> list[str]:
    """Bullets for docs/benchmarks.md, from the results alone."""
    v = verdict(results)
    b = baseline_rates(results)
    return [
        f"* Text generation (`{results.get('settings', {}).get('model', MODEL)}`, {results.get('date_utc', 'n/a')}): "
        f"{_f(v['many'], 1)} vs {_f(v['one'], 1)} tokens/s at {v['top']} vs 1 stream = {_x(v['speedup'])} (target >= "
        f"{v['target']:g}x: {'MET' if v['met'] else 'MISSED'}); transformers naive loop {_f(b['naive'], 1)}, static "
        f"batch of {b['static_batch'] or '?'} {_f(b['static'], 1)} tokens/s. "
        "Details: [benchmarks-generation.md](benchmarks-generation.md).",
    ]


def _header(results: dict) -> list[str]:
    m = results.get("machine", {})
    note = f"; torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}"
    return page_header(results, "Text generation: streaming throughput and latency", "generation_report", PAGE,
                       note, "starting the server, warm-up, loading the baselines")


def _model_line(s: dict) -> str:
    w = s.get("weights") or {}
    facts = s.get("model_facts") or {}
    params = facts.get("params")
    line = (f"Model `{s.get('model', MODEL)}` from `{w.get('path', '?')}` (model.safetensors sha256 "
            f"`{w.get('sha256', '?')}`): {facts.get('model_type', '?')}, {facts.get('n_layer', '?')} layers, "
            f"width {facts.get('n_embd', '?')}, {facts.get('n_head', '?')} heads, vocabulary "
            f"{facts.get('vocab_size', '?')}, context {facts.get('n_positions', '?')}, "
            f"{'?' if params is None else f'{params / 1e6:.2f} M'} parameters, float32.")
    if w.get("fallback"):
        line += f" **Not the default model:** {w.get('note', 'a stand-in checkpoint')}."
    return line


def _method(results: dict) -> list[str]:
    s = results.get("settings", {})
    prompts = s.get("prompt_tokens") or []
    th = s.get("threads") or {}
    st = results.get("structured") or {}
    return [
        "## What was measured",
        "",
        _model_line(s),
        (f"One server on 127.0.0.1 (`python -m server.cli serve`, a temp repository holding only this model, served "
         f"with the generation engine's defaults). Each request is `POST {s.get('route', '?')}` with `stream` true, "
         f"`max_tokens` {s.get('max_tokens', '?')}, `temperature` {s.get('temperature', '?')}, `ignore_eos` "
         f"{str(s.get('ignore_eos', '?')).lower()} (so every free-text request generates exactly "
         f"{s.get('max_tokens', '?')} tokens) and `stream_options.include_usage`; {len(prompts)} distinct prompts of "
         + (f"{min(prompts)}-{max(prompts)} tokens" if prompts else "? tokens")
         + f", request i of a phase takes prompt i mod {len(prompts)}. Client: {s.get('client', '?')}, one "
         "keep-alive connection per stream."),
        (f"Phases: *n streams* = n clients, each sending requests back to back (closed loop) until "
         f"{s.get('seconds', '?')} s have passed (no request starts later; the phase ends when the last one "
         f"finishes); before each phase, one unmeasured request per client (warm-up). Levels: "
         f"{', '.join(map(str, s.get('levels', LEVELS)))} streams, one run, in that order."),
        "* **TTFT**: per request, client-side, from sending the request to the first server-sent event carrying text.",
        ("* **TPOT**: per request, (time of the last token's event - time of the first) / (completion tokens - 1), "
         "the usage chunk's `completion_tokens`; **gap**: every time between two successive text events of a "
         "request (the inter-token latency), pooled over the phase."),
        ("* **tokens/s**: completion tokens of every request of the phase / the phase's wall seconds (first request "
         "sent to last one finished). **speedup**: tokens/s at 16 streams / tokens/s at 1 stream."),
        ("* **server / client cores, other load**: CPU seconds of the server process tree / of the load generator / "
         "of everything else on the machine (`/proc`), over the phase, per wall second. **server TPOT**: the server's own "
         "`deepserve_generation_time_per_output_token_seconds` mean over the phase (`/metrics` diffed)."),
        (f"* **Baselines**, in the bench process after the server stopped (the CPU not shared with it): the same "
         f"checkpoint through `transformers.AutoModelForCausalLM.generate()` (float32, KV cache on, `do_sample` "
         f"False, `max_new_tokens` = `min_new_tokens` = {s.get('max_tokens', '?')}), on the same prompt token ids "
         f"(from the server's `/tokenize`), with torch using {th.get('baseline', '?')} threads (the server: "
         f"{th.get('server', '?')}). *Naive*: one prompt at a time, tokens / the loop's wall time. *Static "
         f"batching*: the first {(results.get('baselines') or {}).get('static', {}).get('batch', '?')} prompts "
         "left-padded into one batch, one `generate()` call, tokens / its wall time (median of the runs)."),
        (f"* **Structured output**: the same load at {_streams(st.get('level', '?'))} for "
         f"{s.get('structured_seconds', '?')} s each with `response_format` `json_object`, then `json_schema` "
         f"(the schema below), without `ignore_eos` (the grammar ends the answer; `max_tokens` "
         f"{s.get('max_tokens', '?')} still bounds it), temperature {s.get('temperature', '?')}. Its tokens/s is "
         "the tokens actually generated / wall time. `valid` = answers that parse as JSON (and, for the "
         "schema, validate against it)."),
    ]


def _table_levels(results: dict) -> list[str]:
    out = ["| streams | requests (errors) | tokens | wall s | tokens/s | vs 1 stream | TTFT p50 / p99 ms | "
           "TPOT p50 / p99 ms | gap p50 / p99 ms | server TPOT ms | server cores | client cores | other load (cores) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = tokens_per_s(level(results, 1))
    for lv in sorted(int(k) for k in results.get("levels", {})):
        p = phase_summary(level(results, lv))
        out.append(f"| {lv} | {p['requests']} ({p['errors']}) | {p['output_tokens'] or 0:,} | {_f(p['wall_s'], 1)} | "
                   f"{_f(p['tokens_per_s'], 1)} | {_x(_div(p['tokens_per_s'], base))} | {_f(p['ttft_p50'], 1)} / "
                   f"{_f(p['ttft_p99'], 1)} | {_f(p['tpot_p50'], 2)} / {_f(p['tpot_p99'], 2)} | {_f(p['itl_p50'], 2)} / "
                   f"{_f(p['itl_p99'], 2)} | {_f(p['server_tpot_ms'], 2)} | {_f(p['server_cores'], 2)} | "
                   f"{_f(p['client_cores'], 2)} | {_f(p['others_cores'], 2)} |")
    return out


def _table_baselines(results: dict) -> list[str]:
    b = baseline_rates(results)
    v = verdict(results)
    raw = results.get("baselines") or {}
    out = ["| what | requests | tokens/s | the server at 1 stream is | the server at "
           f"{v['top']} streams is |", "|---|---|---|---|---|"]
    if raw.get("naive"):
        out.append(f"| transformers, naive loop (p50 {_f(b['naive_p50_s'], 3)} s per request) | {b['naive_requests']} | "
                   f"{_f(b['naive'], 1)} | {_x(_div(v['one'], b['naive']))} | {_x(_div(v['many'], b['naive']))} |")
    if raw.get("static"):
        out.append(f"| transformers, static batch (one `generate()`, {_f(b['static_wall_s'], 3)} s, median of "
                   f"{b['static_runs']} runs) | {b['static_batch']} | {_f(b['static'], 1)} | "
                   f"{_x(_div(v['one'], b['static']))} | {_x(_div(v['many'], b['static']))} |")
    return out


def _table_structured(results: dict) -> list[str]:
    rows = structured_rows(results)
    if not rows:
        return ["Not measured in this run."]
    out = ["| response_format | requests (errors) | tokens per request | finish (stop / length) | valid | tokens/s | "
           "vs free text | TTFT p50 ms | TPOT p50 / p99 ms | TPOT vs free text |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fin = r["finish"] or {}
        valid = "n/a" if r["valid_json"] is None else f"{r['valid_json']} of {r['requests']}"
        out.append(f"| {r['name']} | {r['requests']} ({r['errors']}) | {_f(r['mean_tokens'], 1)} | "
                   f"{fin.get('stop', 0)} / {fin.get('length', 0)} | {valid} | {_f(r['tokens_per_s'], 1)} | "
                   f"{_x(r['vs_free'])} | {_f(r['ttft_p50'], 1)} | {_f(r['tpot_p50'], 2)} / {_f(r['tpot_p99'], 2)} | "
                   f"{_x(r['tpot_vs_free'])} |")
    schema = (results.get("structured") or {}).get("schema")
    if schema is not None:
        import json

        out += ["", f"Schema: `{json.dumps(schema, separators=(',', ':'))}`"]
    return out


def render(results: dict) -> str:
    """The Markdown page, from the results dict alone (``--from-json`` re-renders it)."""
    v = verdict(results)
    lines = _header(results) + ["", "## The requirement", "", f"> {REQUIREMENT}", "", f"* {speedup_sentence(v)}"]
    p1, pt = phase_summary(level(results, 1)), phase_summary(level(results, v["top"]))
    lines.append(f"* Latency: TTFT p50 / p99 {_f(p1['ttft_p50'], 1)} / {_f(p1['ttft_p99'], 1)} ms at 1 stream, "
                 f"{_f(pt['ttft_p50'], 1)} / {_f(pt['ttft_p99'], 1)} ms at {v['top']}; TPOT p50 / p99 "
                 f"{_f(p1['tpot_p50'], 2)} / {_f(p1['tpot_p99'], 2)} ms at 1 stream, {_f(pt['tpot_p50'], 2)} / "
                 f"{_f(pt['tpot_p99'], 2)} ms at {v['top']} (all levels in the table below).")
    for sentence in (why_sentence(results), baseline_sentence(results), structured_sentence(results)):
        if sentence:
            lines.append(f"* {sentence}")
    fallback = (results.get("settings", {}).get("weights") or {}).get("fallback")
    if fallback:
        lines.append("* **This run did not use the default model** (see below): the figures are not the issue's "
                     "measurement.")
    others = [phase_summary(level(results, lv))["others_cores"] for lv in (1, v["top"])]
    if any(o is not None and o > 0.5 for o in others):
        lines.append(f"* Other load on the machine was above 0.5 cores during the 1- or {v['top']}-stream phase "
                     f"({', '.join(_f(o, 2) for o in others)} cores): the figures are noisy by that much.")
    lines += ["", *_method(results), "", "## Streams", "", *_table_levels(results), "",
              "## Baselines", "", *_table_baselines(results), "",
              "## Structured output", "", *_table_structured(results), ""]
    errors = results.get("error_messages") or []
    if errors:
        lines += ["## Errors", "", *(f"* `{e}`" for e in errors), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-json", required=True, metavar="FILE", help="the results file of generation_bench")
    parser.add_argument("--out", help="write the Markdown page here (else print it)")
    args = parser.parse_args()
    results = json.loads(Path(args.from_json).read_text())
    results.setdefault("json_path", args.from_json)
    text = render(results)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
