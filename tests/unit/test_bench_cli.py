"""``deepserve bench`` without a server: inputs (synthesized, from files, encoded as the server's
own codecs decode them), the load loops against httpx mock transports, the statistics split, the
report files and the command line."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from server.bench import inputs as inp
from server.bench import load, report

TYPES_METADATA = {
    "name": "types",
    "inputs": [{"name": n, "datatype": d, "shape": [-1]} for n, d in
               [("S", "BYTES"), ("H", "FP16"), ("B", "BOOL"), ("I64", "INT64"), ("I8", "INT8"), ("U16", "UINT16"),
                ("F64", "FP64")]],
    "outputs": [{"name": f"{n}_OUT", "datatype": d, "shape": [-1]} for n, d in [("S", "BYTES"), ("H", "FP16")]],
}
SIMPLE_METADATA = {"name": "simple", "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]},
                                                {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]}]}


# -- inputs ------------------------------------------------------------------------------------


def test_synthesize_replaces_dynamic_dims_and_honours_shape_overrides():
    tensors = inp.synthesize(SIMPLE_METADATA, inp.parse_shapes(["INPUT1:4,16"]))
    assert [(t.name, t.datatype, t.shape) for t in tensors] == [("INPUT0", "FP32", [1, 16]), ("INPUT1", "FP32", [4, 16])]
    assert tensors[0].data.dtype == np.float32
    with pytest.raises(ValueError, match="does not take"):
        inp.synthesize(SIMPLE_METADATA, {"NOPE": [1]})
    with pytest.raises(ValueError, match="does not fit"):
        inp.synthesize(SIMPLE_METADATA, {"INPUT0": [1, 8]})
    with pytest.raises(ValueError):
        inp.parse_shapes(["INPUT0"])


def test_synthesize_every_datatype():
    tensors = {t.name: t for t in inp.synthesize(TYPES_METADATA, {"S": [3]})}
    assert tensors["S"].shape == [3] and all(isinstance(v, bytes) for v in tensors["S"].data)
    assert tensors["H"].data.dtype == np.float16 and tensors["B"].data.dtype == bool
    assert tensors["I8"].data.dtype == np.int8 and tensors["U16"].data.dtype == np.uint16
    assert tensors["F64"].data.dtype == np.float64 and tensors["I64"].data.dtype == np.int64


@pytest.mark.parametrize("binary", [True, False])
def test_http_bodies_decode_with_the_servers_codec(binary):
    from server.frontends.http.codec import decode_request

    tensors = inp.synthesize(TYPES_METADATA, {"S": [2], "H": [3]})
    body, headers = inp.http_body(tensors, binary, TYPES_METADATA["outputs"])
    length = headers.get("inference-header-content-length")
    # FP16 has no JSON form: it travels as binary data even in the JSON encoding.
    assert length is not None
    decoded = decode_request(body, int(length), "types", "")
    for t in tensors:
        got = decoded.inputs[t.name]
        if t.datatype == "BYTES":
            assert [bytes(v) for v in got.reshape(-1)] == list(t.data.reshape(-1))
        else:
            np.testing.assert_array_equal(got, t.data)
    header = json.loads(body[: int(length)])
    if binary:
        assert header["parameters"] == {"binary_data_output": True}
    else:
        assert {o["name"] for o in header["outputs"]} == {"S_OUT", "H_OUT"}
        assert "data" in header["inputs"][0] and "parameters" in header["inputs"][1]


def test_json_body_sends_non_utf8_bytes_as_binary():
    from server.frontends.http.codec import decode_request

    tensor = inp.Tensor("S", "BYTES", np.array([b"\xff\xfe", b"ok"], dtype=object))
    body, headers = inp.http_body([tensor], binary=False)
    decoded = decode_request(body, int(headers["inference-header-content-length"]), "m", "")
    assert [bytes(v) for v in decoded.inputs["S"]] == [b"\xff\xfe", b"ok"]


def test_json_body_without_half_floats_is_plain_json():
    body, headers = inp.http_body(inp.synthesize(SIMPLE_METADATA), binary=False)
    assert headers == {"content-type": "application/json"}
    assert json.loads(body)["inputs"][0]["shape"] == [1, 16]


def test_grpc_request_decodes_with_the_servers_codec():
    from server.frontends.grpc.codec import decode_request

    tensors = inp.synthesize(TYPES_METADATA)
    decoded = decode_request(inp.grpc_request("types", "1", tensors))
    assert decoded.model_name == "types" and decoded.model_version == "1"
    np.testing.assert_array_equal(decoded.inputs["I64"], tensors[3].data)
    assert [bytes(v) for v in decoded.inputs["S"].reshape(-1)] == list(tensors[0].data)


def test_input_data_perf_analyzer_json_and_npz(tmp_path):
    doc = {"data": [
        {"INPUT0": list(range(16)), "INPUT1": {"content": list(range(32)), "shape": [2, 16]}},
        {"INPUT0": {"b64": base64.b64encode(np.ones(16, np.float32).tobytes()).decode()}, "INPUT1": [[0.5] * 16] * 3},
    ]}
    (tmp_path / "data.json").write_text(json.dumps(doc))
    requests = inp.load_input_data(tmp_path / "data.json", SIMPLE_METADATA)
    assert [[t.shape for t in r] for r in requests] == [[[1, 16], [2, 16]], [[1, 16], [3, 16]]]
    assert requests[1][0].data.dtype == np.float32 and requests[1][0].data.sum() == 16
    np.savez(tmp_path / "data.npz", INPUT0=np.zeros((2, 16), np.float32), INPUT1=np.ones((2, 16), np.float64))
    (request,) = inp.load_input_data(tmp_path / "data.npz", SIMPLE_METADATA)
    assert request[1].data.dtype == np.float32 and request[1].shape == [2, 16]
    (tmp_path / "bad.json").write_text(json.dumps({"data": [{"INPUT0": [1.0] * 16}]}))
    with pytest.raises(ValueError, match="lacks"):
        inp.load_input_data(tmp_path / "bad.json", SIMPLE_METADATA)
    strings = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]}]}
    (tmp_path / "text.json").write_text(json.dumps({"data": [{"TEXT": ["hello", "world"]}]}))
    (request,) = inp.load_input_data(tmp_path / "text.json", strings)
    assert request[0].shape == [2, 1] and list(request[0].data.reshape(-1)) == [b"hello", b"world"]


# -- levels and statistics ---------------------------------------------------------------------


def test_parse_levels():
    assert load.parse_levels("1,2,4") == [1, 2, 4]
    assert load.parse_levels("1:7:2") == [1, 3, 5, 7]
    assert load.parse_levels("2:4") == [2, 3, 4]
    assert load.parse_levels("12.5,50", integer=False) == [12.5, 50.0]
    for bad in ("0", "1.5", "4:1", "a,b", "1:2:3:4", ""):
        with pytest.raises(ValueError):
            load.parse_levels(bad)


def _stats(success, queue_ns, infer_ns, inferences, executions, as_strings=False):
    conv = str if as_strings else int
    pair = lambda c, ns: {"count": conv(c), "ns": conv(ns)}
    return [{"name": "m", "version": "1", "inference_count": conv(inferences), "execution_count": conv(executions),
             "inference_stats": {"success": pair(success, success * 1_000_000), "fail": pair(0, 0),
                                 "queue": pair(success, queue_ns), "compute_input": pair(success, success * 10_000),
                                 "compute_infer": pair(success, infer_ns), "compute_output": pair(success, success * 20_000)}}]


@pytest.mark.parametrize("as_strings", [False, True])  # gRPC's JSON form gives uint64 as strings
def test_server_split_per_request(as_strings):
    before = _stats(10, 1_000_000, 2_000_000, 10, 10, as_strings)
    after = _stats(110, 51_000_000, 42_000_000, 410, 110, as_strings)
    split = load.server_split(before, after)
    assert split["requests"] == 100
    assert split["queue_us"] == 500.0 and split["compute_infer_us"] == 400.0
    assert split["compute_input_us"] == 10.0 and split["compute_output_us"] == 20.0
    assert split["request_us"] == 1000.0 and split["overhead_us"] == 70.0
    assert split["avg_batch"] == 4.0
    assert load.server_split(None, after) is None
    assert load.server_split(before, before)["requests"] == 0


# -- the load loops against mock transports ----------------------------------------------------


class FakeServer:
    """Every 5th infer answers 503; stats count the successes."""

    def __init__(self) -> None:
        self.calls = 0
        self.ok = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stats"):
            return httpx.Response(200, json={"model_stats": _stats(self.ok, self.ok * 1000, self.ok * 5000, self.ok, max(1, self.ok // 2))})
        self.calls += 1
        if self.calls % 5 == 0:
            return httpx.Response(503, json={"error": "busy"})
        self.ok += 1
        return httpx.Response(200, content=b"{}")


def _http_target(fake: FakeServer) -> load.HttpV2:
    body = inp.http_body(inp.synthesize(SIMPLE_METADATA), True)
    return load.HttpV2("127.0.0.1:1", "simple", [body], transport=httpx.MockTransport(fake))


async def test_closed_loop_counts_answers_and_errors_by_status():
    fake = FakeServer()
    seen = []
    rows = await load.sweep(_http_target(fake), [load.Level("concurrency", 1), load.Level("concurrency", 3)],
                            requests=50, warmup_s=0.0, progress=lambda level: lambda *a: seen.append((level.value, *a)))
    assert [r["level"] for r in rows] == [1, 3]
    for row in rows:
        assert row["requests"] + row["errors"] >= 50
        assert set(row["errors_by_status"]) == {"HTTP 503"} and row["errors"] > 0
        assert row["throughput_rps"] > 0 and row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["server"]["requests"] > 0 and row["server"]["avg_batch"] is not None
    assert seen and seen[-1][1] == 1.0


async def test_open_loop_poisson_arrivals():
    fake = FakeServer()
    rows = await load.sweep(_http_target(fake), [load.Level("rate", 200.0)], duration_s=0.4, warmup_s=0.05)
    (row,) = rows
    assert row["mode"] == "rate" and row["level"] == 200.0
    assert 0 < row["requests"] + row["errors"] < 400  # about 80 expected; far fewer than a closed loop would send
    assert row["window_s"] >= 0.4


async def test_open_loop_in_flight_cap_counts_as_errors():
    async def slow(request: httpx.Request) -> httpx.Response:
        import asyncio

        await asyncio.sleep(0.2)
        return httpx.Response(200)

    target = load.HttpV2("127.0.0.1:1", "simple", [(b"{}", {})], transport=httpx.MockTransport(slow))
    (row,) = await load.sweep(target, [load.Level("rate", 500.0)], duration_s=0.3, warmup_s=0.0, max_inflight=2)
    assert row["errors_by_status"].get("client: max in-flight", 0) > 0


async def test_stream_target_measures_ttft_and_tokens():
    def sse(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stats"):
            return httpx.Response(200, text="not json")  # a broken statistics answer is no split, not a failure
        body = json.loads(request.content)
        assert body["stream"] is True and body["messages"][0]["content"] == "hi"
        chunks = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]}]
        chunks += [{"choices": [{"delta": {"content": w}}]} for w in ("a", "b", "c")]
        chunks += [{"choices": [], "usage": {"completion_tokens": 3}}]
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    target = load.Stream("127.0.0.1:1", "textgen", True, "hi", 3, transport=httpx.MockTransport(sse))
    (row,) = await load.sweep(target, [load.Level("concurrency", 2)], requests=20, warmup_s=0.0)
    assert row["errors"] == 0 and row["requests"] >= 20
    assert row["ttft_p50_ms"] is not None and row["tokens"] == 3 * row["requests"]
    assert row["tokens_per_s"] > 0
    assert row["server"] is None


async def test_upload_target_posts_a_multipart_file(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG fake")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stats"):
            return httpx.Response(404)
        seen.append((request.url.path, request.headers["content-type"].split(";")[0], b"PNG fake" in request.content))
        return httpx.Response(200, json={"data": []})

    target = load.Upload("127.0.0.1:1", "/v1/classify", image, {"model": "digits_classify"}, stats_model="digits_classify",
                         transport=httpx.MockTransport(handler))
    (row,) = await load.sweep(target, [load.Level("concurrency", 1)], requests=5, warmup_s=0.0)
    assert row["requests"] >= 5 and row["server"] is None  # stats 404: no split, no failure
    assert seen[0] == ("/v1/classify", "multipart/form-data", True)


# -- report ------------------------------------------------------------------------------------


def _rows():
    server = {"queue_us": 50.0, "compute_input_us": 1.0, "compute_infer_us": 100.0, "compute_output_us": 2.0,
              "overhead_us": 5.0, "request_us": 158.0, "avg_batch": 1.5, "requests": 10}
    return [{"mode": "concurrency", "level": c, "window_s": 1.0, "requests": 100 * c, "errors": c - 1,
             "errors_by_status": {"HTTP 503": c - 1} if c > 1 else {}, "throughput_rps": 100.0 * c,
             "p50_ms": 1.0 * c, "p90_ms": 1.5 * c, "p95_ms": 2.0 * c, "p99_ms": 3.0 * c, "mean_ms": 1.1 * c,
             "max_ms": 4.0 * c, "server": server} for c in (1, 2, 4)]


def test_report_table_csv_json_and_plots(tmp_path):
    rows = _rows()
    text = report.table(rows)
    assert "p95 ms" in text and "queue us" in text and "HTTP 503: 3" in text
    paths = report.write_all({"name": "run"}, rows, tmp_path, "run")
    assert [p.name for p in paths] == ["run.json", "run.csv", "run_throughput_latency.png", "run_latency.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert report.read_run(tmp_path / "run.json")["levels"][2]["server"]["avg_batch"] == 1.5
    csv_lines = (tmp_path / "run.csv").read_text().splitlines()
    assert csv_lines[0].startswith("mode,level,") and "server_queue_us" in csv_lines[0] and len(csv_lines) == 4
    text, plots = report.compare([tmp_path / "run.json", tmp_path / "run.json"], tmp_path / "cmp")
    assert text.count("== run") == 2 and all(p.is_file() for p in plots)


# -- command line ------------------------------------------------------------------------------


def test_cli_help_compare_and_bad_options(tmp_path):
    from server.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "--request-rate" in result.output and "--compare" in result.output
    report.write_all({"name": "a"}, _rows(), tmp_path, "a", plots=False)
    report.write_all({"name": "b"}, _rows()[:2], tmp_path, "b", plots=False)
    result = runner.invoke(app, ["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "compare_throughput_latency.png").is_file() and (tmp_path / "compare_latency.png").is_file()
    result = runner.invoke(app, ["bench", "-m", "x", "-c", "1", "-r", "5"])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(app, ["bench", "--endpoint", "v2"])
    assert result.exit_code == 2 and "needs --model" in result.output
    result = runner.invoke(app, ["bench", "--endpoint", "classify"])
    assert result.exit_code == 2 and "--image" in result.output


def test_the_server_command_never_imports_matplotlib_or_the_load_generator():
    code = "import sys, server.cli; print(sorted(m for m in ('matplotlib', 'httpx', 'server.bench.load') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"
