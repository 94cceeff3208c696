"""Request formats for the load generator: one builder per (server, wire format).

Each builder prebuilds the body once (the generator then only sends bytes) and returns a
``Scenario`` whose ``decode`` reads the output tensor back, raising ValueError on anything
malformed. Formats:

* ``v2_binary``   deepserve / Triton: JSON header + raw FP32 bytes, exactly the body
                  ``tritonclient.http`` builds (``generate_request_body``), binary output.
* ``v2_json``     deepserve / Triton: the whole tensor as a JSON list, JSON output.
* ``json_list``   FastAPI / LitServe: ``{"input": [[...]]}`` -> ``{"logits": [[...]]}``.
* ``raw_bytes``   FastAPI: the body is the FP32 bytes, the answer is the FP32 bytes.
* ``json_b64``    LitServe: ``{"input_b64": base64(FP32 bytes), "shape": [...]}`` ->
                  ``{"logits_b64": ...}`` (LitServe hands the worker a parsed JSON payload,
                  never the raw body, so base64 in JSON is how its users send binary data).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping

import numpy as np
import orjson

from loadtests.loadgen import Scenario, probe

_HEADER = "Inference-Header-Content-Length"


def _placeholder(x: np.ndarray) -> np.ndarray:
    return np.zeros((x.shape[0], 0), np.float32)


def _ok(status: int) -> None:
    if status != 200:
        raise ValueError(f"status {status}")


# -- v2 (deepserve) -----------------------------------------------------------------


def v2_binary(base_url: str, model: str, input_name: str, output_name: str, x: np.ndarray,
              expected: np.ndarray | None) -> Scenario:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    headers = {"Content-Type": "application/octet-stream", _HEADER: str(json_size)}

    def decode(status: int, resp_headers: Mapping[str, str], payload: bytes) -> np.ndarray:
        _ok(status)
        length = int(resp_headers[_HEADER])
        header = orjson.loads(payload[:length])
        (out,) = header["outputs"]
        if out["name"] != output_name or out["datatype"] != "FP32":
            raise ValueError(f"unexpected output {out['name']} {out['datatype']}")
        size = out["parameters"]["binary_data_size"]
        if length + size != len(payload):
            raise ValueError(f"binary_data_size {size} does not match the body")
        return np.frombuffer(payload, np.float32, offset=length).reshape(out["shape"])

    return Scenario(f"{model} v2-binary", f"{base_url}/v2/models/{model}/infer", body, headers, decode,
                    _placeholder(x) if expected is None else expected)


def v2_json(base_url: str, model: str, input_name: str, output_name: str, x: np.ndarray,
            expected: np.ndarray | None) -> Scenario:
    body = orjson.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.reshape(-1).tolist()}]})

    def decode(status: int, resp_headers: Mapping[str, str], payload: bytes) -> np.ndarray:
        _ok(status)
        (out,) = orjson.loads(payload)["outputs"]
        if out["name"] != output_name:
            raise ValueError(f"unexpected output {out['name']}")
        return np.asarray(out["data"], np.float32).reshape(out["shape"])

    return Scenario(f"{model} v2-json", f"{base_url}/v2/models/{model}/infer", body,
                    {"Content-Type": "application/json"}, decode, _placeholder(x) if expected is None else expected)


# -- hand-written servers and peers ---------------------------------------------------


def json_list(url: str, name: str, x: np.ndarray, expected: np.ndarray) -> Scenario:
    body = orjson.dumps({"input": x.tolist()})

    def decode(status: int, resp_headers: Mapping[str, str], payload: bytes) -> np.ndarray:
        _ok(status)
        return np.asarray(orjson.loads(payload)["logits"], np.float32)

    return Scenario(f"{name} json-list", url, body, {"Content-Type": "application/json"}, decode, expected)


def raw_bytes(url: str, name: str, x: np.ndarray, expected: np.ndarray) -> Scenario:
    rows_shape = (-1, *expected.shape[1:])

    def decode(status: int, resp_headers: Mapping[str, str], payload: bytes) -> np.ndarray:
        _ok(status)
        return np.frombuffer(payload, np.float32).reshape(rows_shape)

    return Scenario(f"{name} raw-bytes", url, np.ascontiguousarray(x).tobytes(),
                    {"Content-Type": "application/octet-stream"}, decode, expected)


def json_b64(url: str, name: str, x: np.ndarray, expected: np.ndarray) -> Scenario:
    body = orjson.dumps({"input_b64": base64.b64encode(np.ascontiguousarray(x).tobytes()).decode(),
                         "shape": list(x.shape)})

    def decode(status: int, resp_headers: Mapping[str, str], payload: bytes) -> np.ndarray:
        _ok(status)
        answer = orjson.loads(payload)
        return np.frombuffer(base64.b64decode(answer["logits_b64"]), np.float32).reshape(answer["shape"])

    return Scenario(f"{name} json-b64", url, body, {"Content-Type": "application/json"}, decode, expected)


async def learn_expected(scenario: Scenario) -> Scenario:
    """For the command line: take the server's first answer as the expected one."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(scenario.url, data=scenario.body, headers=scenario.headers) as resp,
    ):
        output = scenario.decode(resp.status, resp.headers, await resp.read())
    scenario = dataclasses.replace(scenario, expected=output.copy())
    problem = await probe(scenario)
    if problem:
        raise SystemExit(f"{scenario.name}: {problem}")
    return scenario
