"""`deepserve serve --help` documents every knob with its DEEPSERVE_* variable; flags beat env."""

from __future__ import annotations

from typer.testing import CliRunner

from server.cli import app
from server.settings import Settings


def test_help_names_every_setting_and_its_environment_variable():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for field in Settings.model_fields:
        if field == "build_default_repository":
            continue  # not a serve flag: only the environment turns it off
        assert f"DEEPSERVE_{field.upper()}" in text, field


def test_environment_then_flags(monkeypatch):
    monkeypatch.setenv("DEEPSERVE_HTTP_PORT", "9100")
    monkeypatch.setenv("DEEPSERVE_GRPC_PORT", "9101")
    assert Settings().http_port == 9100
    assert Settings(grpc_port=9200).grpc_port == 9200
