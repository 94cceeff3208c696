"""``deepserve bench`` against a real server on loopback (the tiny models of ``server_fixtures``):
HTTP binary and JSON tensors, gRPC, closed and open loop, a user's ``.npz``, and ``--compare``.
Short levels; no timing assertions."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from server.cli import app

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--duration", "0.5", "--warmup", "0.2"]


def _bench(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _check_run(out: Path, name: str, levels: int) -> dict:
    for suffix in (".json", ".csv", "_throughput_latency.png", "_latency.png"):
        path = out / f"{name}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, path
    run = json.loads((out / f"{name}.json").read_text())
    assert len(run["levels"]) == levels
    for row in run["levels"]:
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] is not None and row["p99_ms"] >= row["p50_ms"]
        split = row["server"]
        assert split is not None and split["requests"] > 0, row
        for key in ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us", "avg_batch"):
            assert split[key] is not None and split[key] >= 0, (key, split)
    with open(out / f"{name}.csv") as f:
        assert len(list(csv.DictReader(f))) == levels
    return run


def test_http_binary_and_grpc_closed_loop_then_compare(server, tmp_path):
    output = _bench(["-m", "simple", "-u", server.http_url, "-c", "1,4", *SHORT, "-o", str(tmp_path), "--no-progress"])
    assert "p95 ms" in output and "queue us" in output
    http = _check_run(tmp_path, "simple_v2_http_binary", 2)
    assert http["meta"]["inputs"] == {"INPUT0": "FP32[1, 16]", "INPUT1": "FP32[1, 16]"}
    _bench(["-m", "simple", "-i", "grpc", "-u", server.grpc_url, "-c", "2", *SHORT, "-o", str(tmp_path), "--progress"])
    _check_run(tmp_path, "simple_v2_grpc", 1)
    # The installed entry point, as a user runs it: two runs on one plot.
    subprocess.run([sys.executable, "-m", "server.cli", "bench", "--compare", str(tmp_path / "simple_v2_http_binary.json"),
                    str(tmp_path / "simple_v2_grpc.json"), "-o", str(tmp_path / "cmp")], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    assert (tmp_path / "cmp" / "compare_throughput_latency.png").stat().st_size > 0
    assert (tmp_path / "cmp" / "compare_latency.png").stat().st_size > 0


def test_every_datatype_json_tensors_and_grpc_open_loop(server, tmp_path):
    _bench(["-m", "types", "-u", server.http_url, "--tensors", "json", "--shape", "S:3", "-c", "1", *SHORT,
            "-o", str(tmp_path), "--no-progress"])
    _check_run(tmp_path, "types_v2_http_json", 1)
    _bench(["-m", "types", "-i", "grpc", "-u", server.grpc_url, "--request-rate", "40,80", "--requests", "15",
            "--warmup", "0.1", "-o", str(tmp_path), "--no-progress", "--name", "types open"])
    run = _check_run(tmp_path, "types_open", 2)
    assert [r["mode"] for r in run["levels"]] == ["rate", "rate"]


def test_input_data_npz_batches(server, tmp_path):
    data = tmp_path / "batch.npz"
    np.savez(data, INPUT0=np.ones((4, 16), np.float32), INPUT1=np.zeros((4, 16), np.float32))
    _bench(["-m", "simple", "-u", server.http_url, "--input-data", str(data), "-c", "2", "-n", "30", "--warmup", "0.1",
            "-o", str(tmp_path), "--no-progress", "--no-plots"])
    run = json.loads((tmp_path / "simple_v2_http_binary.json").read_text())
    (row,) = run["levels"]
    assert row["requests"] >= 30 and row["errors"] == 0
    assert row["server"]["avg_batch"] >= 4  # four rows per request
    assert not (tmp_path / "simple_v2_http_binary_latency.png").exists()


def test_errors_are_counted_by_status(server, tmp_path):
    bad = tmp_path / "bad.json"  # the right names, a shape the model refuses: every request is a 400
    bad.write_text(json.dumps({"data": [{"INPUT0": {"content": [0.0] * 8, "shape": [1, 8]},
                                         "INPUT1": {"content": [0.0] * 8, "shape": [1, 8]}}]}))
    _bench(["-m", "simple", "-u", server.http_url, "--input-data", str(bad), "-n", "5", "--warmup", "0",
            "-o", str(tmp_path), "--no-progress", "--no-plots", "--name", "refused"])
    (row,) = json.loads((tmp_path / "refused.json").read_text())["levels"]
    assert row["requests"] == 0 and row["errors"] >= 5 and set(row["errors_by_status"]) == {"HTTP 400"}
