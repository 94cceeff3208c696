"""The ensemble-overhead page is rendered from its results dict alone, ratios computed right.

Runs no benchmark: a tiny hand-made results dict goes through ``render``.
"""

from __future__ import annotations

import copy

from loadtests import ensemble_overhead as eo


def _phase(p50: float, p99: float, rps: float, cpu: float, mean: float | None = None) -> dict:
    return {"p50_ms": p50, "p99_ms": p99, "mean_ms": mean if mean is not None else p50, "rps": rps,
            "server_cpu_ms": cpu, "client_cpu_ms": 0.1}


def _stat(request_ms: float, queue_ms: float = 0.0, compute_ms: float = 0.0) -> dict:
    return {"requests": 10, "request_ms": request_ms, "queue_ms": queue_ms, "compute_ms": compute_ms,
            "executions": 10, "mean_batch": 1.0, "failed": 0}


RESULTS = {
    "command": ".venv/bin/python -m loadtests.ensemble_overhead --rounds 1",
    "date_utc": "2026-01-02 03:04 UTC",
    "commit": "abc1234",
    "machine": {"cores": 2, "cpu": "Test CPU", "platform": "Linux-test", "python": "3.11.7"},
    "settings": {"rounds": 1, "requests": 100, "latency_requests": 50, "concurrency": 32, "images": 450},
    "variants": {
        "direct": {"c1": _phase(1.0, 2.0, 2000.0, 0.2), "cN": _phase(10.0, 20.0, 2000.0, 0.2), "errors": 0},
        "ensemble": {"c1": _phase(2.5, 4.0, 500.0, 0.9, mean=3.0), "cN": _phase(40.0, 80.0, 500.0, 0.6),
                     "errors": 0,
                     "stats": {"c1": {"pooled": {
                         "digits_pipeline": _stat(2.0),
                         "digits_preprocess": _stat(0.6, 0.02, 0.2),
                         "image_size": _stat(0.5),
                         "digits": _stat(0.8, 0.5, 0.1),
                         "digits_topk": _stat(0.3),
                     }}}},
        "preprocess": {"c1": _phase(0.8, 1.5, 1800.0, 0.25), "cN": _phase(12.0, 25.0, 1800.0, 0.25), "errors": 0},
    },
}


def test_ratios_are_computed_from_the_raw_figures():
    r = eo.ratios(RESULTS)
    assert r["latency_ratio_c1"] == 2.5
    assert r["added_p50_ms_c1"] == 1.5
    assert r["throughput_ratio_cN"] == 0.25
    assert abs(r["cpu_ratio_cN"] - 3.0) < 1e-9


def test_render_states_the_ratios_machine_commit_and_date():
    page = eo.render(copy.deepcopy(RESULTS))
    assert "Ensemble p50 / direct p50 at 1 client: **2.50x** (**+1.50 ms** added; p99 +2.00 ms)" in page
    assert "Ensemble throughput / direct throughput at 32 clients: **0.25x** (500 vs 2000 req/s; p50 +30.00 ms)" in page
    assert "ensemble / direct: **3.00x** (+0.400 ms added)" in page
    assert "`abc1234`" in page and "2026-01-02 03:04 UTC" in page and "2 cores (Test CPU)" in page
    assert "| direct (`digits`) | 1.00 | 2.00 | 2000 | 10.00 | 20.00 | 0.200 |" in page
    assert "4.00x in cost per request" in page  # 1 / throughput ratio
    assert "2.50x in p50 latency at 1 client (inside the reported range)" in page
    assert "#5082" in page and "not a measurement made here" in page


def test_render_attributes_the_ensemble_time_from_server_statistics():
    page = eo.render(copy.deepcopy(RESULTS))
    # client mean 3.0 - server 2.0 = 1.0 ms of client + HTTP; residual 2.0 - (0.6 + 0.8 + 0.3) = 0.3 ms
    assert "| ensemble | 3.00 | 1.00 | 2.00 | 0.60 (0.02 / 0.20) | 0.50 (0.00 / 0.00) | 0.80 (0.50 / 0.10) | 0.30 (0.00 / 0.00) | 0.30 |" in page
