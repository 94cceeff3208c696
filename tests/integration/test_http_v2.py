"""The v2 HTTP protocol, driven by NVIDIA's tritonclient.http (binary and JSON)."""

from __future__ import annotations

import gzip

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration import server_fixtures as fx
from tests.integration.conftest import add_broken_model


@pytest.fixture
def client(http_server):
    c = httpclient.InferenceServerClient(http_server.http_url)
    yield c
    c.close()


@pytest.fixture
def raw(http_server):
    with httpx.Client(base_url=f"http://{http_server.http_url}", timeout=30) as c:
        yield c


def digits_infer(client, x: np.ndarray, binary: bool = True, class_count: int = 0):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=class_count)
    return client.infer("digits", [inp], outputs=[out])


def test_health_and_server_metadata(client, raw):
    assert client.is_server_live() and client.is_server_ready()
    assert raw.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get_server_metadata()
    assert meta["name"] == "deepserve" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_includes_the_batch_dimension(client):
    meta = client.get_model_metadata("digits")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    config = client.get_model_config("digits")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [1, 8, 8]
    assert config["dynamic_batching"]["preferred_batch_size"] == [16, 32]
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "7") and not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False])
def test_digits_are_classified_correctly(client, digits, binary):
    x, y = digits
    logits = digits_infer(client, x[:64], binary=binary).as_numpy("logits")
    assert logits.shape == (64, 10)
    assert (logits.argmax(1) == y[:64]).mean() >= 0.95


def test_a_batch_equals_its_rows_sent_one_by_one(client, digits):
    x, _ = digits
    batched = digits_infer(client, x[:16]).as_numpy("logits")
    single = np.concatenate([digits_infer(client, x[i : i + 1]).as_numpy("logits") for i in range(16)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)
    assert (batched.argmax(1) == single.argmax(1)).all()


def test_classification_extension_returns_top_k_with_labels(client, digits):
    x, y = digits
    result = digits_infer(client, x[:4], class_count=3).as_numpy("logits")
    assert result.shape == (4, 3)
    for row, label in zip(result, y[:4], strict=True):
        value, index, name = row[0].decode().split(":")
        assert int(index) == label and name == str(label) and float(value) > float(row[1].decode().split(":")[0])


def test_two_input_model_and_selected_outputs(client):
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), np.float32)
    inputs = [httpclient.InferInput("INPUT0", [2, 16], "FP32"), httpclient.InferInput("INPUT1", [2, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    result = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


@pytest.mark.parametrize("binary", [True, False])
def test_datatypes_round_trip(client, binary):
    values = {
        "S": np.array([b"hello", "wörld".encode(), b""], dtype=object),
        "B": np.array([True, False, True]),
        "I64": np.array([-(2**40), 0, 7], np.int64),
        "I8": np.array([-128, 0, 127], np.int8),
        "U16": np.array([0, 1, 65535], np.uint16),
        "F64": np.array([0.1, -2.5, 1e300]),
        "H": np.array([0.5, -1.0, 2.0], np.float16),
    }
    dtypes = {"S": "BYTES", "B": "BOOL", "I64": "INT64", "I8": "INT8", "U16": "UINT16", "F64": "FP64", "H": "FP16"}
    inputs = []
    for name, array in values.items():
        inp = httpclient.InferInput(name, list(array.shape), dtypes[name])
        inp.set_data_from_numpy(array, binary_data=binary or name == "H")
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput(f"{n}_OUT", binary_data=binary or n == "H") for n in values]
    result = client.infer("types", inputs, outputs=outputs)
    for name, array in values.items():
        got = result.as_numpy(f"{name}_OUT")
        if name == "S":
            # tritonclient gives JSON strings back as str, binary ones as bytes
            assert [g.encode() if isinstance(g, str) else g for g in got] == list(array)
        else:
            np.testing.assert_array_equal(got, array)


def test_compressed_request_and_response(http_server, digits):
    x, y = digits
    c = httpclient.InferenceServerClient(http_server.http_url)
    inp = httpclient.InferInput("input", [8, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(x[:8])
    for algorithm in ("gzip", "deflate"):
        result = c.infer("digits", [inp], request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
        assert (result.as_numpy("logits").argmax(1) == y[:8]).all()
    c.close()


def test_statistics_count_exactly_the_requests_sent(client, digits):
    x, _ = digits
    before = client.get_inference_statistics("digits")["model_stats"][0]
    for _ in range(3):
        digits_infer(client, x[:5])
    after = client.get_inference_statistics("digits")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 15
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert after["inference_stats"]["queue"]["ns"] > before["inference_stats"]["queue"]["ns"]
    assert any(b["batch_size"] == 5 for b in after["batch_stats"])


def test_broken_model_is_unavailable_with_its_reason_and_the_others_serve(tmp_path):
    repo = tmp_path / "repo"
    fx.write_simple(repo, "simple")
    add_broken_model(repo)
    with fx.running_server(repo, wait_for="live") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["simple"]["state"] == "READY"
        assert index["broken"]["state"] == "UNAVAILABLE" and "NOT_IN_FILE" in index["broken"]["reason"]
        assert not client.is_server_ready()  # strict readiness, as Triton: every model must be ready
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(np.ones((1, 16), np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer("broken", inputs)
        assert err.value.status() == "503" and "NOT_IN_FILE" in err.value.message()
        np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), np.full((1, 16), 2.0))
        client.close()


def test_unload_load_and_load_with_a_config_override(client):
    a = np.ones((1, 16), np.float32)

    def infer():
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a)
        return client.infer("reloadable", inputs)

    client.unload_model("reloadable")
    assert not client.is_model_ready("reloadable")
    with pytest.raises(InferenceServerException):
        infer()
    client.load_model("reloadable")
    np.testing.assert_array_equal(infer().as_numpy("OUTPUT0"), a * 2)
    config = client.get_model_config("reloadable")
    config["max_batch_size"] = 4
    config["dynamic_batching"]["max_queue_delay_microseconds"] = 0
    import json

    client.load_model("reloadable", config=json.dumps(config))
    assert client.get_model_config("reloadable")["max_batch_size"] == 4
    np.testing.assert_array_equal(infer().as_numpy("OUTPUT1"), a * 0)


def test_load_with_files_sends_the_model_itself(client, tmp_path):
    fx._save(fx.add_sub_model(), tmp_path / "model.onnx")
    config = {"name": "uploaded", "platform": "onnxruntime_onnx", "max_batch_size": 8}
    import json

    client.load_model("uploaded", config=json.dumps(config), files={"file:1/model.onnx": (tmp_path / "model.onnx").read_bytes()})
    assert client.is_model_ready("uploaded")
    assert client.get_model_metadata("uploaded")["inputs"][0]["shape"] == [-1, 16]
    client.unload_model("uploaded")


def test_metrics_are_exposed_in_prometheus_format(client, raw, digits):
    from prometheus_client.parser import text_string_to_metric_families

    digits_infer(client, digits[0][:3])
    families = {f.name: f for f in text_string_to_metric_families(raw.get("/metrics").text)}
    for name in ("deepserve_request_success", "deepserve_inference_count", "deepserve_execution_count",
                 "deepserve_request_duration_seconds", "deepserve_queue_duration_seconds",
                 "deepserve_compute_duration_seconds", "deepserve_batch_size", "deepserve_pending_requests",
                 "deepserve_inflight_requests", "deepserve_model_load_duration_seconds"):
        assert name in families, name
    samples = {(s.name, s.labels.get("model")): s.value for f in families.values() for s in f.samples}
    assert samples[("deepserve_inference_count_total", "digits")] >= 3
    assert samples[("deepserve_request_duration_seconds_count", "digits")] >= 1
    assert samples[("deepserve_model_load_duration_seconds", "digits")] > 0
    # every batch is counted once with why it closed (docs/batching.md)
    closes = {s.labels["reason"]: s.value for s in families["deepserve_batch_close"].samples
              if s.labels.get("model") == "digits" and s.name.endswith("_total")}
    assert set(closes) <= {"max_batch_size", "preferred_size", "max_queue_delay", "queue_empty", "instance_idle"}
    assert sum(closes.values()) == samples[("deepserve_execution_count_total", "digits")]


def test_raw_binary_request_without_a_json_header(raw, digits):
    x, y = digits
    r = raw.post("/v2/models/digits/infer", content=x[:1].tobytes(), headers={"Inference-Header-Content-Length": "0"})
    assert r.status_code == 200
    header_len = int(r.headers["inference-header-content-length"])
    logits = np.frombuffer(r.content[header_len:], np.float32)
    assert logits.argmax() == y[0]


def test_gzip_body_over_the_limit_after_decompression_is_refused(raw):
    body = gzip.compress(b" " * (fx.SMALL_MESSAGE_BYTES + 10))
    r = raw.post("/v2/models/digits/infer", content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
