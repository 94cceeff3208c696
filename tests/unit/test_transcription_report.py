"""The transcription benchmark page is rendered from its results dict alone: the RTF at 1
stream and the 8-stream speedup against their targets, the MET / MISSED wording, the stage
shares and the figures come out of the data as given.

Runs no benchmark: a tiny hand-made results dict goes through ``render`` and ``headline``.
"""

from __future__ import annotations

import copy

from loadtests import transcription_report as tr


def _stages(decode: float, split: float, features: float, network: float, ctc: float, chunks: int,
            features_queue: float = 0.0, ctc_queue: float = 0.0) -> dict:
    sums = {"decode": decode, "split": split, "features_queue": features_queue, "features": features,
            "network": network, "ctc_queue": ctc_queue, "ctc": ctc}
    assert set(sums) == set(tr.STAGES)
    return {s: {"sum_s": v, "count": 1 if s in ("decode", "split") else chunks} for s, v in sums.items()}


def _phase(level: int, audio_s: float, wall_s: float, rtf: list[float], stages: dict, network: dict) -> dict:
    return {"level": level, "requests": len(rtf), "answered": len(rtf), "errors": 0, "audio_s": audio_s,
            "wall_s": wall_s, "rtf": rtf, "wer": 0.05, "server_cores": 1.5, "client_cores": 0.1,
            "others_cores": 0.05, "stages": stages, "network": network}


ONE_STAGES = _stages(1.0, 0.1, 2.0, 6.0, 0.9, 50)  # 10 s of stage time per round
ONE_NET = {"queue_s": 1.0, "queued": 50, "compute_s": 4.0, "batches": 40, "batch_rows": 50.0}
TOP_STAGES = _stages(2.0, 0.2, 4.0, 12.0, 1.8, 200)  # 20 s per round: 10 / 1 / 20 / 60 / 9 %
TOP_NET = {"queue_s": 6.0, "queued": 200, "compute_s": 4.8, "batches": 40, "batch_rows": 200.0}

RESULTS = {
    "command": ".venv/bin/python -m loadtests.transcription_bench --rounds 2",
    "date_utc": "2026-01-02 03:04 UTC",
    "commit": "abc1234",
    "machine": {"cores": 2, "cpu": "Test CPU", "platform": "Linux-test", "python": "3.11.7"},
    "settings": {"rounds": 2, "levels": [1, 8], "targets": {"rtf": 0.05, "speedup": 3.0},
                 "requests": {"1": 4, "8": 16}, "route": "/v1/audio/transcriptions", "format": "FLAC (16-bit)",
                 "source_rate": 22050, "pause_s": [0.4, 1.2], "max_request_bytes": 64 * 2**20,
                 "client": "httpx 0.28.1, asyncio"},
    "recordings": [{"seconds": 150.0, "bytes": 3_000_000, "voice": "en-us", "sentences": 40, "words": 300}] * 4,
    "rounds": [
        {"round": 1, "order": "1 then 8", "others_cores": 0.1, "seconds": 50.0,
         "phases": {"1": _phase(1, 600.0, 20.0, [0.03, 0.035, 0.04], ONE_STAGES, ONE_NET),     # 30 audio-s/s
                    "8": _phase(8, 2400.0, 24.0, [0.1, 0.2], TOP_STAGES, TOP_NET)}},              # 100 audio-s/s
        {"round": 2, "order": "8 then 1", "others_cores": 0.2, "seconds": 60.0,
         "phases": {"1": _phase(1, 600.0, 24.0, [0.04, 0.045, 0.05], ONE_STAGES, ONE_NET),     # 25 audio-s/s
                    "8": _phase(8, 2400.0, 30.0, [0.1, 0.3], TOP_STAGES, TOP_NET)}},              # 80 audio-s/s
    ],
    "inprocess": {"decode": {"recordings": 4, "audio_s": 600.0, "source_rate": 22050, "decode_s": 0.3,
                             "decode_resample_s": 0.6},
                  "network": {"chunks": 20, "audio_s": 300.0, "batch": 8, "calls": 4, "batch1_s": 3.0,
                              "batched_s": 1.5, "session": {"intra_op_num_threads": 2}}},
    "others_cores": 0.15,
}


def test_verdicts_are_medians_over_rounds():
    v = tr.verdicts(RESULTS)
    assert abs(v["rtf"] - 0.04) < 1e-12  # median of the rounds' p50s 0.035 and 0.045
    assert abs(v["throughput_1"] - 27.5) < 1e-9 and abs(v["throughput_top"] - 90.0) < 1e-9
    assert abs(v["speedup"] - 90.0 / 27.5) < 1e-12
    assert v["rtf_met"] and v["speedup_met"] and v["top"] == 8


def test_render_says_met_with_the_numbers():
    page = tr.render(copy.deepcopy(RESULTS))
    assert ("**MET**: p50 real-time factor at 1 stream **0.0400** (25.0x faster than real time), at or below the "
            "0.05 target.") in page
    assert ("**MET**: 90.0 audio-s/s at 8 streams / 27.5 audio-s/s at 1 stream = **3.27x**, at or above the 3x "
            "target.") in page
    assert "**Both targets are met.**" in page
    assert "**MISSED**" not in page


def test_render_says_missed_with_the_numbers():
    results = copy.deepcopy(RESULTS)
    for r in results["rounds"]:
        r["phases"]["8"]["wall_s"] *= 1.5  # 66.7 and 53.3 audio-s/s: median 60
        r["phases"]["1"]["rtf"] = [x + 0.02 for x in r["phases"]["1"]["rtf"]]  # p50s 0.055, 0.065
    page = tr.render(results)
    assert ("**MISSED**: p50 real-time factor at 1 stream **0.0600** (16.7x faster than real time), above the 0.05 "
            "target.") in page
    assert ("**MISSED**: 60.0 audio-s/s at 8 streams / 27.5 audio-s/s at 1 stream = **2.18x**, below the 3x target "
            "(it needed 82.5 audio-s/s at 8 streams).") in page
    assert "**The requirement is missed.**" in page
    assert "**MET**" not in page


def test_stage_shares_and_network_split_come_from_the_sums():
    t = tr.stage_table(RESULTS, 8)
    shares = {s: round(t["stages"][s]["share"], 6) for s in tr.STAGES}
    assert shares == {"decode": 0.1, "split": 0.01, "features_queue": 0.0, "features": 0.2, "network": 0.6,
                      "ctc_queue": 0.0, "ctc": 0.09}
    assert abs(t["queue_share"] - 6.0 / 10.8) < 1e-12
    assert abs(t["mean_queue_ms"] - 30.0) < 1e-9 and abs(t["mean_compute_ms"] - 120.0) < 1e-9
    assert tr.level_summary(RESULTS, 8)["mean_batch"] == 5.0
    page = tr.render(copy.deepcopy(RESULTS))
    assert "| network | 60.0%, 0.0100, 120.0 | 60.0%, 0.0050, 60.0 |" in page
    assert "| mean batch (chunks) | 1.25 | 5.00 |" in page
    assert "| queue share of queue + compute | 20.0% | 55.6% |" in page
    assert "network 60.0%, features 20.0%, decode 10.0%, ctc 9.0%, split 1.0%" in page


def test_tables_show_the_input_figures():
    page = tr.render(copy.deepcopy(RESULTS))
    assert "| 1 | 6 (0) | 600.0 | 22.00 | 0.0400 | 27.5 | 1.00x | 1.25 | 1.50 | 5.0% |" in page
    assert "| 8 | 4 (0) | 2,400.0 | 27.00 | 0.1750 | 90.0 | 3.27x | 5.00 | 1.50 | 5.0% |" in page
    assert "| 1 | 1 then 8 | 30.0 | 100.0 | 3.33x | 0.0350 | 0.10 |" in page
    assert "| 2 | 8 then 1 | 25.0 | 80.0 | 3.20x | 0.0450 | 0.20 |" in page
    assert "resampling is 50.0% of the decode stage" in page
    assert "**2.00x** cheaper per chunk" in page
    assert "same 2 cores" in page and "`abc1234`" in page and "2026-01-02 03:04 UTC" in page


def test_cpu_sentence_splits_the_speedup_into_cores_and_efficiency():
    results = copy.deepcopy(RESULTS)
    for r in results["rounds"]:
        r["phases"]["1"]["server_cores"] = 0.8
        r["phases"]["8"]["server_cores"] = 1.6
    assert tr.cpu_sentence(results) == (
        "Why: at 1 stream the server kept 0.80 of the 2 cores busy, 34.4 audio s per CPU s; at 8 streams 1.60 cores, "
        "56.2 audio s per CPU s (batching, mean batch 5.00 chunks). Speedup = 2.00x more cores busy x 1.64x more audio "
        "per CPU second = 3.27x.")
    assert tr.cpu_sentence(results) in tr.render(results)


def test_headline_is_two_bullets_with_the_verdicts():
    lines = tr.headline(copy.deepcopy(RESULTS))
    assert len(lines) == 2 and all(line.startswith("* ") for line in lines)
    assert "RTF 0.0400 at 1 stream (target <= 0.05: MET)" in lines[0]
    assert "90.0 vs 27.5 audio-s/s at 8 vs 1 stream = 3.27x (target >= 3x: MET)" in lines[0]
    assert "network 60.0%, features 20.0%, decode 10.0%" in lines[1] and "5.00 chunks per batch" in lines[1]


def test_quiet_rounds_keep_only_rounds_without_other_load():
    results = copy.deepcopy(RESULTS)
    results["rounds"][1]["phases"]["8"]["others_cores"] = 0.9
    q = tr.quiet_rounds(results)
    assert (q["rounds"], q["of"], q["throughput_1"], q["throughput_top"], q["rtf"]) == (1, 2, 30.0, 100.0, 0.035)
    page = tr.render(results)
    assert ("In the 1 of 2 rounds whose 1-stream and 8-stream phases saw at most 0.5 cores of other load: p50 RTF at "
            "1 stream 0.0350, 100.0 / 30.0 audio-s/s = 3.33x") in page
    assert "in the 1 of 2 rounds with <= 0.5 cores of other load: RTF 0.0350, 3.33x." in tr.headline(results)[0]
    for r in results["rounds"]:
        r["phases"]["1"]["others_cores"] = 1.0
    assert tr.quiet_rounds(results) is None
    assert "No round's 1-stream and top phases both ran with at most 0.5 cores" in tr.render(results)
    assert tr.headline(results)[0].endswith("(target >= 3x: MET).")


def test_missing_figures_render_as_na_not_a_crash():
    results = copy.deepcopy(RESULTS)
    for r in results["rounds"]:
        r["phases"]["1"].update(audio_s=0.0, rtf=[])
        r["phases"]["1"].pop("stages")
        r["phases"]["1"].pop("network")
    results.pop("inprocess")
    page = tr.render(results)
    assert "RTF at 1 stream could not be computed" in page
    assert "the 8-stream speedup could not be computed" in page
    assert "MISSED" in tr.headline(results)[0]


def test_the_fairness_probe_is_judged_against_twice_the_latency_alone():
    results = copy.deepcopy(RESULTS)
    results["fairness"] = {"short_s": 3.1, "long_s": 600.0, "alone_s": [0.10, 0.12, 0.11],
                           "loaded_s": [0.2, 0.25, 0.21], "all_short_inside_long": True}
    sentence = tr.fairness_sentence(results)
    assert "0.210 s" in sentence and "0.110 s alone = 1.91x" in sentence and "MET" in sentence
    assert sentence in tr.render(results) and tr.headline(results)[-1] == f"* {sentence}"
    results["fairness"]["loaded_s"] = [0.5, 0.6, 0.4]
    assert "4.55x" in tr.fairness_sentence(results) and "MISSED" in tr.fairness_sentence(results)
    results["fairness"]["all_short_inside_long"] = False
    assert "not a valid probe" in tr.fairness_sentence(results)
    assert tr.fairness_sentence(RESULTS) is None
