"""The repository API refuses paths out of the repository, keeps the server's paths out of
its messages, and a client's failed load leaves readiness and serving as they were (a real
server on loopback, driven with tritonclient HTTP and gRPC and httpx)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

SECRET = "TOP-SECRET-OUTSIDE-THE-REPOSITORY-7781"
INFER_BODY = json.dumps(
    {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16} for n in ("INPUT0", "INPUT1")]}
).encode()


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("outside") / "model.onnx"
    path.write_text(SECRET)
    return path


def _config(name: str, **extra) -> str:
    data = {
        "name": name, "platform": "onnxruntime_onnx", "max_batch_size": 64,
        "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("INPUT0", "INPUT1")],
        "output": [{"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("OUTPUT0", "OUTPUT1")],
    }
    data.update(extra)
    return json.dumps(data)


def _infer_simple(client) -> np.ndarray:
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    a = np.ones((1, 16), np.float32)
    inputs = [module.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(a)
    return client.infer("simple", inputs).as_numpy("OUTPUT0")


def _check_message(message: str, server, secret) -> None:
    assert SECRET not in message
    assert str(server.repository) not in message and str(server.repository.resolve()) not in message
    assert str(secret.parent) not in message


@pytest.mark.parametrize("encoded", ["%2E%2E", "%2E", "..%5Cetc", "a%00b", "x" * 300])
def test_http_repository_and_inference_routes_refuse_invalid_names(server, encoded):
    base = f"http://{server.http_url}"
    with httpx.Client(base_url=base) as http:
        for method, path in (
            ("POST", f"/v2/repository/models/{encoded}/load"),
            ("POST", f"/v2/repository/models/{encoded}/unload"),
            ("POST", f"/v2/models/{encoded}/infer"),
            ("GET", f"/v2/models/{encoded}"),
        ):
            body = INFER_BODY if path.endswith("/infer") else b"{}"
            response = http.request(method, path, content=body)
            assert response.status_code == 400, (path, response.text)
            assert "model name" in response.json()["error"]
        assert http.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("name", ["..", "../etc", "/etc", "a\x00b"])
def test_grpc_repository_and_inference_refuse_invalid_names(server, name):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for call in (lambda: client.load_model(name), lambda: client.unload_model(name), lambda: client.get_model_metadata(name)):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
        assert "model name" in info.value.message()
    with pytest.raises(InferenceServerException, match="version must be a number"):
        client.get_model_metadata("simple", model_version="../1")
    assert client.is_server_ready()


def test_load_with_config_never_reads_outside_the_model_folder(server, secret):
    """default_model_filename / label_filename naming a file outside: refused before it is
    opened, over HTTP and gRPC; the message names no server path and shows none of the file."""
    relative = "../../../../../../../../.." + str(secret)  # climbs to / and back down to the secret
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    outputs = json.loads(_config("simple"))["output"]
    outputs[0]["label_filename"] = relative
    configs = [
        _config("simple", default_model_filename=relative),
        _config("simple", default_model_filename=str(secret)),
        _config("simple", output=outputs),
    ]
    for client in (http, grpc):
        for config in configs:
            with pytest.raises(InferenceServerException) as info:
                client.load_model("simple", config=config)
            message = info.value.message()
            assert "inside the model's folder" in message, message
            assert SECRET not in message and str(server.repository) not in message
    # the failed reloads left version 1 serving, readiness as it was, and the index says why
    assert http.is_server_ready() and grpc.is_server_ready()
    np.testing.assert_array_equal(_infer_simple(http), np.full((1, 16), 2, np.float32))
    np.testing.assert_array_equal(_infer_simple(grpc), np.full((1, 16), 2, np.float32))
    row = next(r for r in http.get_model_repository_index() if r["name"] == "simple")
    assert row["state"] == "READY" and "inside the model's folder" in row["reason"]
    assert SECRET not in server.log()


def test_uploaded_file_names_stay_in_the_model_folder(server):
    http = httpclient.InferenceServerClient(server.http_url)
    for key in ("file:../../escape/model.onnx", "file:/tmp/model.onnx", "file:model.onnx"):
        with pytest.raises(InferenceServerException, match="file:<version>/<filename>"):
            http.load_model("uploaded", config=_config("uploaded"), files={key: b"junk"})
    assert http.is_server_ready()


def test_failed_load_of_a_new_model_keeps_readiness_and_reports_the_reason(server):
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        http.load_model("fresh", config=_config("fresh"), files={"file:1/model.onnx": b"not an onnx model"})
    message = info.value.message()
    assert "fresh/1/model.onnx" in message and "deepserve-load" not in message, message
    with pytest.raises(InferenceServerException) as info:
        grpc.load_model("fresh_grpc", config=_config("fresh_grpc"), files={"file:1/model.onnx": b"junk"})
    assert "fresh_grpc/1/model.onnx" in info.value.message()
    with httpx.Client(base_url=f"http://{server.http_url}") as client:
        assert client.get("/v2/health/ready").status_code == 200
        rows = {r["name"]: r for r in client.post("/v2/repository/index", content=b"{}").json()}
    assert rows["fresh"]["state"] == "UNAVAILABLE" and "model.onnx" in rows["fresh"]["reason"]
    index = {m.name: m for m in grpc.get_model_repository_index().models}
    assert index["fresh_grpc"].state == "UNAVAILABLE" and index["fresh_grpc"].reason
    assert grpc.is_server_ready() and not grpc.is_model_ready("fresh")
    np.testing.assert_array_equal(_infer_simple(grpc), np.full((1, 16), 2, np.float32))


def test_unknown_model_folder_message_has_no_server_path(server):
    http = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as info:
        http.load_model("no_such_model")
    assert "no_such_model" in info.value.message() and str(server.repository) not in info.value.message()
