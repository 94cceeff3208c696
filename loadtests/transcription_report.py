"""The page ``loadtests/transcription_bench.py`` writes, rendered from its raw results alone
(``render(results)``), so it can be regenerated without rerunning (``--from-json``).

Every figure on the page is computed here from the results file: the per-phase sums the
bench recorded (audio seconds, wall seconds, per-request real-time factors, the server's
histogram sums diffed around the phase). Nothing is retyped."""

from __future__ import annotations

import statistics

from loadtests.runinfo import div as _div
from loadtests.runinfo import fmt as _f
from loadtests.runinfo import page_header, speedup_verdict
from loadtests.runinfo import times as _x

MODEL, NETWORK = "speech", "speech_ctc"
TARGET_RTF = 0.05  # the issue's bar: p50 request RTF at 1 stream at most this
TARGET_SPEEDUP = 3.0  # ... and audio-s/s at 8 streams at least this x that of 1 stream
TARGET_FAIRNESS = 2.0  # a 3 s request during a 10 min one: at most about this x its latency alone
LEVELS = (1, 4, 8)
# features and ctc run on the model's stage pool: *_queue is the wait for its thread
STAGES = ("decode", "split", "features_queue", "features", "network", "ctc_queue", "ctc")
STAGE_MEANING = {
    "decode": "file bytes -> mono float32 at 16 kHz (libsndfile decode, downmix, soxr HQ resample)",
    "split": "energy VAD, cuts at pauses into chunks of at most 15 s",
    "features": "log-mel features of one chunk",
    "network": "one chunk through the network's dynamic batcher: queue wait + batched ONNX compute",
    "ctc": "CTC decoding of one chunk (the model's decoder), word timings",
}
REQUIREMENT = ("Real-time factor (processing time / audio duration) on this CPU, at 1 stream and at 8 concurrent "
               "streams of long audio. Target: RTF <= 0.05 at 1 stream. Aggregate throughput (audio seconds per "
               "wall second) at 8 streams >= 3x that of one stream, from batching across chunks and requests. "
               "State where the time goes.")








def _streams(level) -> str:
    return f"{level} stream{'s' if int(level) > 1 else ''}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---- figures from the rounds ------------------------------------------------------------------


def phases_at(results: dict, level: int) -> list[dict]:
    """Every round's phase at one concurrency level, in round order."""
    return [r["phases"][str(level)] for r in results.get("rounds", []) if str(level) in r["phases"]]


def throughput(phase: dict) -> float | None:
    """Audio seconds transcribed per wall second of the phase."""
    return _div(phase["audio_s"], phase["wall_s"])


def p50_rtf(phase: dict) -> float | None:
    """The median request's latency / its recording's duration."""
    return _median(phase.get("rtf", []))


def level_summary(results: dict, level: int) -> dict:
    """Medians over rounds (throughput, p50 RTF) and sums over rounds (server counters)."""
    phases = phases_at(results, level)
    net = [p.get("network", {}) for p in phases]
    rows = sum(n.get("batch_rows", 0.0) for n in net)
    batches = sum(n.get("batches", 0) for n in net)
    rtfs = [r for p in phases for r in p.get("rtf", [])]
    return {
        "level": level,
        "rounds": len(phases),
        "requests": sum(p["requests"] for p in phases),
        "errors": sum(p.get("errors", 0) for p in phases),
        "audio_s": _median(p["audio_s"] for p in phases),
        "wall_s": _median(p["wall_s"] for p in phases),
        "throughput": _median(throughput(p) for p in phases),
        "rounds_throughput": [throughput(p) for p in phases],
        "p50_rtf": _median(p50_rtf(p) for p in phases),
        "p90_rtf_all": sorted(rtfs)[int(0.9 * (len(rtfs) - 1))] if rtfs else None,
        "mean_batch": _div(rows, batches),
        "batches": batches,
        "server_cores": _median(p.get("server_cores") for p in phases),
        "others_cores": _median(p.get("others_cores") for p in phases),
        "wer": _median(p.get("wer") for p in phases),
    }


def stage_table(results: dict, level: int) -> dict:
    """The server's stage histograms, summed over every round's phase at ``level``: seconds,
    count, share of all stage time, stage seconds per audio second."""
    phases = phases_at(results, level)
    audio = sum(p["audio_s"] for p in phases)
    sums = {s: sum(p.get("stages", {}).get(s, {}).get("sum_s", 0.0) for p in phases) for s in STAGES}
    counts = {s: sum(p.get("stages", {}).get(s, {}).get("count", 0) for p in phases) for s in STAGES}
    total = sum(sums.values())
    net = [p.get("network", {}) for p in phases]
    queue_s, compute_s = sum(n.get("queue_s", 0.0) for n in net), sum(n.get("compute_s", 0.0) for n in net)
    queued, batches = sum(n.get("queued", 0) for n in net), sum(n.get("batches", 0) for n in net)
    return {
        "level": level,
        "audio_s": audio,
        "stages": {s: {"sum_s": sums[s], "count": counts[s], "share": _div(sums[s], total),
                       "per_audio_s": _div(sums[s], audio), "mean_ms": _div(sums[s] * 1e3, counts[s])} for s in STAGES},
        "total_s": total,
        "queue_s": queue_s, "compute_s": compute_s,
        "queue_share": _div(queue_s, queue_s + compute_s),
        "mean_queue_ms": _div(queue_s * 1e3, queued), "mean_compute_ms": _div(compute_s * 1e3, batches),
        "compute_per_audio_s": _div(compute_s, audio),
        "chunks": queued, "batches": batches,
    }


def top_level(results: dict) -> int:
    return max(results["settings"]["levels"])


def verdicts(results: dict) -> dict:
    """The two targets, from the results alone."""
    targets = results["settings"].get("targets", {})
    rtf_target, speedup_target = targets.get("rtf", TARGET_RTF), targets.get("speedup", TARGET_SPEEDUP)
    top = top_level(results)
    one, many = level_summary(results, 1), level_summary(results, top)
    rtf, speedup = one["p50_rtf"], _div(many["throughput"], one["throughput"])
    return {
        "rtf": rtf, "rtf_target": rtf_target, "rtf_met": rtf is not None and rtf <= rtf_target,
        "top": top, "speedup": speedup, "speedup_target": speedup_target,
        "speedup_met": speedup is not None and speedup >= speedup_target,
        "throughput_1": one["throughput"], "throughput_top": many["throughput"],
        "needed_throughput": None if one["throughput"] is None else speedup_target * one["throughput"],
    }


def _word(met: bool) -> str:
    return "**MET**" if met else "**MISSED**"


def rtf_sentence(v: dict) -> str:
    if v["rtf"] is None:
        return "**MISSED**: RTF at 1 stream could not be computed (no request answered)."
    how = "at or below" if v["rtf_met"] else "above"
    return (f"{_word(v['rtf_met'])}: p50 real-time factor at 1 stream **{v['rtf']:.4f}** "
            f"({1 / v['rtf']:.1f}x faster than real time), {how} the {v['rtf_target']:g} target.")


def speedup_sentence(v: dict) -> str:
    return speedup_verdict(v["top"], v["throughput_top"], v["throughput_1"], "audio-s/s", v["speedup"],
                           v["speedup_target"], v["speedup_met"], v["needed_throughput"], "no 1-stream throughput")


def quiet_rounds(results: dict, max_others: float = 0.5) -> dict | None:
    """The verdict figures from the rounds whose 1-stream and top phases each saw at most
    ``max_others`` cores of other load: medians of those rounds. None when none was quiet."""
    top = str(top_level(results))
    rounds = results.get("rounds") or []
    quiet = [r for r in rounds if all(r["phases"][lv].get("others_cores", 1e9) <= max_others for lv in ("1", top))]
    if not quiet:
        return None
    t1 = _median(throughput(r["phases"]["1"]) for r in quiet)
    tt = _median(throughput(r["phases"][top]) for r in quiet)
    return {"max_others": max_others, "rounds": len(quiet), "of": len(rounds), "top": int(top),
            "rtf": _median(p50_rtf(r["phases"]["1"]) for r in quiet), "throughput_1": t1, "throughput_top": tt,
            "speedup": _div(tt, t1), "server_cores_1": _median(r["phases"]["1"].get("server_cores") for r in quiet)}


def quiet_sentence(results: dict) -> str:
    q = quiet_rounds(results)
    if q is None:
        return "No round's 1-stream and top phases both ran with at most 0.5 cores of other load."
    return (f"In the {q['rounds']} of {q['of']} rounds whose 1-stream and {q['top']}-stream phases saw at most "
            f"{q['max_others']:g} cores of other load: p50 RTF at 1 stream {_f(q['rtf'], 4)}, "
            f"{_f(q['throughput_top'], 1)} / {_f(q['throughput_1'], 1)} audio-s/s = {_x(q['speedup'])} (the server "
            f"already kept {_f(q['server_cores_1'], 2)} cores busy at 1 stream); medians of those rounds.")


def cpu_sentence(results: dict) -> str | None:
    """The speedup as (server cores busy) x (audio seconds per server CPU second), both
    ratios of the same medians, so their product is the speedup exactly."""
    top = top_level(results)
    one, many = level_summary(results, 1), level_summary(results, top)
    cores = results.get("machine", {}).get("cores", "?")
    c1, ct, t1, tt = one["server_cores"], many["server_cores"], one["throughput"], many["throughput"]
    if not (c1 and ct and t1 and tt):
        return None
    e1, et = t1 / c1, tt / ct
    return (f"Why: at 1 stream the server kept {c1:.2f} of the {cores} cores busy, {e1:.1f} audio s per CPU s; at "
            f"{top} streams {ct:.2f} cores, {et:.1f} audio s per CPU s (batching, mean batch "
            f"{_f(many['mean_batch'], 2)} chunks). Speedup = {_x(ct / c1)} more cores busy x {_x(et / e1)} more audio "
            f"per CPU second = {_x(tt / t1)}.")


def fairness_sentence(results: dict) -> str | None:
    """The fairness probe: a short request's p50 latency during a long one vs alone."""
    f = results.get("fairness")
    if not f:
        return None
    alone, loaded = _median(f["alone_s"]), _median(f["loaded_s"])
    ratio = _div(loaded, alone)
    met = ratio is not None and ratio <= TARGET_FAIRNESS
    inside = "" if f["all_short_inside_long"] else " (the long request had finished before the last short one: not a valid probe)"
    return (f"Fairness: a {_f(f['short_s'])} s request took {_f(loaded, 3)} s (p50 of {len(f['loaded_s'])}) while a "
            f"{_f(f['long_s'] / 60)} min recording was being transcribed, vs {_f(alone, 3)} s alone = {_x(ratio)} "
            f"(target about {TARGET_FAIRNESS:g}x: {_word(met)}){inside}.")


def headline(results: dict) -> list[str]:
    """One or two Markdown bullets for docs/benchmarks.md, from the results alone."""
    v = verdicts(results)
    q = quiet_rounds(results)
    t = stage_table(results, v["top"])
    shares = sorted(((s, t["stages"][s]["share"]) for s in STAGES if t["stages"][s]["share"]), key=lambda kv: -kv[1])
    where = ", ".join(f"{s} {_pct(share)}" for s, share in shares[:3])
    return [
        f"* Transcription (`{MODEL}`, long recordings, {results.get('date_utc', 'n/a')}): "
        f"RTF {_f(v['rtf'], 4)} at 1 stream (target <= {v['rtf_target']:g}: {'MET' if v['rtf_met'] else 'MISSED'}); "
        f"{_f(v['throughput_top'], 1)} vs {_f(v['throughput_1'], 1)} audio-s/s at {v['top']} vs 1 stream = "
        f"{_x(v['speedup'])} (target >= {v['speedup_target']:g}x: {'MET' if v['speedup_met'] else 'MISSED'})"
        + ("" if q is None else f"; in the {q['rounds']} of {q['of']} rounds with <= {q['max_others']:g} cores of other load: RTF {_f(q['rtf'], 4)}, "
           f"{_x(q['speedup'])}") + ".",
        f"* Where the time goes at {v['top']} streams (share of server stage time): {where or 'n/a'}; the network "
        f"ran {_f(level_summary(results, v['top'])['mean_batch'], 2)} chunks per batch. "
        "Details: [benchmarks-transcription.md](benchmarks-transcription.md).",
        *([f"* {fairness_sentence(results)}"] if fairness_sentence(results) else []),
    ]


# ---- the page ------------------------------------------------------------------------------------


def section_phases(results: dict) -> list[str]:
    one = level_summary(results, 1)
    out = ["| streams | requests (errors) | audio s | wall s | p50 RTF | throughput audio-s/s | speedup vs 1 stream "
           "| mean network batch | server cores | median WER |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for level in results["settings"]["levels"]:
        s = level_summary(results, level)
        out.append(f"| {level} | {s['requests']} ({s['errors']}) | {_f(s['audio_s'])} | {_f(s['wall_s'], 2)} | "
                   f"{_f(s['p50_rtf'], 4)} | {_f(s['throughput'], 1)} | {_x(_div(s['throughput'], one['throughput']))} | "
                   f"{_f(s['mean_batch'], 2)} | {_f(s['server_cores'], 2)} | {_pct(s['wer'])} |")
    return out


def section_stages(results: dict) -> list[str]:
    levels = results["settings"]["levels"]
    tables = {level: stage_table(results, level) for level in levels}
    head = " | ".join(f"{_streams(lv)}: share, s per audio s, mean ms" for lv in levels)
    out = [f"| stage | {head} |", "|---|" + "---|" * len(levels)]
    for stage in STAGES:
        cells = " | ".join(f"{_pct(t['stages'][stage]['share'])}, {_f(t['stages'][stage]['per_audio_s'], 4)}, "
                           f"{_f(t['stages'][stage]['mean_ms'], 1)}" for t in tables.values())
        out.append(f"| {stage} | {cells} |")
    out += [
        "",
        "| network (`speech_ctc`) | " + " | ".join(_streams(lv) for lv in levels) + " |",
        "|---|" + "---|" * len(levels),
        "| chunks / batches | " + " | ".join(f"{t['chunks']:,} / {t['batches']:,}" for t in tables.values()) + " |",
        "| mean batch (chunks) | " + " | ".join(_f(level_summary(results, lv)["mean_batch"], 2) for lv in levels) + " |",
        "| mean queue wait per chunk | " + " | ".join(f"{_f(t['mean_queue_ms'], 1)} ms" for t in tables.values()) + " |",
        "| mean compute per batch | " + " | ".join(f"{_f(t['mean_compute_ms'], 1)} ms" for t in tables.values()) + " |",
        "| queue share of queue + compute | " + " | ".join(_pct(t["queue_share"]) for t in tables.values()) + " |",
        "| compute s per audio s | " + " | ".join(_f(t["compute_per_audio_s"], 4) for t in tables.values()) + " |",
    ]
    return out


def section_inprocess(results: dict) -> list[str]:
    ip = results.get("inprocess")
    if not ip:
        return []
    out = ["## In-process reference", ""]
    dec = ip.get("decode")
    if dec:
        out.append(f"* The decode stage split, on the {dec['recordings']} recordings ({_f(dec['audio_s'])} s of audio, "
                   f"{dec['source_rate']} Hz FLAC), `server.pipelines.audio.decode_audio` in this process: decoding alone "
                   f"(at the file's own rate) {_f(dec['decode_s'] / dec['audio_s'] * 1e3, 2)} ms per audio s, with the "
                   f"resample to 16 kHz {_f(dec['decode_resample_s'] / dec['audio_s'] * 1e3, 2)} ms per audio s: "
                   f"resampling is {_pct(_div(dec['decode_resample_s'] - dec['decode_s'], dec['decode_resample_s']))} "
                   "of the decode stage.")
    net = ip.get("network")
    if net:
        one, batched = net["batch1_s"], net["batched_s"]
        out.append(f"* The same ONNX file, loaded by deepserve's runtime class with the server's options "
                   f"(`{net.get('session', {})}`), on the same {net['chunks']} chunks (features padded as the server "
                   f"pads them; {_f(net['audio_s'])} s of audio): one chunk per call "
                   f"{_f(one / net['audio_s'], 4)} s per audio s; up to {net['batch']} equal-shape chunks per call "
                   f"({net['calls']} calls) {_f(batched / net['audio_s'], 4)} s per audio s, "
                   f"**{_x(_div(one, batched))}** cheaper per chunk. This is the most batching can save in the "
                   "network on this CPU.")
    return out + [""]


def section_rounds(results: dict) -> list[str]:
    levels = results["settings"]["levels"]
    out = [f"| round | order | {' | '.join(f'{_streams(lv)} audio-s/s' for lv in levels)} "
           f"| speedup {max(levels)} vs 1 | p50 RTF at 1 | other load (cores) |",
           "|---|---|" + "---|" * len(levels) + "---|---|---|"]
    for r in results.get("rounds", []):
        ph = r["phases"]
        cells = " | ".join(_f(throughput(ph[str(lv)]), 1) for lv in levels)
        ratio = _div(throughput(ph[str(max(levels))]), throughput(ph["1"]))
        out.append(f"| {r['round']} | {r['order']} | {cells} | {_x(ratio)} | {_f(p50_rtf(ph['1']), 4)} | "
                   f"{_f(r.get('others_cores'), 2)} |")
    return out


def _header(results: dict) -> list[str]:
    return page_header(results, "Transcription: real-time factor and throughput of long recordings",
                       "transcription_bench", "docs/benchmarks-transcription.md", "",
                       "synthesizing the recordings, exporting the network, starting the server, warm-up")


def _method(results: dict) -> list[str]:
    s = results["settings"]
    recs = results.get("recordings", [])
    secs = [r["seconds"] for r in recs]
    return [
        "## What was measured",
        "",
        (f"{len(recs)} recordings synthesized once per run with espeak-ng: sentences from "
         "`models.speech_text.make_sentence` over the recognizer's vocabulary, one training voice per recording "
         f"(`models.speech_data.voices(unseen=False)`), joined with pauses of {s.get('pause_s', ['?', '?'])[0]}-"
         f"{s.get('pause_s', ['?', '?'])[1]} s; "
         + (f"{min(secs):.0f}-{max(secs):.0f} s each ({sum(secs):.0f} s in all), " if secs else "")
         + f"sent as {s.get('format', '?')} at {s.get('source_rate', '?')} Hz (so the server resamples)."),
        (f"One server on 127.0.0.1 (`python -m server.cli serve`, `--max-request-bytes` "
         f"{s.get('max_request_bytes', 0) // 2**20} MiB) serving the default repository's transcription entries "
         f"(`export.default_repository.build_speech_entries`): `{MODEL}` over `{NETWORK}` (ONNX, dynamic batching). "
         f"Each request is `POST {s.get('route', '?')}` (multipart `file`, `model` {MODEL}, `response_format` json; "
         f"{_decoder(s)}); client: {s.get('client', '?')}, one keep-alive connection per stream."),
        ("Phases: *n streams* = n clients, each sending its recordings back to back (closed loop); "
         + ", ".join(f"{_streams(lv)}: {n} requests" for lv, n in s.get("requests", {}).items())
         + f". Per round every level runs once, the order reversed every other round; {s.get('rounds', '?')} rounds."),
        ("* **p50 RTF**: per request, client-side latency (send to last byte) / the recording's duration; the median "
         "request of a phase, then the median over rounds."),
        ("* **throughput**: audio seconds answered / the phase's wall seconds; the median over rounds. "
         "**speedup**: throughput at n streams / throughput at 1 stream (both medians of this run)."),
        ("* **stage breakdown**: `/metrics` scraped before and after each phase; the `_sum` and `_count` of "
         f"`deepserve_ensemble_step_duration_seconds{{model=\"{MODEL}\"}}` per stage, diffed, summed over rounds. "
         "Stages of different chunks run at the same time (worker threads, the batcher), so stage time adds up to "
         "more than wall time; a share is of the sum of stage time. The network stage is the wall time a chunk "
         f"spends in `{NETWORK}`'s batcher; `{NETWORK}`'s own `deepserve_queue_duration_seconds` (per chunk), "
         "`deepserve_compute_duration_seconds` and `deepserve_batch_size` (per batch) split it."),
        "",
        "Stages: " + "; ".join(f"**{k}** {v}" for k, v in STAGE_MEANING.items()) + ".",
    ]


def _decoder(settings: dict) -> str:
    beam = settings.get("beam_width")
    if beam is None:
        return "decoder not recorded"
    return f"beam search over the word list, width {beam}" if beam else "greedy decoding"


def render(results: dict) -> str:
    """The Markdown page, from the results dict alone (``--from-json`` re-renders it)."""
    v = verdicts(results)
    top = v["top"]
    t = stage_table(results, top)
    lines = _header(results) + [
        "",
        "## The requirement",
        "",
        f"> {REQUIREMENT}",
        "",
        f"* {rtf_sentence(v)}",
        f"* {speedup_sentence(v)}",
        f"* **{'Both targets are met' if v['rtf_met'] and v['speedup_met'] else 'The requirement is missed'}.**",
    ]
    shares = sorted(((s, t["stages"][s]["share"]) for s in STAGES if t["stages"][s]["share"]), key=lambda kv: -kv[1])
    if shares:
        lines.append(f"* Where the time goes at {top} streams: " + ", ".join(f"{s} {_pct(sh)}" for s, sh in shares)
                     + f" of server stage time; in the network, {_pct(t['queue_share'])} of queue + compute was "
                     f"queueing; mean batch {_f(level_summary(results, top)['mean_batch'], 2)} chunks.")
    if results.get("rounds"):
        lines.append(f"* {quiet_sentence(results)}")
    why = cpu_sentence(results)
    if why:
        lines.append(f"* {why}")
    fair = fairness_sentence(results)
    if fair:
        lines.append(f"* {fair}")
    lines += ["", *_method(results), "", "## Results", "", *section_phases(results), "",
              "## Where the time goes", "", *section_stages(results), "", *section_inprocess(results),
              "## Per round", "", *section_rounds(results), ""]
    errors = results.get("error_messages") or []
    if errors:
        lines += ["## Errors", "", *(f"* `{e}`" for e in errors), ""]
    return "\n".join(lines).rstrip() + "\n"
