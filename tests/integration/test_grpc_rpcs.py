"""Every RPC of inference.GRPCInferenceService, driven with tritonclient.grpc (sync) against a
real server subprocess; plus grpc.health.v1, reflection, size limits and HTTP parity."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration import server_fixtures as fx

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(server) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture
def stub(server) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def simple_inputs(module, a: np.ndarray, b: np.ndarray) -> list:
    inputs = [module.InferInput("INPUT0", list(a.shape), "FP32"), module.InferInput("INPUT1", list(b.shape), "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def expect_error(code: str, call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    assert info.value.status() == f"StatusCode.{code}", info.value
    return info.value


def stats_of(client, model: str) -> pb.ModelStatistics:
    return client.get_inference_statistics(model).model_stats[0]


# ---- health and metadata -------------------------------------------------------------


def test_health_rpcs_answer_false_not_errors(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("simple", "7") is False


def test_not_ready_server_answers_false_not_errors(tmp_path):
    """A model that fails to load leaves the server live but not ready."""
    fx.write_simple(tmp_path, "simple")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with fx.running_server(tmp_path, wait_for="live") as handle:
        client = grpcclient.InferenceServerClient(handle.grpc_url)
        try:
            assert client.is_server_live() is True
            assert client.is_server_ready() is False
            assert client.is_model_ready("broken") is False and client.is_model_ready("simple") is True
            index = {m.name: m for m in client.get_model_repository_index().models}
            assert index["broken"].state == "UNAVAILABLE" and index["broken"].reason
            a = np.ones((1, 16), np.float32)
            expect_error("UNAVAILABLE", client.infer, "broken", simple_inputs(grpcclient, a, a))
        finally:
            client.close()
        with grpc.insecure_channel(handle.grpc_url) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_server_and_model_metadata(client):
    meta = client.get_server_metadata()
    assert meta.name == "deepserve" and meta.version
    assert {"classification", "model_repository", "statistics"} <= set(meta.extensions)
    model = client.get_model_metadata("simple", as_json=True)
    assert model["name"] == "simple" and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("INPUT0", "FP32", ["-1", "16"]),
        ("INPUT1", "FP32", ["-1", "16"]),
    ]
    expect_error("NOT_FOUND", client.get_model_metadata, "no_such_model")
    expect_error("INVALID_ARGUMENT", client.get_model_metadata, "simple", "latest")


def test_model_config_is_the_model_config_message(client):
    config = client.get_model_config("simple").config
    assert config.name == "simple" and config.max_batch_size == 64
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"] and list(config.input[0].dims) == [16]
    assert client.get_model_config("decoupled").config.model_transaction_policy.decoupled
    expect_error("NOT_FOUND", client.get_model_config, "no_such_model")


def test_standard_health_service_and_reflection(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


# ---- inference -----------------------------------------------------------------------


def test_infer_simple_with_classification_and_id(client):
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 0.5, dtype=np.float32)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1", class_count=2)]
    result = client.infer("simple", simple_inputs(grpcclient, a, b), outputs=outputs, request_id="req-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    top = result.as_numpy("OUTPUT1")
    assert top.shape == (2, 2)
    assert top[0].tolist() == [b"14.500000:15", b"13.500000:14"]  # OUTPUT1 has no labels
    assert result.get_response().id == "req-1" and result.get_response().model_version == "1"


def test_infer_without_requested_outputs_returns_all(client):
    a = np.ones((1, 16), np.float32)
    result = client.infer("simple", simple_inputs(grpcclient, a, a))
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


def types_inputs(module) -> tuple[list, dict[str, np.ndarray]]:
    data = {
        "S": np.array([b"hello", "é ✓".encode(), b""], dtype=object),  # ORT strings are UTF-8
        "H": np.array([1.5, -0.25, 65504.0], dtype=np.float16),
        "B": np.array([True, False, True]),
        "I64": np.array([-(2**62), 0, 2**62], dtype=np.int64),
        "I8": np.array([-128, 0, 127], dtype=np.int8),
        "U16": np.array([0, 1, 65535], dtype=np.uint16),
        "F64": np.array([1e-300, 0.0, -1e300], dtype=np.float64),
    }
    inputs = []
    for name, array in data.items():
        tensor = module.InferInput(name, list(array.shape), fx_datatype(array))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs, data


def fx_datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def test_every_datatype_roundtrips_raw(client):
    inputs, data = types_inputs(grpcclient)
    result = client.infer("types", inputs)
    for name, array in data.items():
        got = result.as_numpy(f"{name}_OUT")
        assert got.dtype == (np.object_ if array.dtype == object else array.dtype)
        assert got.tolist() == array.tolist()


def test_typed_contents_inputs_are_accepted(stub):
    request = pb.ModelInferRequest(model_name="simple")
    for name, value in (("INPUT0", 2.0), ("INPUT1", 0.5)):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16], contents=pb.InferTensorContents(fp32_contents=[value] * 16))
    response = stub.ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    assert not response.outputs[0].HasField("contents")
    np.testing.assert_array_equal(out, np.full(16, 2.5, np.float32))


def test_grpc_and_http_answer_identically(client, server):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 16)).astype(np.float32), rng.standard_normal((3, 16)).astype(np.float32)
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        results = {}
        for module, target in ((grpcclient, client), (httpclient, http)):
            outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1", class_count=4)]
            plain = target.infer("simple", simple_inputs(module, a, b), outputs=outputs)
            typed = target.infer("types", types_inputs(module)[0])
            results[module.__name__] = (plain, typed)
        (g, g_types), (h, h_types) = results["tritonclient.grpc"], results["tritonclient.http"]
        assert g.as_numpy("OUTPUT0").tobytes() == h.as_numpy("OUTPUT0").tobytes()
        assert g.as_numpy("OUTPUT1").tolist() == h.as_numpy("OUTPUT1").tolist()  # classification
        for name in types_inputs(grpcclient)[1]:
            gx, hx = g_types.as_numpy(f"{name}_OUT"), h_types.as_numpy(f"{name}_OUT")
            assert gx.dtype == hx.dtype and gx.tolist() == hx.tolist()
    finally:
        http.close()


def test_infer_errors_map_to_status_codes(client):
    a = np.ones((1, 16), np.float32)
    expect_error("NOT_FOUND", client.infer, "no_such_model", simple_inputs(grpcclient, a, a))
    err = expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(grpcclient, np.ones((1, 3), np.float32), np.ones((1, 3), np.float32)))
    assert "shape" in err.message()
    big = np.ones((65, 16), np.float32)
    assert "max_batch_size" in expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(grpcclient, big, big)).message()
    wrong = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    for tensor in wrong:
        tensor.set_data_from_numpy(np.ones((1, 16), np.int32))
    expect_error("INVALID_ARGUMENT", client.infer, "simple", wrong)
    expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(grpcclient, a, a), outputs=[grpcclient.InferRequestedOutput("NOPE")])
    expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(grpcclient, a, a), model_version="one")
    assert client.is_server_live()


def test_priority_and_timeout_reach_the_batcher(client):
    x = grpcclient.InferInput("INPUT", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    # The queued model has 2 priority levels: priority 5 is refused by the batcher.
    assert "priority" in expect_error("INVALID_ARGUMENT", client.infer, "queued", [x], priority=5).message()
    # A 100 ms queue timeout (override allowed) expires long before the 20 s batching delay.
    assert "timed out" in expect_error("UNAVAILABLE", client.infer, "queued", [x], timeout=100_000, client_timeout=15).message()
    stats = stats_of(client, "queued")
    assert stats.inference_count == 0 and stats.execution_count == 0


def test_oversized_message_is_resource_exhausted_and_server_survives(client):
    rows = fx.SMALL_MESSAGE_BYTES // (16 * 4) + 1
    huge = np.zeros((rows, 16), np.float32)
    expect_error("RESOURCE_EXHAUSTED", client.infer, "simple", simple_inputs(grpcclient, huge, huge))
    a = np.ones((1, 16), np.float32)
    assert client.infer("simple", simple_inputs(grpcclient, a, a)).as_numpy("OUTPUT0").sum() == 32


def test_statistics_move_by_exactly_the_requests_sent(client):
    before = stats_of(client, "simple")
    a = np.ones((2, 16), np.float32)
    for _ in range(5):
        client.infer("simple", simple_inputs(grpcclient, a, a))
    expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(grpcclient, np.ones((1, 3), np.float32), np.ones((1, 3), np.float32)))
    after = stats_of(client, "simple")
    assert after.inference_count - before.inference_count == 10  # rows
    assert after.execution_count - before.execution_count == 5  # sequential: one batch each
    assert after.inference_stats.success.count - before.inference_stats.success.count == 5
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.last_inference >= before.last_inference
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} >= {"simple", "types", "queued"}
    expect_error("NOT_FOUND", client.get_inference_statistics, "no_such_model")


# ---- streaming (sync client) ------------------------------------------------------------


def collect_stream(client, requests: list[dict], timeout_s: float = 30.0) -> list[tuple]:
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        expected = 0
        for kwargs in requests:
            expected += kwargs.pop("_responses", 1)
            client.async_stream_infer(**kwargs)
        return [results.get(timeout=timeout_s) for _ in range(expected)]
    finally:
        client.stop_stream()


def test_stream_keeps_order_and_survives_errors(client):
    requests = []
    for i in range(10):
        a = np.full((1, 16), i, np.float32)
        if i % 3 == 2:
            requests.append({"model_name": "simple", "inputs": simple_inputs(grpcclient, a[:, :3], a[:, :3]), "request_id": str(i)})
        else:
            requests.append({"model_name": "simple", "inputs": simple_inputs(grpcclient, a, a), "request_id": str(i)})
    answers = collect_stream(client, requests)
    for i, (result, error) in enumerate(answers):
        if i % 3 == 2:
            assert result is None and "INVALID_ARGUMENT" in error.message() and "shape" in error.message()
        else:
            assert error is None and result.get_response().id == str(i)
            assert result.as_numpy("OUTPUT0")[0, 0] == 2 * i


def test_stream_final_response_flags(client):
    x = grpcclient.InferInput("INPUT", [3], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
    a = np.ones((1, 16), np.float32)
    answers = collect_stream(client, [
        # decoupled model: its response flagged not-final, then an empty final response
        {"model_name": "decoupled", "inputs": [x], "request_id": "d", "enable_empty_final_response": True, "_responses": 2},
        # non-decoupled: its single response is the final one
        {"model_name": "simple", "inputs": simple_inputs(grpcclient, a, a), "request_id": "s", "enable_empty_final_response": True},
        # without the flag: no parameter, no empty response
        {"model_name": "decoupled", "inputs": [x], "request_id": "n"},
    ])
    # Decoupled responses go out as produced, unary ones in request order: group by request id.
    assert all(error is None for _, error in answers)
    by_id: dict[str, list] = {}
    for result, _ in answers:
        by_id.setdefault(result.get_response().id, []).append(result)
    (first, empty), (single,), (plain,) = by_id["d"], by_id["s"], by_id["n"]
    final = lambda r: r.get_response().parameters["triton_final_response"].bool_param
    assert first.get_response().id == "d" and first.as_numpy("INPUT_OUT").tolist() == [1, 2, 3] and not final(first)
    assert empty.get_response().id == "d" and not empty.get_response().outputs and final(empty)
    assert single.get_response().id == "s" and final(single)
    assert plain.get_response().id == "n" and "triton_final_response" not in plain.get_response().parameters
    err = expect_error("INVALID_ARGUMENT", client.infer, "decoupled", [x])
    assert "ModelStreamInfer" in err.message()


# ---- repository ----------------------------------------------------------------------


def test_unload_then_load_serves_again(client):
    a = np.ones((1, 16), np.float32)
    assert client.is_model_ready("reloadable")
    client.unload_model("reloadable")
    assert client.is_model_ready("reloadable") is False
    err = expect_error("UNAVAILABLE", client.infer, "reloadable", simple_inputs(grpcclient, a, a))
    assert "reloadable" in err.message()
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["reloadable"].state == "UNAVAILABLE" and index["reloadable"].reason == "unloaded"
    assert "reloadable" not in {m.name for m in client.get_model_repository_index(as_json=False).models if m.state == "READY"}
    client.load_model("reloadable")
    assert client.is_model_ready("reloadable")
    np.testing.assert_array_equal(client.infer("reloadable", simple_inputs(grpcclient, a, a)).as_numpy("OUTPUT0"), a + a)
    expect_error("NOT_FOUND", client.load_model, "no_such_model")


def test_load_with_config_override_and_files(client, server):
    config = client.get_model_config("reloadable", as_json=True)["config"]
    config["max_batch_size"] = 2
    client.load_model("reloadable", config=json.dumps(config))
    assert client.get_model_config("reloadable").config.max_batch_size == 2
    a = np.ones((3, 16), np.float32)
    expect_error("INVALID_ARGUMENT", client.infer, "reloadable", simple_inputs(grpcclient, a, a))
    model_bytes = (server.repository / "reloadable" / "1" / "model.onnx").read_bytes()
    config["max_batch_size"] = 4
    del config["output"][0]["label_filename"]  # the override folder holds only the model file
    client.load_model("reloadable", config=json.dumps(config), files={"file:1/model.onnx": model_bytes})
    assert client.get_model_config("reloadable").config.max_batch_size == 4
    np.testing.assert_array_equal(client.infer("reloadable", simple_inputs(grpcclient, a, a)).as_numpy("OUTPUT1"), a - a)
    expect_error("INVALID_ARGUMENT", client.load_model, "reloadable", config="{not json")
    client.load_model("reloadable")  # back to the folder's config
    assert client.get_model_config("reloadable").config.max_batch_size == 64


def test_unimplemented_rpcs_say_why(client):
    for call, args in (
        (client.get_system_shared_memory_status, ()),
        (client.register_system_shared_memory, ("r", "/key", 64)),
        (client.unregister_system_shared_memory, ()),
        (client.get_cuda_shared_memory_status, ()),
        (client.unregister_cuda_shared_memory, ()),
        (client.get_trace_settings, ()),
        (client.get_log_settings, ()),
    ):
        err = expect_error("UNIMPLEMENTED", call, *args)
        assert "not supported by deepserve" in err.message()
