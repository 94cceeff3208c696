"""``deepserve export model`` and ``deepserve models``: written entries, exit codes, numbers."""

from __future__ import annotations

from typer.testing import CliRunner

from export import spec as spec_module
from export.cli import root
from export.repository import read_config


def test_export_model_writes_checked_variants(tmp_path) -> None:
    result = CliRunner().invoke(root, ["export", "model", "mlp_tiny", "-r", str(tmp_path), "--variants", "fp32,int8-static",
                                       "--name", "mlp", "--version", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mlp" / "3" / "model.onnx").is_file()
    config = read_config(tmp_path / "mlp_int8_static")
    assert config.parameters["deepserve_variant"].string_value == "int8-static"
    assert "PASS" in result.output


def test_failed_parity_exits_1_with_the_numbers_and_writes_nothing(tmp_path, monkeypatch) -> None:
    impossible = spec_module.MetricTolerance(max_metric_drop=0.0, min_top1_agreement=1.01)
    monkeypatch.setitem(spec_module.METRIC_TOLERANCES, "int8-static", impossible)
    result = CliRunner().invoke(root, ["export", "model", "digits", "-r", str(tmp_path), "--variants", "int8-static"])
    assert result.exit_code == 1
    assert "parity failed, not written" in result.output and "top-1 agreement 1.0000" in result.output
    assert not (tmp_path / "digits_int8_static").exists()


def test_unknown_variant_is_a_usage_error(tmp_path) -> None:
    result = CliRunner().invoke(root, ["export", "model", "digits", "-r", str(tmp_path), "--variants", "int4"])
    assert result.exit_code == 2 and "unknown variant" in result.output


def test_export_with_a_task_writes_the_ensemble_around_the_network(tmp_path) -> None:
    from server.repository.config import read_config as read_model_config
    from server.scheduling.policy import ensemble_plan_from_config

    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    result = CliRunner().invoke(root, ["export", "model", "digits", "-r", str(tmp_path / "repo"), "--name", "mine",
                                       "--task", "classify", "--labels", str(labels), "--preprocess", "processor=image.digit"])
    assert result.exit_code == 0, result.output
    ensemble = read_model_config(tmp_path / "repo" / "mine_classify")
    plan = ensemble_plan_from_config(ensemble)
    assert plan.models == ("mine_classify_pre", "mine", "mine_classify_topk")
    assert ensemble.parameters["task"].string_value == "classify"
    assert (tmp_path / "repo" / "mine_classify_topk" / "1" / "labels.txt").read_text().startswith("digit 0")
    bad = CliRunner().invoke(root, ["export", "model", "digits", "-r", str(tmp_path / "repo"), "--task", "segment"])
    assert bad.exit_code == 2 and "classify or detect" in bad.output
