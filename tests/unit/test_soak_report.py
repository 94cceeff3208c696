"""The soak page (loadtests/soak_report.py) from a made-up results file: headline arithmetic and
the met / missed wording, and loadtests.report's section reading the newest soak-*.json."""

from __future__ import annotations

import json

import pytest

from loadtests import soak_report
from loadtests.report import section_soak


def minute(n: int, rss: float, unexpected: int = 0, p99: float = 10.0) -> dict:
    return {
        "minute": n, "seconds": 60.0, "sent": 600, "shed": 0, "answered": 600, "by_status": {"200": 570, "400": 30},
        "expected_4xx": 30, "unexpected": unexpected, "unexpected_by_kind": {}, "p50_ms": 2.0, "p99_ms": p99,
        "fast_p50_ms": 2.0, "fast_p99_ms": p99, "by_kind": {"generate": {"n": 18, "p50_ms": 50.0, "p99_ms": 80.0}},
        "outstanding_at_end": 1, "rss_mib": rss, "rss_main_mib": rss, "metrics_failures": {"digits/INVALID": 6.0},
        "metrics_success": 570, "loadavg_1m": 2.5, "server_cores": 0.8, "client_cores": 0.5, "others_cores": 0.4,
    }


def results(rss: list[float], unexpected: int = 0, p99_first: float = 10.0, p99_last: float = 12.0,
            sent_per_minute: int = 600) -> dict:
    minutes = [minute(i + 1, r, unexpected if i == 3 else 0) for i, r in enumerate(rss)]
    for m in minutes:
        m["sent"] = sent_per_minute
    pooled = {"first5": {"all": {"p50_ms": 2.0, "p99_ms": p99_first}, "fast": {"p50_ms": 2.0, "p99_ms": p99_first / 2}},
              "last5": {"all": {"p50_ms": 2.0, "p99_ms": p99_last}, "fast": {"p50_ms": 2.0, "p99_ms": p99_last / 2}}}
    return {
        "command": ".venv/bin/python -m loadtests.soak", "date_utc": "2026-12-01 23:00 UTC", "commit": "abc1234",
        "dirty": [], "json_path": "loadtests/results/soak-2026-12-01.json",
        "machine": {"cores": 2, "cpu": "test cpu", "platform": "Linux", "python": "3.11", "versions": {}},
        "settings": {"duration_s": 60.0 * len(rss), "load": 0.7, "mix": {"http_digits": 0.5, "generate": 0.1, "bad": 0.4},
                     "max_outstanding": 64, "http_connections": 16, "probe_levels": [4, 8], "probe_s": 8.0,
                     "warmup_s": 5.0, "generate_steps": 10, "timeout_s": 30.0, "generate_timeout_s": 60.0,
                     "server_cmd": "python -m server.cli serve", "models": ["digits"]},
        "probe": {"levels": [{"concurrency": 4, "seconds": 8.0, "rps": 100.0 / 7, "good_rps": 13.0, "sent": 114,
                              "answered": 114, "unexpected": 0, "p50_ms": 2.0, "p99_ms": 9.0, "fast_p99_ms": 8.0,
                              "server_cores": 1.0, "client_cores": 0.5, "others_cores": 0.1}],
                  "saturation_rps": 100.0 / 7, "at_concurrency": 4, "errors": []},
        "planned_rps": 10.0, "baseline": {"rss_mib": rss[0], "rss_main_mib": rss[0], "failures": {}},
        "minutes": minutes, "pooled": pooled, "sending_s": 60.0 * len(rss), "errors": ["http_digits: HTTP 500: boom"] if unexpected else [],
    }


def test_a_clean_run_meets_every_target():
    r = results([200.0, 204.0, 205.0, 205.0, 206.0, 206.0, 206.0, 207.0, 206.0, 208.0])
    h = soak_report.headline(r)
    assert h["rss_start_mib"] == 200.0 and h["rss_end_mib"] == 208.0
    assert h["rss_growth_mib"] == pytest.approx(8.0) and h["rss_growth_pct"] == pytest.approx(4.0)
    assert h["rss_mid_mib"] == 206.0 and h["late_growth_mib"] == pytest.approx(2.0)  # minute 5 -> minute 10
    assert h["drift"] == pytest.approx(1.2) and h["fast_drift"] == pytest.approx(1.2)
    assert h["achieved_rps"] == pytest.approx(10.0) and h["rate_share"] == pytest.approx(1.0)
    assert h["unexpected"] == 0 and h["expected_4xx"] == 300
    assert all(h[k] for k in ("errors_ok", "memory_ok", "drift_ok", "rate_ok"))
    page = soak_report.render(r)
    assert "**Every target met.**" in page and "**missed**" not in page
    assert "| 10 | 600 |" in page and "digits/INVALID 6" in page
    assert "+8.0 MiB, +4.0 %" in page


def test_errors_growth_drift_and_a_short_rate_are_named_as_missed():
    rss = [200.0 + 10 * i for i in range(10)]  # 10 MiB a minute, never levelling off
    r = results(rss, unexpected=3, p99_first=10.0, p99_last=40.0, sent_per_minute=300)
    h = soak_report.headline(r)
    assert h["unexpected"] == 3 and not h["errors_ok"]
    assert h["late_growth_mib"] == pytest.approx(50.0) and not h["memory_ok"]
    assert h["late_slope_mib_per_h"] == pytest.approx(600.0)
    assert h["drift"] == pytest.approx(4.0) and not h["drift_ok"]
    assert h["rate_share"] == pytest.approx(0.5) and not h["rate_ok"]
    page = soak_report.render(r)
    assert "**Missed:** unexpected errors, bounded memory, p99 drift, rate." in page
    assert "**3**, target 0: **missed**" in page
    assert "`http_digits: HTTP 500: boom`" in page


def test_small_growth_is_judged_against_the_mib_floor():
    # 12 MiB over the second half of a 100 MiB server: over 5 %, under the 16 MiB floor
    h = soak_report.headline(results([100.0] * 5 + [104.0, 106.0, 108.0, 110.0, 112.0]))
    assert h["late_limit_mib"] == 16.0 and h["memory_ok"]


def test_the_benchmarks_section_reads_the_newest_file(tmp_path):
    assert section_soak(tmp_path)[0].startswith("Not measured yet")
    old = results([200.0] * 10)
    new = results([200.0] * 9 + [300.0], unexpected=1)
    (tmp_path / "soak-2026-11-30.json").write_text(json.dumps(old))
    (tmp_path / "soak-2026-12-01.json").write_text(json.dumps(new))
    text = "\n".join(section_soak(tmp_path))
    assert "`soak-2026-12-01.json`" in text and "10 minutes" in text
    assert "**1**, target 0: **missed**" in text and "bounded if at most" in text
