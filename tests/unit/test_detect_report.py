"""The /v1/detect benchmark page is rendered from its results dict alone: the ratio against
the 0.7 target and the met / missed wording come out right.

Runs no benchmark: a tiny hand-made results dict goes through ``render``.
"""

from __future__ import annotations

import copy

from loadtests import detect_report as dr


def _http(rps: float, p50: float, p99: float, mean: float) -> dict:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "mean_ms": mean, "samples": 300, "errors": 0,
            "server_cores": 1.8, "client_cores": 0.1, "server_cpu_ms": 30.0, "client_cpu_ms": 1.0}


def _stat(request_ms: float, queue_ms: float = 0.0, compute_ms: float = 0.0, batch: float = 1.0) -> dict:
    return {"requests": 300, "request_ms": request_ms, "queue_ms": queue_ms, "compute_ms": compute_ms,
            "executions": 300, "mean_batch": batch, "failed": 0}


def _point(rows_per_s: float) -> dict:
    return {"rows_per_s": rows_per_s, "p50_ms": 10.0, "p99_ms": 12.0, "own_cores": 2.0,
            "own_cpu_ms_per_row": 20.0, "server_cores": 0.0}


RESULTS = {
    "command": ".venv/bin/python -m loadtests.detect_bench --rounds 1",
    "date_utc": "2026-01-02 03:04 UTC",
    "commit": "abc1234",
    "machine": {"cores": 2, "cpu": "Test CPU", "platform": "Linux-test", "python": "3.11.7"},
    "settings": {"rounds": 1, "concurrency": 32, "latency_s": 6.0, "load_s": 12.0, "settle_s": 2.0,
                 "inprocess_s": 2.0, "batches": [1, 4, 8, 16], "images": 64, "image_size": "640x480",
                 "seed": 31337, "target": 0.7, "weights": {"path": "models/weights/shapes_detector.safetensors",
                                                          "sha256": "0123456789ab", "trained": True, "input_size": 320}},
    "inprocess": {"by_batch": {"1": _point(90.0), "4": _point(100.0), "8": _point(95.0), "16": _point(80.0)},
                  "best_batch": 4, "best_rows_per_s": 100.0},
    "detect": {
        "errors": 0,
        "c1": _http(50.0, 19.0, 30.0, mean=20.0),
        "cN": _http(60.0, 500.0, 700.0, mean=520.0),
        "stats": {
            "c1": {"pooled": {
                "shapes_detect": _stat(18.0),
                "shapes_detect_pre": _stat(5.0, 0.1, 4.0),
                "shapes": _stat(10.0, 0.5, 9.0),
                "shapes_detect_post": _stat(2.0, 0.1, 1.5),
            }},
            "cN": {"pooled": {
                "shapes_detect": _stat(510.0),
                "shapes_detect_pre": _stat(50.0, 10.0, 30.0, 2.0),
                "shapes": _stat(400.0, 280.0, 100.0, 8.0),
                "shapes_detect_post": _stat(40.0, 5.0, 30.0, 4.0),
            }},
        },
    },
}


def test_headline_ratio_is_detect_rps_over_best_inprocess_rows():
    h = dr.headline(RESULTS)
    assert abs(h["ratio"] - 0.6) < 1e-12  # 60 req/s / 100 rows/s
    assert h["met"] is False and h["best_batch"] == 4
    assert abs(h["needed_rps"] - 70.0) < 1e-9


def test_render_says_missed_plainly_below_the_target():
    page = dr.render(copy.deepcopy(RESULTS))
    assert ("**Missed**: 60.0 req/s at 32 clients / 100.0 rows/s in-process (batch 4) = **0.60**, below the 0.7 "
            "target (it needed 70.0 req/s, 10.0 more than measured).") in page
    assert "**The requirement is missed.**" in page
    assert "**Met**" not in page
    assert "same 2 cores" in page and "`abc1234`" in page and "2026-01-02 03:04 UTC" in page


def test_render_says_met_at_or_above_the_target():
    results = copy.deepcopy(RESULTS)
    results["detect"]["cN"]["rps"] = 70.0  # exactly 0.7: met
    page = dr.render(results)
    assert "**Met**: 70.0 req/s at 32 clients / 100.0 rows/s in-process (batch 4) = **0.70**, at or above the 0.7 target." in page
    assert "**The requirement is met.**" in page
    assert "**Missed**" not in page


def test_where_the_time_goes_splits_the_client_mean_exactly():
    b = dr.breakdown(RESULTS, "cN")
    assert b is not None
    # 520 = client+HTTP 10 + decode 30 + network 100 + NMS 30 + queues 295 + scheduling 55
    assert b["client_http_ms"] == 10.0 and b["queue_ms"] == 295.0
    assert abs(b["scheduling_ms"] - 55.0) < 1e-9  # (10 + 20 + 5) in the steps + 20 executor residual
    parts = ("client_http_ms", "decode_ms", "network_ms", "nms_ms", "queue_ms", "scheduling_ms")
    assert abs(sum(b[p] for p in parts) - b["mean_ms"]) < 1e-9
    page = dr.render(copy.deepcopy(RESULTS))
    assert "| 32 clients | 520.00 | 10.00 (2%) | 30.00 (6%) | 100.00 (19%) | 30.00 (6%) | 295.00 (57%) | 55.00 (11%) |" in page


def test_quiet_phase_ratio_uses_only_phases_without_other_load():
    results = copy.deepcopy(RESULTS)
    quiet, busy = 0.1, 1.0

    def a(rows: float, others: float) -> dict:
        return {"rows_per_s": rows, "others_cores": others}

    results["rounds"] = [
        {"round": 1, "inprocess": {"1": a(200.0, quiet), "4": a(100.0, busy)}, "best_batch": 1,
         "c1": _http(50.0, 19.0, 30.0, 20.0), "cN": {**_http(60.0, 500.0, 700.0, 520.0), "others_cores": busy}},
        {"round": 2, "inprocess": {"1": a(180.0, quiet), "4": a(250.0, quiet)}, "best_batch": 4,
         "c1": _http(50.0, 19.0, 30.0, 20.0), "cN": {**_http(150.0, 200.0, 300.0, 210.0), "others_cores": quiet}},
    ]
    q = dr.quiet_ratio(results)
    # batch 1: median(200, 180) = 190; batch 4: only the quiet 250 -> best 250; (b): the quiet 150
    assert q["best_batch"] == 4 and q["inprocess_rows_per_s"] == 250.0 and q["detect_rps"] == 150.0
    assert abs(q["ratio"] - 0.6) < 1e-12 and (q["a_phases"], q["a_total"], q["b_phases"], q["b_total"]) == (3, 4, 1, 2)
    page = dr.render(results)
    assert "= **0.60**, missed as well." in page  # the headline (60 / 100) is missed too
