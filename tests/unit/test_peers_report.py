"""The peers' section of docs/benchmarks.md, rendered from a hand-made figures dict.

Runs no server: checks the choice of points (each peer's fastest format), the table, the
verdict wording (ahead / ahead on throughput only / not ahead, and by how much) and that
the page links the plots ``loadtests/plots.py`` writes.
"""

from __future__ import annotations

from loadtests import plots, report


def _p(server: str, model: str, fmt: str, c: int, rps: float, p99: float, cores: float = 1.0, **extra) -> dict:
    return {"server": server, "model": model, "format": fmt, "concurrency": c, "rps": rps, "p50_ms": p99 / 2,
            "p99_ms": p99, "errors": 0, "server_cpu_cores": cores, "loadgen_cpu_cores": 0.5,
            "other_cpu_cores": 0.0, "profiled": False, **extra}


def _data() -> dict:
    points = []
    for c in (1, 8, 32, 64):
        points += [
            _p("deepserve", "resnet_bench", "v2-binary", c, 900.0, 40.0),
            _p("litserve", "resnet_bench", "json-list", c, 100.0, 300.0),
            _p("litserve", "resnet_bench", "json-b64", c, 450.0, 90.0),  # LitServe's fastest: b64
            _p("kserve", "resnet_bench", "v2-json", c, 300.0, 120.0),
            _p("kserve", "resnet_bench", "v2-binary", c, 600.0, 50.0),
            _p("rayserve", "resnet_bench", "json-list", c, 200.0, 200.0),
            _p("fastapi-naive+ds-opts", "resnet_bench", "raw-bytes", c, 500.0, 60.0),
            _p("deepserve", "mlp_tiny", "v2-binary", c, 5000.0, 10.0, cores=1.5),
        ]
    points += [
        # mlp_tiny at 8: KServe's binary body beats deepserve on throughput (not ahead).
        _p("kserve", "mlp_tiny", "v2-binary", 8, 6000.0, 5.0, cores=1.2),
        # at 32: deepserve faster, but FastAPI's p99 is lower (ahead on throughput only).
        _p("fastapi-naive+ds-opts", "mlp_tiny", "raw-bytes", 32, 4000.0, 8.0),
        _p("fastapi-naive+ds-opts", "mlp_tiny", "json-list", 32, 1000.0, 40.0),
        # at 64: ahead; a failed and a profiled point are ignored.
        _p("rayserve", "mlp_tiny", "json-list", 64, 800.0, 100.0),
        {"server": "rayserve", "model": "mlp_tiny", "format": "json-list", "concurrency": 8,
         "profiled": False, "failed": "HTTP 500: boom"},
        _p("deepserve", "mlp_tiny", "v2-binary", 64, 1.0, 1000.0, profiled=True),
        _p("fastapi-naive", "mlp_tiny", "raw-bytes", 64, 99999.0, 0.1),  # not the peers' FastAPI
    ]
    return {"points": points, "meta": {"cores": 2, "litserve": "0.2.19", "peers_root": "/work/peer-venvs",
                                       "peers": {"kserve": {"kserve": "0.21.0", "onnxruntime": "1.32.0"},
                                                 "rayserve": {"ray": "2.60.0"}}}}


def test_series_takes_each_peers_fastest_format_and_skips_failed_and_profiled():
    s = plots.series(_data())
    assert s["resnet_bench"]["litserve"][32]["format"] == "json-b64"
    assert s["resnet_bench"]["kserve"][8]["format"] == "v2-binary"
    assert s["mlp_tiny"]["fastapi-naive+ds-opts"][32]["format"] == "raw-bytes"
    assert 8 not in s["mlp_tiny"]["rayserve"]
    assert s["mlp_tiny"]["deepserve"][64]["rps"] == 5000.0
    assert "fastapi-naive" not in s["mlp_tiny"]


def test_verdicts():
    s = plots.series(_data())
    ahead = report.peer_verdict(s["resnet_bench"], 32)
    assert ahead.startswith("**ahead**") and "1.50x the fastest peer (KServe (no batching) (v2-binary)" in ahead
    behind = report.peer_verdict(s["mlp_tiny"], 8)
    assert behind.startswith("**not ahead**") and "deepserve 0.83x, 17 % fewer" in behind
    assert "KServe (no batching) (v2-binary) 6,000.0 req/s vs deepserve 5,000.0" in behind
    assert "server CPU per request 0.300 ms vs 0.200 ms" in behind
    p99 = report.peer_verdict(s["mlp_tiny"], 32)
    assert p99.startswith("**ahead on throughput, not on p99**") and "1.25x" in p99 and "20 % lower" in p99
    assert report.peer_verdict(s["mlp_tiny"], 1).startswith("not measured")


def test_section_table_verdicts_and_plots():
    lines = report.section_peers(_data())
    text = "\n".join(lines)
    assert "| `resnet_bench` | 32 | 900.0 | 40.00 | 500.0 | 60.00 | 450.0 | 90.00 | 600.0 | 50.00 | 200.0 | 200.00 |" in lines
    assert "| `mlp_tiny` | 1 | 5,000.0 | 10.00 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in lines
    verdicts = [line for line in lines if line.startswith("* `")]
    assert len(verdicts) == 6  # 2 models x (8, 32, 64 clients)
    assert "Not ahead (throughput, or p99): `mlp_tiny` at 8, `mlp_tiny` at 32." in lines
    assert "Ray Serve mlp_tiny json-list c=8 failed: HTTP 500: boom" in text
    assert "KServe 0.21.0 (onnxruntime 1.32.0); Ray Serve 2.60.0" in text
    assert "no batcher" in text and "@serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0005)" in text
    for model in ("resnet_bench", "mlp_tiny"):
        assert f"](img/{plots.image_name(model)})" in text
