"""The image-generation benchmark page is rendered from its results dict alone: the batched /
one-at-a-time ratio against the 4x target, the MET / MISSED wording and the figures come
out as given.

Runs no benchmark: a tiny hand-made results dict goes through ``render``.
"""

from __future__ import annotations

import copy

from loadtests import images_report as ir


def _point(ips: float, p50: float, p99: float, rows: float, calls: int) -> dict:
    return {"images_per_s": ips, "rounds_images_per_s": [ips], "p50_ms": p50, "p99_ms": p99, "mean_ms": p50,
            "samples": 48, "errors": 0, "calls": calls, "rows": rows * calls, "rows_per_call": rows,
            "calls_by_rows": {"2": calls}, "network_ms_per_call": 3.25, "server_cores": 1.5, "client_cores": 0.1}


def _phase(ips: float, others: float = 0.1) -> dict:
    return {"images_per_s": ips, "others_cores": others}


RESULTS = {
    "command": ".venv/bin/python -m loadtests.images_bench --rounds 1",
    "date_utc": "2026-01-02 03:04 UTC",
    "commit": "abc1234",
    "machine": {"cores": 2, "cpu": "Test CPU", "platform": "Linux-test", "python": "3.11.7"},
    "settings": {"rounds": 1, "concurrency": [1, 4, 16], "steps": 25, "target": 4.0,
                 "requests": {"1": 16, "4": 24, "16": 96}, "route": "/v1/images/generations", "guidance_scale": 2.0,
                 "max_step_rows": {"batched": 64, "single": 2}, "client": "httpx 0.28.1, asyncio"},
    "variants": {
        "batched": {"by_concurrency": {"1": _point(20.0, 50.0, 60.0, 2.0, 400),
                                       "4": _point(40.0, 100.0, 120.0, 7.5, 320),
                                       "16": _point(60.0, 260.0, 300.0, 29.75, 81)}, "errors": 0},
        "single": {"by_concurrency": {"1": _point(19.0, 52.0, 61.0, 2.0, 400),
                                      "4": _point(20.0, 200.0, 210.0, 2.0, 600),
                                      "16": _point(20.0, 800.0, 820.0, 2.0, 2400)}, "errors": 0},
    },
    "inprocess": {"images": 16, "steps": 25, "guidance_scale": 2.0, "rows_per_call": 32, "runs_s": [0.2],
                  "seconds": 0.2, "images_per_s": 80.0, "session": {"intra_op_num_threads": 2}},
    "checks": {"images": 16, "mean_abs_diff": 0.0001, "max_abs_diff": 0.002, "close": 16, "close_tolerance": 0.01,
               "generate": {"status": 200, "same_image": True}},
    "rounds": [{"round": 1, "order": "batched then single", "inprocess_images_per_s": 80.0, "others_cores": 0.1,
                "phases": {"batched": {"1": _phase(20.0), "4": _phase(40.0), "16": _phase(60.0)},
                           "single": {"1": _phase(19.0), "4": _phase(20.0), "16": _phase(20.0)}}}],
    "others_cores": 0.1,
}


def test_headline_ratio_is_batched_over_single_at_16():
    h = ir.headline(RESULTS)
    assert h["concurrency"] == 16
    assert abs(h["ratio"] - 3.0) < 1e-12  # 60 / 20 images/s
    assert h["met"] is False
    assert abs(h["needed_images_per_s"] - 80.0) < 1e-9
    assert abs(h["server_vs_inprocess"] - 0.75) < 1e-12  # 60 / 80 images/s


def test_render_says_missed_plainly_below_the_target():
    page = ir.render(copy.deepcopy(RESULTS))
    assert ("**MISSED**: 60.00 images/s step-level batched / 20.00 images/s one at a time at 16 concurrent = "
            "**3.00x**, below the 4x target (it needed 80.00 images/s batched, 20.00 more than measured).") in page
    assert "**The requirement is missed.**" in page
    assert "**MET**" not in page
    assert "**0.75x**" in page  # server vs in-process
    assert ("at 16 concurrent, one at a time, the network took 1.625 ms per row (2.00 rows per call); batched it took "
            "0.109 ms per row (29.75 rows per call), 14.88x cheaper.") in page
    assert "same 2 cores" in page and "`abc1234`" in page and "2026-01-02 03:04 UTC" in page


def test_render_says_met_at_or_above_the_target():
    results = copy.deepcopy(RESULTS)
    results["variants"]["batched"]["by_concurrency"]["16"]["images_per_s"] = 80.0  # exactly 4x: met
    page = ir.render(results)
    assert ("**MET**: 80.00 images/s step-level batched / 20.00 images/s one at a time at 16 concurrent = **4.00x**, "
            "at or above the 4x target.") in page
    assert "**The requirement is met.**" in page
    assert "**MISSED**" not in page


def test_tables_show_the_input_figures():
    page = ir.render(copy.deepcopy(RESULTS))
    assert "| 1 | 20.00 | 19.00 | 1.05x | 50.0 / 60.0 | 52.0 / 61.0 | 2.00 |" in page
    assert "| 4 | 40.00 | 20.00 | 2.00x | 100.0 / 120.0 | 200.0 / 210.0 | 7.50 |" in page
    assert "| 16 | 60.00 | 20.00 | 3.00x | 260.0 / 300.0 | 800.0 / 820.0 | 29.75 |" in page
    assert "| mean rows per network call | 29.75 (81 calls) | 2.00 (2,400 calls) | |" in page
    assert "| p99 latency | 300.0 ms | 820.0 ms | 0.37x |" in page
    assert "**80.00 images/s**" in page  # in-process
    assert "| 1 | batched then single | 20.00 | 19.00 | 40.00 | 20.00 | 60.00 | 20.00 | 80.00 | 0.10 |" in page


def test_quiet_rounds_keep_only_rounds_without_other_load():
    results = copy.deepcopy(RESULTS)
    noisy = copy.deepcopy(results["rounds"][0])
    noisy.update(round=2, order="single then batched")
    noisy["phases"]["batched"]["16"] = _phase(30.0, others=0.9)
    results["rounds"].append(noisy)
    q = ir.quiet_rounds(results)
    assert (q["rounds"], q["of"], q["batched_images_per_s"], q["single_images_per_s"]) == (1, 2, 60.0, 20.0)
    assert "In the 1 of 2 rounds whose two 16-concurrent phases saw at most 0.5 cores of other load: 60.00 / 20.00 " \
           "images/s = 3.00x" in ir.render(results)
    for r in results["rounds"]:
        r["phases"]["single"]["16"]["others_cores"] = 1.0
    assert ir.quiet_rounds(results) is None
    assert "No round's 16-concurrent phases ran with at most 0.5 cores" in ir.render(results)


def test_missing_figures_render_as_na_not_a_crash():
    results = copy.deepcopy(RESULTS)
    results["variants"]["single"]["by_concurrency"]["16"]["images_per_s"] = 0.0
    results.pop("inprocess")
    results.pop("checks")
    page = ir.render(results)
    assert "The ratio could not be computed" in page
    assert ir.headline(results)["server_vs_inprocess"] is None
