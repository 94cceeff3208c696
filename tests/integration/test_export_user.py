"""``deepserve export model --module``: users' own networks (a small CNN with BatchNorm and a
residual; a GRU with a dynamic time axis) from a .py file, exported by the CLI, served by the
real server and compared over HTTP with the torch model's own outputs; and a broken module
that exits 2 and writes nothing."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from export.cli import root
from export.repository import read_config
from tests.integration.export_helpers import closeness as _closeness
from tests.integration.export_helpers import export as _export
from tests.integration.export_helpers import infer as _infer
from tests.integration.export_helpers import load_module as _load
from tests.integration.server_fixtures import running_server

USER_NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn(self.conv(x)))


    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.block = Block(8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.block(torch.relu(self.stem(x))).mean(dim=(2, 3)))


    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(8, 16, batch_first=True)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.head(out)


    def cnn():
        torch.manual_seed(0)
        return TinyCNN()


    def tagger():
        torch.manual_seed(1)
        return Tagger()


    def broken():
        return "not a network"
''')

LABELS = ["cat", "dog", "bird", "fish"]






@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("user_nets")
    nets = work / "user_nets.py"
    nets.write_text(USER_NETS)
    users = _load(nets)
    cnn = users.cnn().eval()
    # the CNN's weights come from a torch.save state dict (not the seeded init), with BN statistics
    with torch.no_grad():
        cnn.block.bn.running_mean.uniform_(-0.2, 0.2)
        cnn.block.bn.running_var.uniform_(0.5, 2.0)
    torch.save(cnn.state_dict(), work / "cnn.pt")
    (work / "labels.txt").write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(0)
    np.savez(work / "calib.npz", image=rng.uniform(-1, 1, (64, 3, 16, 16)).astype(np.float32))
    repo = work / "repo"
    outputs = {
        "cnn": _export(repo, "--module", f"{nets}:cnn", "--input", "image:batch,3,16,16", "--output", "logits",
                       "--name", "cnn", "--variants", "fp32,fp16,int8-static", "--weights", str(work / "cnn.pt"),
                       "--labels", str(work / "labels.txt"), "--calibration-data", str(work / "calib.npz")),
        "tagger": _export(repo, "--module", f"{nets}:tagger", "--input", "audio:batch,time,8:FP32", "--name", "tagger",
                          "--variants", "fp32,int8-dynamic"),
    }
    with running_server(repo) as server:
        yield server, {"cnn": cnn, "tagger": users.tagger().eval()}, outputs, nets






@pytest.mark.parametrize("model, atol", [("cnn", 1e-4), ("cnn_fp16", 2e-2), ("cnn_int8_static", None)])
def test_the_cnn_serves_what_torch_computes(served, model, atol) -> None:
    server, torch_nets, outputs, _ = served
    x = np.random.default_rng(5).uniform(-1, 1, (6, 3, 16, 16)).astype(np.float32)
    got = _infer(server, model, "image", x, "logits")
    with torch.no_grad():
        want = torch_nets["cnn"](torch.from_numpy(x)).numpy()
    assert got.shape == (6, 4)
    if atol is not None:  # the element-wise bars of fp32 and fp16
        np.testing.assert_allclose(got, want, atol=atol, rtol=atol)
    else:  # int8: the closeness bars it was checked against (10 % of max |fp32|, cosine >= 0.98)
        rel, cos = _closeness(got, want)
        assert rel <= 0.1 and cos >= 0.98, (rel, cos)
    assert "int8-static: PASS closeness to fp32 on 64 calibration inputs" in outputs["cnn"]
    assert "top-1 agreement" in outputs["cnn"]


def test_labels_make_classification_work(served) -> None:
    server, torch_nets, _, _ = served
    x = np.random.default_rng(6).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    top = _infer(server, "cnn", "image", x, "logits", class_count=1)[0][0]
    top = top.decode() if isinstance(top, bytes) else top
    with torch.no_grad():
        want = int(torch_nets["cnn"](torch.from_numpy(x)).argmax())
    assert top.split(":")[-1] == LABELS[want]


@pytest.mark.parametrize("model", ["tagger", "tagger_int8_dynamic"])
@pytest.mark.parametrize("time", [3, 20])
def test_the_gru_serves_any_sequence_length(served, model, time) -> None:
    server, torch_nets, outputs, _ = served
    config = read_config(server.repository / model)
    assert list(config.input[0].dims) == [-1, 8] and list(config.output[0].dims) == [-1, 5]
    x = np.random.default_rng(time).uniform(-1, 1, (2, time, 8)).astype(np.float32)
    got = _infer(server, model, "audio", x, "output")
    with torch.no_grad():
        want = torch_nets["tagger"](torch.from_numpy(x)).numpy()
    assert got.shape == (2, time, 5)
    if model == "tagger":
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    else:
        rel, cos = _closeness(got, want)
        assert rel <= 0.1 and cos >= 0.98, (rel, cos)
    assert "int8-dynamic: PASS closeness to fp32 on 256 random inputs" in outputs["tagger"]


def test_a_broken_module_exits_2_and_writes_nothing(served, tmp_path) -> None:
    *_, nets = served
    repo = tmp_path / "repo"
    result = CliRunner().invoke(root, ["export", "model", "--module", f"{nets}:broken", "--input", "x:batch,4",
                                       "-r", str(repo), "--name", "nope"])
    assert result.exit_code == 2
    assert "--module: broken() returned str, not a torch.nn.Module" in result.output
    assert "Traceback" not in result.output and not repo.exists()
