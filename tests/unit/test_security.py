"""API keys, request ids, CORS and log lines, without a server: the key policy, the ASGI
wrapper around a stub app, the gRPC method classes, the log formatters and the settings."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from server.frontends.grpc import interceptors
from server.frontends.http import security
from server.frontends.http.security import Access, Authenticator, Denied, required_access
from server.observability import logs
from server.settings import Settings


def _denied(auth: Authenticator, required: Access, header: str | None) -> int | None:
    try:
        auth.check(required, header)
    except Denied as denied:
        return denied.status
    return None


# -- the policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "access"),
    [
        ("/v2/health/live", Access.OPEN),
        ("/v2/health/ready", Access.OPEN),
        ("/metrics", Access.OPEN),
        ("/v2", Access.INFERENCE),
        ("/v2/models/simple", Access.INFERENCE),
        ("/v2/models/simple/ready", Access.INFERENCE),
        ("/v2/models/simple/versions/1/infer", Access.INFERENCE),
        ("/v2/models/simple/generate_stream", Access.INFERENCE),
        ("/v2/models/stats", Access.INFERENCE),
        ("/v1/models", Access.INFERENCE),
        ("/v1/images/generations", Access.INFERENCE),
        ("/v1/classify", Access.INFERENCE),
        ("/v2/repository/index", Access.ADMIN),
        ("/v2/repository/models/simple/load", Access.ADMIN),
        ("/v2/repository/models/simple/unload/", Access.ADMIN),
        ("/v2/repository", Access.ADMIN),
        ("/v2/trace/setting", Access.ADMIN),
        ("/v2/models/simple/trace/setting", Access.ADMIN),
        ("/v2/logging", Access.ADMIN),
        ("/v2/health/live/../../repository/index", Access.INFERENCE),  # no route: a 404 after the key check
    ],
)
def test_route_classes(path, access):
    assert required_access(path) is access


def test_no_keys_means_open():
    auth = Authenticator()
    assert not auth.enabled
    for required in Access:
        assert _denied(auth, required, None) is None


def test_api_and_admin_keys():
    auth = Authenticator(["inf"], ["adm"])
    assert _denied(auth, Access.OPEN, None) is None
    assert _denied(auth, Access.INFERENCE, None) == 401
    assert _denied(auth, Access.INFERENCE, "Bearer nope") == 401
    assert _denied(auth, Access.INFERENCE, "Basic inf") == 401
    assert _denied(auth, Access.INFERENCE, "Bearer inf") is None
    assert _denied(auth, Access.INFERENCE, "bearer  adm ") is None  # the admin key also authorizes inference
    assert _denied(auth, Access.ADMIN, None) == 401
    assert _denied(auth, Access.ADMIN, "Bearer nope") == 401
    assert _denied(auth, Access.ADMIN, "Bearer inf") == 403
    assert _denied(auth, Access.ADMIN, "Bearer adm") is None
    assert _denied(auth, Access.ADMIN, b"Bearer adm") is None


def test_api_key_alone_guards_the_admin_routes_too():
    auth = Authenticator(["inf"], [])
    assert _denied(auth, Access.ADMIN, None) == 401
    assert _denied(auth, Access.ADMIN, "Bearer inf") is None


def test_admin_key_alone_leaves_inference_open():
    auth = Authenticator([], ["adm"])
    assert _denied(auth, Access.INFERENCE, None) is None
    assert _denied(auth, Access.ADMIN, None) == 401
    assert _denied(auth, Access.ADMIN, "Bearer adm") is None


def test_several_keys_per_role():
    auth = Authenticator(["old", "new"], [])
    assert _denied(auth, Access.INFERENCE, "Bearer old") is None
    assert _denied(auth, Access.INFERENCE, "Bearer new") is None
    assert _denied(auth, Access.INFERENCE, "Bearer ne") == 401


def test_grpc_method_classes():
    svc = "/inference.GRPCInferenceService/"
    assert interceptors.required_access(f"{svc}ServerLive") is Access.OPEN
    assert interceptors.required_access("/grpc.health.v1.Health/Check") is Access.OPEN
    assert interceptors.required_access(f"{svc}ModelInfer") is Access.INFERENCE
    assert interceptors.required_access(f"{svc}ModelStreamInfer") is Access.INFERENCE
    assert interceptors.required_access(f"{svc}ModelReady") is Access.INFERENCE
    for name in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
        assert interceptors.required_access(f"{svc}{name}") is Access.ADMIN


# -- request ids -------------------------------------------------------------------------


def test_request_id_validation():
    assert logs.clean_request_id("abc-123") == "abc-123"
    assert logs.clean_request_id(b"abc 123") == "abc 123"
    assert logs.clean_request_id("x" * 128) == "x" * 128
    for bad in (None, "", "x" * 129, "a\nb", "caf\u00e9", b"\xff\xfe", "tab\there"):
        fresh = logs.clean_request_id(bad)
        assert len(fresh) == 32 and int(fresh, 16) >= 0


# -- the ASGI wrapper --------------------------------------------------------------------


class _StubApp:
    """Records whether it was called; answers 200, or raises for /boom."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.seen_ids: list[str | None] = []

    async def __call__(self, scope, receive, send) -> None:
        self.calls.append(scope["path"])
        self.seen_ids.append(logs.request_id.get())
        if scope["path"] == "/boom":
            raise RuntimeError("secret internals")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})


def _client(settings: Settings, app: _StubApp) -> httpx.AsyncClient:
    wrapped = security.wrap(app, settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped, raise_app_exceptions=False), base_url="http://t")


def _run(coro):
    return asyncio.run(coro)


def test_wrapper_refuses_before_the_app_sees_the_request():
    app = _StubApp()

    async def go():
        async with _client(Settings(api_key="inf", admin_key="adm"), app) as client:
            missing = await client.post("/v2/models/m/infer", content=b"x" * 1000)
            wrong = await client.get("/v2/models/m", headers={"Authorization": "Bearer nope"})
            forbidden = await client.post("/v2/repository/index", headers={"Authorization": "Bearer inf"})
            openai_401 = await client.get("/v1/models")
            health = await client.get("/v2/health/ready")
            ok = await client.get("/v2/models/m", headers={"Authorization": "Bearer inf", "X-Request-ID": "trace-1"})
            admin = await client.post("/v2/repository/index", headers={"Authorization": "Bearer adm"})
        return missing, wrong, forbidden, openai_401, health, ok, admin

    missing, wrong, forbidden, openai_401, health, ok, admin = _run(go())
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in missing.json()["error"]
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer error=")
    assert forbidden.status_code == 403 and "admin key" in forbidden.json()["error"]
    assert openai_401.status_code == 401
    assert openai_401.json()["error"]["code"] == "invalid_api_key" and openai_401.json()["error"]["type"] == "invalid_request_error"
    assert health.status_code == 200 and ok.status_code == 200 and admin.status_code == 200
    assert ok.headers["x-request-id"] == "trace-1"
    assert len(missing.headers["x-request-id"]) == 32
    assert app.calls == ["/v2/health/ready", "/v2/models/m", "/v2/repository/index"]
    assert app.seen_ids[1] == "trace-1"


def test_wrapper_hides_an_unexpected_error():
    app = _StubApp()

    async def go():
        async with _client(Settings(), app) as client:
            return await client.get("/boom")

    response = _run(go())
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error"}
    assert "secret" not in response.text and "Traceback" not in response.text


def test_a_route_that_raises_answers_json_without_its_traceback():
    from fastapi import FastAPI

    from server.frontends.http.app import _handle_unexpected_error

    api = FastAPI()
    api.add_exception_handler(Exception, _handle_unexpected_error)

    async def broken():
        raise RuntimeError("secret internals")

    api.add_api_route("/v1/models", broken)
    api.add_api_route("/v2/broken", broken)

    async def go():
        transport = httpx.ASGITransport(app=security.wrap(api, Settings()), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/v2/broken", headers={"X-Request-ID": "r500"}), await client.get("/v1/models")

    ours, openai_shape = _run(go())
    assert ours.status_code == 500 and ours.json() == {"error": "internal server error"}
    assert ours.headers["x-request-id"] == "r500"
    assert openai_shape.status_code == 500 and openai_shape.json()["error"]["message"] == "internal server error"
    assert "secret" not in ours.text + openai_shape.text


def test_cors_off_by_default_and_on_with_origins():
    async def preflight(settings: Settings) -> httpx.Response:
        async with _client(settings, _StubApp()) as client:
            return await client.options(
                "/v2/models/m/infer",
                headers={
                    "Origin": "https://app.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )

    off = _run(preflight(Settings(api_key="inf")))
    assert off.status_code == 401 and "access-control-allow-origin" not in off.headers
    on = _run(preflight(Settings(api_key="inf", cors_origins="https://app.example, https://other.example")))
    assert on.status_code == 200
    assert on.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in on.headers["access-control-allow-headers"].lower()
    other = _run(preflight(Settings(cors_origins="https://nope.example")))
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


# -- logs --------------------------------------------------------------------------------


def _record(message: str, **extra) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "levelno": logging.ERROR, "levelname": "ERROR", "msg": message, **extra})
    return record


def test_json_lines_carry_the_request_id_and_extras():
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(_record("failed %s", args=("x",), request_id="r1", model="m", exc_info=exc_info))
    entry = json.loads(line)
    assert entry["message"] == "failed x" and entry["request_id"] == "r1" and entry["model"] == "m"
    assert entry["level"] == "error" and "ValueError: bad" in entry["exception"]
    assert "\n" not in line


def test_text_lines_end_with_the_request_id_before_a_traceback():
    formatter = logs.TextFormatter()
    assert formatter.format(_record("plain")).endswith("t: plain")
    assert formatter.format(_record("in a request", request_id="r2")).endswith("in a request (request_id=r2)")


def test_access_lines_are_debug_in_text_and_info_in_json(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(logs, "ACCESS_LEVEL", logs.ACCESS_LEVEL)
    level = root.level
    try:
        logs.setup_logging("info", "text")
        assert not logs.access_enabled()
        logs.setup_logging("info", "json")
        assert logs.access_enabled()
        assert sum(getattr(h, "_deepserve", False) for h in root.handlers) == 1
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_deepserve", False)]:
            root.removeHandler(handler)
        root.setLevel(level)


# -- settings ----------------------------------------------------------------------------


def test_key_files_and_empty_variables(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("first\n\n  second  \n")
    settings = Settings(api_key="flag", api_key_file=keys)
    assert settings.api_keys() == ("flag", "first", "second")
    assert "flag" not in repr(settings)
    monkeypatch.setenv("DEEPSERVE_API_KEY", "")
    monkeypatch.setenv("DEEPSERVE_CORS_ORIGINS", "")
    assert Settings().api_keys() == () and Settings().cors_origin_list() == []
    with pytest.raises(ValueError, match="cannot read"):
        Settings(admin_key_file=tmp_path / "missing").admin_keys()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="holds no key"):
        Settings(admin_key_file=tmp_path / "empty").admin_keys()
    with pytest.raises(ValueError, match="visible ASCII"):
        Settings(api_key="two words").api_keys()
