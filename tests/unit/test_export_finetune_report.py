"""Pruning's fine-tune hook (``--finetune``) and the variant report (``--report``) of a
user's network: the function really runs and its effect is judged; the report's numbers
come from the artifacts."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from export.cli import root
from export.finetune import builtin_finetune
from export.spec import ExportSpec, IOSpec

NET = textwrap.dedent('''
    import torch
    from torch import nn

    def build():
        """Trained here (seeded, a second): labels are the argmax of x @ W, as in the test's data."""
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        x = torch.randn(4096, 8)
        y = (x @ torch.randn(8, 4, generator=torch.Generator().manual_seed(123))).argmax(1)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(300):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net.eval()

    def zero_everything(module):
        with torch.no_grad():
            for p in module.parameters():
                p.zero_()

    def broken(module):
        raise ValueError("no data here")
''')


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four classes a linear rule separates: the label is the argmax of x @ W for a fixed W."""
    x = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    w = torch.randn(8, 4, generator=torch.Generator().manual_seed(123)).numpy()
    return x, (x @ w).argmax(axis=1).astype(np.int64)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    x, y = _data(512, 1)
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    np.save(tmp_path / "calib.npy", x[:128])
    return tmp_path


def _export(files, *args):
    return CliRunner().invoke(root, ["export", "model", "--module", f"{files}/net.py:build", "--input", "x:batch,8",
                                     "-r", str(files / "repo"), "--name", "mlp", *args])


def test_builtin_finetune_learns_the_labels() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x, y = _data(1024, 2)
    spec = ExportSpec(inputs=(IOSpec("x", ("batch", 8)),), outputs=(IOSpec("logits", ("batch", 4)),))

    def accuracy() -> float:
        with torch.no_grad():
            return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())

    before = accuracy()
    assert builtin_finetune((({"x": x}), y), spec)(net) is net and not net.training
    assert before < 0.5 and accuracy() > before + 0.3


def test_a_users_finetune_runs_and_its_result_is_judged(files) -> None:
    result = _export(files, "--variants", "pruned50", "--calibration-data", f"{files}/calib.npy",
                     "--finetune", f"{files}/net.py:zero_everything")
    assert result.exit_code == 1, result.output  # zeroed weights: the pruned net no longer matches fp32
    assert "pruned50: FAIL closeness" in result.output and "cosine" in result.output
    assert not (files / "repo").exists()


@pytest.mark.parametrize("args, words", [
    (["--variants", "pruned50", "--finetune", "builtin"], "--finetune builtin trains on --eval-data"),
    (["--variants", "fp32", "--finetune", "builtin"], "--finetune fine-tunes a pruned network"),
    (["--variants", "pruned50", "--finetune", "{dir}/net.py:absent"], "--finetune: {dir}/net.py has no function"),
    (["--variants", "pruned50", "--finetune", "{dir}/net.py:broken"], "--finetune: broken(module) raised ValueError"),
])
def test_bad_finetune_flags_exit_2_naming_the_flag(files, args, words) -> None:
    result = _export(files, *[a.format(dir=files) for a in args])
    assert result.exit_code == 2, result.output
    assert words.format(dir=files) in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (files / "repo").exists()


def test_the_report_measures_the_written_variants_against_an_fp32_baseline(files) -> None:
    report = files / "out" / "mlp.md"
    result = _export(files, "--variants", "int8-dynamic,pruned50", "--eval-data", f"{files}/eval.npz",
                     "--finetune", "builtin", "--report", str(report))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (files / "repo").iterdir()) == ["mlp_int8_dynamic", "mlp_pruned50"]
    data = json.loads(report.with_suffix(".json").read_text())
    rows = {r["variant"]: r for r in data["variants"]}
    assert list(rows) == ["fp32", "int8-dynamic", "pruned50"] and data["preferred_batch"] == 32
    base, int8, pruned = rows["fp32"], rows["int8-dynamic"], rows["pruned50"]
    assert base["max_abs_err"] < 1e-4 and base["cosine"] > 0.9999 and base["top1_agreement"] == 1.0
    assert int8["size_bytes"] < base["size_bytes"] and int8["max_abs_err"] > base["max_abs_err"] and int8["cosine"] > 0.98
    assert pruned["params"] < 0.6 * base["params"] and pruned["flops"] < 0.6 * base["flops"]
    for row in rows.values():
        assert row["p50_b1_ms"] > 0 and row["throughput"] > 0 and row["parity"] == "PASS"
        assert row["metric"] is not None and abs(row["metric"] - base["metric"]) <= 0.02
    text = report.read_text()
    assert "| pruned50 |" in text and "--report" in text and "worst cosine" in text
