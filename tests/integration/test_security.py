"""API keys, request ids, CORS, JSON logs and error bodies on a real server (issue #13).

Three servers on loopback: ``secured`` (an API key, an admin key from a file, CORS for one
origin), ``plain`` (no such flags: the defaults) and, for the log lines, one started and
stopped inside its test (its log is read once the process has exited, so every line is in).
Driven with tritonclient HTTP and gRPC, grpcio, httpx and the openai SDK.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration import server_fixtures as fx

API_KEY = "inference-key-0123"
ADMIN_KEY = "admin-key-4567"
ORIGIN = "https://app.example"

RAISER_CONFIG = """
name: "raiser"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

RAISER_MODEL = """
def _deep():
    raise ValueError("boom from the model")


class Raiser:
    def execute(self, inputs):
        _deep()
"""


def _repository(root: Path) -> Path:
    repo = fx.build_repository(root)
    fx.write_model(repo, "raiser", RAISER_CONFIG, {"model.py": RAISER_MODEL})
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return _repository(tmp_path_factory.mktemp("security-repo"))


@pytest.fixture(scope="module")
def secured(repo, tmp_path_factory) -> Iterator[fx.ServerHandle]:
    admin_file = tmp_path_factory.mktemp("secrets") / "admin-keys"
    admin_file.write_text(f"{ADMIN_KEY}\n")
    env = {"DEEPSERVE_API_KEY": API_KEY, "DEEPSERVE_ADMIN_KEY_FILE": str(admin_file), "DEEPSERVE_CORS_ORIGINS": ORIGIN}
    with fx.running_server(repo, extra_env=env) as handle:
        yield handle


@pytest.fixture(scope="module")
def plain(repo) -> Iterator[fx.ServerHandle]:
    with fx.running_server(repo) as handle:
        yield handle


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _simple_inputs(module) -> list:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return inputs


# -- HTTP ------------------------------------------------------------------------------


def test_http_keys_with_tritonclient(secured):
    client = httpclient.InferenceServerClient(secured.http_url)
    with pytest.raises(InferenceServerException, match="missing API key"):
        client.infer("simple", _simple_inputs(httpclient))
    with pytest.raises(InferenceServerException, match="invalid API key"):
        client.infer("simple", _simple_inputs(httpclient), headers=_bearer("wrong"))
    for key in (API_KEY, ADMIN_KEY):  # the admin key also authorizes inference
        result = client.infer("simple", _simple_inputs(httpclient), headers=_bearer(key))
        assert result.as_numpy("OUTPUT0")[0, 3] == 6.0
        assert client.get_model_metadata("simple", headers=_bearer(key))["name"] == "simple"
    with pytest.raises(InferenceServerException, match="admin key"):
        client.load_model("reloadable", headers=_bearer(API_KEY))
    client.load_model("reloadable", headers=_bearer(ADMIN_KEY))
    assert client.is_server_live() and client.is_server_ready()  # health needs no key


def test_http_statuses_and_open_routes(secured):
    base = f"http://{secured.http_url}"
    with httpx.Client(base_url=base) as client:
        missing = client.post("/v2/models/simple/infer", content=b'{"inputs": []}')
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.get("/v2/models/simple", headers=_bearer("wrong"))
        assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]
        assert client.post("/v2/models/simple/generate", json={}).status_code == 401
        assert client.get("/v2").status_code == 401
        assert client.post("/v2/repository/index", headers=_bearer(API_KEY)).status_code == 403
        assert client.post("/v2/repository/models/reloadable/unload", headers=_bearer(API_KEY)).status_code == 403
        index = client.post("/v2/repository/index", headers=_bearer(ADMIN_KEY))
        assert index.status_code == 200 and {row["name"] for row in index.json()} >= {"simple", "raiser"}
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "deepserve_" in metrics.text
        assert client.get("/v2", headers=_bearer(API_KEY)).status_code == 200


def test_openai_sdk_sends_its_key(secured):
    base = f"http://{secured.http_url}/v1"
    models = openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0).models.list()
    assert "simple" in {m.id for m in models.data}
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"  # OpenAI's error shape on OpenAI paths


def test_request_id_echoed_or_generated(secured, plain):
    with httpx.Client() as client:
        for server in (secured, plain):
            url = f"http://{server.http_url}/v2/models/simple"
            given = client.get(url, headers={**_bearer(API_KEY), "X-Request-ID": "client-id-1"})
            assert given.status_code == 200 and given.headers["x-request-id"] == "client-id-1"
            fresh = client.get(url, headers=_bearer(API_KEY))
            assert len(fresh.headers["x-request-id"]) == 32
            bad = client.get(url, headers={**_bearer(API_KEY), "X-Request-ID": "x" * 129})
            assert len(bad.headers["x-request-id"]) == 32
        denied = client.get(f"http://{secured.http_url}/v2/models/simple", headers={"X-Request-ID": "denied-id"})
        assert denied.status_code == 401 and denied.headers["x-request-id"] == "denied-id"
        infer = client.post(
            f"http://{plain.http_url}/v2/models/simple/infer", content=b"{}", headers={"X-Request-ID": "fast-path"}
        )
        assert infer.status_code == 400 and infer.headers["x-request-id"] == "fast-path"


def _preflight(server: fx.ServerHandle) -> httpx.Response:
    return httpx.options(
        f"http://{server.http_url}/v2/models/simple/infer",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-request-id",
        },
    )


def test_cors_preflight_with_and_without_configuration(secured, plain):
    allowed = _preflight(secured)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "POST" in allowed.headers["access-control-allow-methods"]
    simple = httpx.get(f"http://{secured.http_url}/v2/models/simple", headers={"Origin": ORIGIN, **_bearer(API_KEY)})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    off = _preflight(plain)
    assert "access-control-allow-origin" not in off.headers


def test_python_model_error_has_its_message_and_no_traceback(plain):
    body = {"inputs": [{"name": "INPUT", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    response = httpx.post(f"http://{plain.http_url}/v2/models/raiser/infer", json=body)
    assert response.status_code == 500
    assert "boom from the model" in response.json()["error"]
    assert "Traceback" not in response.text and "_deep" not in response.text
    client = grpcclient.InferenceServerClient(plain.grpc_url)
    data = grpcclient.InferInput("INPUT", [2], "FP32")
    data.set_data_from_numpy(np.array([1, 2], np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("raiser", [data])
    assert info.value.status() == "StatusCode.INTERNAL"
    assert "boom from the model" in info.value.message()
    assert "Traceback" not in info.value.message()


# -- gRPC ------------------------------------------------------------------------------


def test_grpc_keys_with_tritonclient(secured):
    client = grpcclient.InferenceServerClient(secured.grpc_url)
    assert client.is_server_live() and client.is_server_ready()  # open without a key
    for headers in (None, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", _simple_inputs(grpcclient), headers=headers)
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as info:
        client.load_model("reloadable", headers={"authorization": f"Bearer {API_KEY}"})
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_repository_index(headers={"authorization": f"Bearer {API_KEY}"})
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    for key in (API_KEY, ADMIN_KEY):
        result = client.infer("simple", _simple_inputs(grpcclient), headers={"authorization": f"Bearer {key}"})
        assert result.as_numpy("OUTPUT0")[0, 3] == 6.0
    client.load_model("reloadable", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    index = client.get_model_repository_index(headers={"authorization": f"Bearer {ADMIN_KEY}"}, as_json=True)
    assert any(m["name"] == "reloadable" for m in index["models"])


def test_grpc_stream_needs_a_key(secured):
    request = pb.ModelInferRequest(model_name="simple")
    with grpc.insecure_channel(secured.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(iter([request]), metadata=metadata))
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # with the key, the stream runs: this request's error comes in-band, as a response
        responses = list(stub.ModelStreamInfer(iter([request]), metadata=(("authorization", f"Bearer {API_KEY}"),)))
        assert len(responses) == 1 and responses[0].error_message


def test_grpc_request_id_in_trailing_metadata(secured):
    with grpc.insecure_channel(secured.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = (("authorization", f"Bearer {API_KEY}"), ("x-request-id", "grpc-id-1"))
        _, call = stub.ModelMetadata.with_call(pb.ModelMetadataRequest(name="simple"), metadata=metadata)
        assert dict(call.trailing_metadata())["x-request-id"] == "grpc-id-1"
        _, call = stub.ModelMetadata.with_call(pb.ModelMetadataRequest(name="simple"), metadata=metadata[:1])
        assert len(dict(call.trailing_metadata())["x-request-id"]) == 32
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), metadata=metadata)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert dict(info.value.trailing_metadata())["x-request-id"] == "grpc-id-1"
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="simple"), metadata=(("x-request-id", "no-key"),))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert dict(info.value.trailing_metadata())["x-request-id"] == "no-key"


# -- logs ------------------------------------------------------------------------------


def test_json_log_lines_parse_and_carry_the_request_id(repo):
    env = {"DEEPSERVE_API_KEY": API_KEY, "DEEPSERVE_LOG_FORMAT": "json"}
    with fx.server_process(repo, extra_args=("--log-level", "info"), extra_env=env) as (handle, proc):
        ok = httpx.post(
            f"http://{handle.http_url}/v2/models/simple/infer",
            headers={**_bearer(API_KEY), "X-Request-ID": "log-ok"},
            json={"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16} for n in ("INPUT0", "INPUT1")]},
        )
        assert ok.status_code == 200
        assert httpx.get(f"http://{handle.http_url}/v2/models/simple", headers={"X-Request-ID": "log-401"}).status_code == 401
        body = {"inputs": [{"name": "INPUT", "shape": [1], "datatype": "FP32", "data": [1]}]}
        failed = httpx.post(
            f"http://{handle.http_url}/v2/models/raiser/infer", json=body, headers={**_bearer(API_KEY), "X-Request-ID": "log-500"}
        )
        assert failed.status_code == 500
        client = grpcclient.InferenceServerClient(handle.grpc_url)
        client.get_model_metadata("simple", headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "log-grpc"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        text = handle.log()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = {e.get("request_id"): e for e in entries if e.get("event") == "request"}
    assert access["log-ok"]["status"] == 200 and access["log-ok"]["model"] == "simple"
    assert access["log-ok"]["route"] == "/v2/models/simple/infer" and access["log-ok"]["duration_ms"] >= 0
    assert access["log-401"]["status"] == 401 and "missing API key" in access["log-401"]["reason"]
    assert access["log-500"]["status"] == 500 and "boom from the model" in access["log-500"]["reason"]
    assert access["log-grpc"]["status"] == "OK" and access["log-grpc"]["protocol"] == "grpc"
    assert access["log-grpc"]["model"] == "simple"
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # uvicorn's own lines are JSON too
