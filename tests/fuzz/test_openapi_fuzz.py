"""schemathesis against the server's own OpenAPI document (``/openapi.json``): every
operation, the infer routes included (they are served outside FastAPI but described in
the document by ``server/frontends/http/openapi.py``). Positive and negative cases; no
5xx other than 503 (documented: not ready, queue full or timed out)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import given
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.fuzz.conftest import Tally, assert_healthy, fuzz_settings
from tests.integration import server_fixtures as fx


@pytest.fixture(scope="module")
def api_schema(fuzz_server: fx.ServerHandle):
    return schemathesis.openapi.from_url(f"http://{fuzz_server.http_url}/openapi.json")


@pytest.fixture(scope="module", autouse=True)
def healthy_afterwards(fuzz_server: fx.ServerHandle):
    yield
    assert_healthy(fuzz_server)


def test_schema_describes_infer_routes(fuzz_server: fx.ServerHandle) -> None:
    document = httpx.get(f"http://{fuzz_server.http_url}/openapi.json", timeout=30).json()
    for path in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/InferRequest"}
        assert "Inference-Header-Content-Length" in {p["name"] for p in operation["parameters"]}
    request = document["components"]["schemas"]["InferRequest"]
    assert set(request["properties"]) == {"id", "parameters", "inputs", "outputs"}
    tensor = document["components"]["schemas"]["InferInputTensor"]
    assert set(tensor["properties"]) == {"name", "shape", "datatype", "parameters", "data"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation(api_schema, fuzz_server: fx.ServerHandle, tally: Tally, mode: GenerationMode) -> None:
    """Each operation of the document in turn, with its own hypothesis run.

    (Not ``schema.parametrize()``: its lazy, fixture-based form does not run on pytest 9.)
    Every operation is run even when one fails; the failures are reported together."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]

    for operation in operations:
        target = f"openapi {operation.method.upper()} {operation.path}"
        try:
            _fuzz_operation(operation, mode, target, tally)
        except Unsatisfiable:  # nothing to make invalid (no parameters, no body): no negative cases
            assert mode == GenerationMode.NEGATIVE, target
        except Exception as exc:  # collected, so every operation is fuzzed
            failures.append(f"{target}: {exc}")
    assert not failures, "\n\n".join(failures)


def _fuzz_operation(operation, mode: GenerationMode, target: str, tally: Tally) -> None:
    @fuzz_settings(8)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(timeout=30)
        bad = response.status_code >= 500 and response.status_code != 503
        tally.record(target, response.status_code, bad)
        assert not bad, f"{response.status_code} {response.text[:500]!r}\n{case.as_curl_command()}"

    run()
