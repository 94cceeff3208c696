"""The generation benchmark page is rendered from its results dict alone: the 16-stream
speedup against its 5x target, the MET / MISSED wording, the latency quantiles, the
baselines and the structured-output cost come out of the data as given.

Runs no benchmark: a tiny hand-made results dict goes through ``render`` and ``headline``.
"""

from __future__ import annotations

import copy

from loadtests import generation_report as gr


def _phase(level: int, tokens: int, wall_s: float, ttft: list[float], tpot: list[float], itl: list[float],
           server_cores: float, **extra) -> dict:
    return {"level": level, "kind": "free", "requests": len(ttft), "errors": 0, "wall_s": wall_s,
            "output_tokens": tokens, "ttft_ms": ttft, "tpot_ms": tpot, "itl_ms": itl, "e2e_ms": [100.0] * len(ttft),
            "finish": {"length": len(ttft)}, "cached_tokens": 0, "server_cores": server_cores, "client_cores": 0.2,
            "others_cores": 0.1, "server": {"tpot_sum_s": 0.5, "tpot_count": 100, "ttft_sum_s": 0.1, "ttft_count": 10},
            **extra}


RESULTS = {
    "command": ".venv/bin/python -m loadtests.generation_bench --seconds 20",
    "date_utc": "2026-01-02 03:04 UTC",
    "commit": "abc1234",
    "machine": {"cores": 2, "cpu": "Test CPU", "platform": "Linux-test", "python": "3.11.7", "torch": "2.13.0+cpu",
                "transformers": "5.0.0"},
    "settings": {"model": "textgen", "route": "/v1/completions", "max_tokens": 64, "temperature": 0, "ignore_eos": True,
                 "levels": [1, 4, 16], "seconds": 20.0, "structured_seconds": 15.0, "targets": {"speedup": 5.0},
                 "client": "httpx 0.28.1, asyncio", "prompt_tokens": [8, 12],
                 "threads": {"server": "torch's default (2 here)", "baseline": 2},
                 "weights": {"path": "models/weights/textgen", "sha256": "0123456789ab", "fallback": False},
                 "model_facts": {"model_type": "gpt2", "n_layer": 4, "n_embd": 192, "n_head": 4, "vocab_size": 4096,
                                 "n_positions": 256, "params": 2_600_000}},
    "levels": {
        # 1 stream: 2,000 tokens in 20 s = 100 tokens/s; TTFT p50 of [10, 20, 30] = 20
        "1": _phase(1, 2000, 20.0, [10.0, 20.0, 30.0], [9.0, 10.0, 11.0], [9.0, 10.0, 10.0, 12.0], 0.5),
        "4": _phase(4, 6000, 20.0, [20.0, 40.0], [15.0, 17.0], [15.0, 16.0], 1.0),
        # 16 streams: 12,000 tokens in 20 s = 600 tokens/s = 6.00x
        "16": _phase(16, 12000, 20.0, [50.0, 60.0, 70.0, 200.0], [20.0, 25.0, 30.0, 40.0], [20.0, 20.0, 30.0], 1.5),
    },
    "structured": {
        "level": 4, "schema": {"type": "object"},
        # 2,400 tokens in 15 s = 160 tokens/s = 0.53x of 300
        "json_object": _phase(4, 2400, 15.0, [25.0, 35.0], [20.0, 20.0], [20.0], 1.0, kind="json_object",
                              finish={"stop": 2}, valid_json=2),
        "json_schema": _phase(4, 1500, 15.0, [30.0, 30.0], [21.0, 21.0], [21.0], 1.0, kind="json_schema",
                              finish={"stop": 1, "length": 1}, valid_json=1),
    },
    "baselines": {"threads": 2,
                  # naive: 512 tokens in 8 s = 64 tokens/s; static: 1,024 tokens in 4 s (median of 3, 4, 5) = 256
                  "naive": {"per_request_s": [1.0] * 8, "tokens": 512},
                  "static": {"batch": 16, "runs_s": [3.0, 5.0, 4.0], "tokens_per_run": 1024, "prompt_width": 12}},
    "others_cores": 0.1,
    "total_s": 200.0,
    "measured_s": 90.0,
}


def test_verdict_and_figures_come_from_the_phases():
    v = gr.verdict(RESULTS)
    assert (v["top"], v["one"], v["many"], v["speedup"], v["met"]) == (16, 100.0, 600.0, 6.0, True)
    b = gr.baseline_rates(RESULTS)
    assert (b["naive"], b["static"], b["static_wall_s"]) == (64.0, 256.0, 4.0)
    p = gr.phase_summary(RESULTS["levels"]["16"])
    assert (p["ttft_p50"], p["ttft_p99"], p["tpot_p50"], p["tpot_p99"]) == (65.0, 70.0, 27.5, 30.0)
    assert p["server_tpot_ms"] == 5.0


def test_render_says_met_with_the_numbers():
    page = gr.render(copy.deepcopy(RESULTS))
    assert ("**MET**: 600.0 tokens/s at 16 streams / 100.0 tokens/s at 1 stream = **6.00x**, at or above the 5x "
            "target.") in page
    assert "MISSED" not in page
    assert ("TTFT p50 / p99 20.0 / 20.0 ms at 1 stream, 65.0 / 70.0 ms at 16; TPOT p50 / p99 10.00 / 10.00 ms at 1 "
            "stream, 27.50 / 30.00 ms at 16") in page
    assert "| 16 | 4 (0) | 12,000 | 20.0 | 600.0 | 6.00x | 65.0 / 70.0 | 27.50 / 30.00 | 20.00 / 20.00 |" in page
    assert "naive one-at-a-time loop 64.0 tokens/s; static batch of 16 256.0 tokens/s" in page
    assert "at 16 streams 9.38x the naive loop and 2.34x static batching" in page
    assert "`json_object` 160.0 tokens/s (0.53x of free text; p50 TPOT 20.00 ms = 1.25x free text's" in page
    assert "| `json_schema` | 2 (0) | 750.0 | 1 / 1 | 1 of 2 | 100.0 | 0.33x |" in page
    assert "2.60 M parameters" in page and "`abc1234`" in page and "same 2 cores" in page
    assert "Not the default model" not in page


def test_render_says_missed_with_the_numbers_and_why():
    results = copy.deepcopy(RESULTS)
    results["levels"]["16"]["output_tokens"] = 8000  # 400 tokens/s = 4.00x
    page = gr.render(results)
    assert ("**MISSED**: 400.0 tokens/s at 16 streams / 100.0 tokens/s at 1 stream = **4.00x**, below the 5x target "
            "(it needed 500.0 tokens/s at 16 streams).") in page
    assert "**MET**" not in page
    # 0.5 -> 1.5 cores (3.00x) x 200 -> 267 tokens per CPU second (1.33x) = 4.00x
    assert ("Speedup = 3.00x (cores busy, 16 vs 1 stream) x 1.33x (tokens per CPU second) = 4.00x.") in page
    assert "MISSED" in gr.headline(results)[0] and "4.00x" in gr.headline(results)[0]


def test_fallback_model_and_other_load_are_said():
    results = copy.deepcopy(RESULTS)
    results["settings"]["weights"].update(fallback=True, note="a tiny random gpt2")
    results["levels"]["1"]["others_cores"] = 0.9
    page = gr.render(results)
    assert "**Not the default model:** a tiny random gpt2." in page
    assert "**This run did not use the default model**" in page
    assert "Other load on the machine was above 0.5 cores" in page and "0.90" in page


def test_missing_figures_render_as_na_not_a_crash():
    results = copy.deepcopy(RESULTS)
    results["levels"]["1"].update(output_tokens=0, ttft_ms=[], tpot_ms=[], itl_ms=[])
    results.pop("baselines")
    results.pop("structured")
    page = gr.render(results)
    assert "the 16-stream speedup could not be computed" in page
    assert "Not measured in this run." in page
    assert "MISSED" in gr.headline(results)[0]


def test_gap_quantiles_recorded_by_the_bench_are_used_as_given():
    results = copy.deepcopy(RESULTS)
    results["levels"]["16"].pop("itl_ms")
    results["levels"]["16"]["itl_q"] = {"p50_ms": 12.5, "p99_ms": 80.25, "count": 1000}
    assert "| 27.50 / 30.00 | 12.50 / 80.25 |" in gr.render(results)


def test_step_times_are_compared_with_transformers():
    page = gr.render(copy.deepcopy(RESULTS))
    # naive p50 1.0 s / 64 tokens = 15.62 ms; static 4.0 s / 64 = 62.50 ms; server gaps 10.00 and 20.00 ms
    assert ("Per decode step, transformers took 15.62 ms for one sequence and 62.50 ms for a batch of 16; the server "
            "10.00 ms and 20.00 ms") in page
