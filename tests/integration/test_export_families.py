"""The seeds' architecture families as users' own networks (``deepserve export model --module``):
a ResNet-style CNN (BatchNorm, residuals, a 1x1 projection shortcut), a bidirectional LSTM
tagger with a dynamic time axis, a transformer encoder with a key-padding mask and a dynamic
sequence length, and a conv autoencoder. Each is exported by the CLI in fp32, fp16 (float32
I/O kept), int8 and, where it applies, pruned50; one server serves them all, and what it
answers is compared with the torch network's own outputs over HTTP and gRPC. A network
whose activations are badly scaled fails its int8 bar, with the numbers, and writes nothing.

The ResNet and the autoencoder are built with half of each layer's channels small (what a
network trained with a channel-sparsity penalty looks like), so structured pruning without
a fine-tune recipe stays within its closeness bar; seeded random weights otherwise.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from typer.testing import CliRunner

from export.cli import root
from export.repository import read_config
from tests.integration.export_helpers import closeness as _closeness
from tests.integration.export_helpers import export as _export
from tests.integration.export_helpers import load_module as _load
from tests.integration.server_fixtures import running_server

NETS = textwrap.dedent('''
    import torch
    from torch import nn


    def sparse_channels(module):
        """Half the output channels of every layer but the head made 50x smaller."""
        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)) and m is not module.head:
                    axis = 1 if isinstance(m, nn.ConvTranspose2d) else 0  # ConvTranspose2d is (in, out, k, k)
                    n = m.weight.shape[axis]
                    m.weight.narrow(axis, n // 2, n - n // 2).mul_(0.02)
                    if m.bias is not None:
                        m.bias[n // 2:] *= 0.02
        return module


    class Residual(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


    class ResNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.block1 = Residual(16, 16, 1)
            self.block2 = Residual(16, 32, 2)  # the 1x1 projection shortcut
            self.head = nn.Linear(32, classes)

        def forward(self, x):  # (B, 3, 32, 32)
            x = self.block2(self.block1(self.stem(x)))  # (B, 32, 16, 16)
            return self.head(x.mean(dim=(2, 3)))  # (B, classes)


    class Tagger(nn.Module):
        def __init__(self, features=20, hidden=24, classes=6):
            super().__init__()
            self.rnn = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * hidden, classes)

        def forward(self, x):  # (B, T, 20)
            out, _ = self.rnn(x)  # (B, T, 2 * hidden)
            return self.head(out)  # (B, T, classes)


    class Encoder(nn.Module):
        def __init__(self, vocab=50, d_model=32, classes=4):
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(torch.randn(64, d_model) * 0.1)
            layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, classes)

        def forward(self, tokens, mask):  # (B, S) token ids, (B, S) 1 = a real token, 0 = padding
            keep = mask.bool()
            keep[:, 0] = True  # the first token always attends (a row with every key masked is NaN)
            x = self.embed(tokens) + self.pos[: tokens.shape[1]]  # (B, S, D)
            x = self.encoder(x, src_key_padding_mask=~keep)  # (B, S, D)
            w = keep.unsqueeze(-1).to(x.dtype)
            return self.head((x * w).sum(1) / w.sum(1))  # mean over real tokens -> (B, classes)


    class AutoEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
            self.dec = nn.Sequential(nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU())
            self.head = nn.ConvTranspose2d(16, 1, 4, 2, 1)

        def forward(self, x):  # (B, 1, 16, 16)
            code = self.enc(x)  # (B, 32, 4, 4)
            return torch.sigmoid(self.head(self.dec(code)))  # (B, 1, 16, 16)


    class Outliers(nn.Module):
        """Two hidden units 1e4 times larger than the rest, undone by the next layer: per-tensor
        int8 activations lose every small unit, the output is mostly those."""

        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(16, 32)
            self.fc2 = nn.Linear(32, 8)
            with torch.no_grad():
                self.fc1.weight[:2] *= 1e4
                self.fc1.bias[:2] *= 1e4
                self.fc2.weight[:, :2] *= 1e-4

        def forward(self, x):  # (B, 16)
            return self.fc2(torch.relu(self.fc1(x)))  # (B, 8)


    def resnet():
        torch.manual_seed(0)
        return sparse_channels(ResNet())


    def tagger():
        torch.manual_seed(1)
        return Tagger()


    def encoder():
        torch.manual_seed(2)
        return Encoder()


    def autoencoder():
        torch.manual_seed(3)
        return sparse_channels(AutoEncoder())


    def outliers():
        torch.manual_seed(4)
        return Outliers()
''')

VOCAB, SEQ = 50, 10
TAGGER_INPUT = "audio:batch,time,20:FP32"
ENCODER_INPUTS = ("--input", "tokens:batch,seq:INT64", "--input", "mask:batch,seq:INT64")
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


def _padding_mask(rng, n: int, seq: int) -> np.ndarray:
    """(n, seq) int64: 1 for each row's first 3..seq tokens, 0 for the padding after them."""
    return (np.arange(seq)[None] < rng.integers(3, seq + 1, (n, 1))).astype(np.int64)


def _write_data(work) -> None:
    rng = np.random.default_rng(0)
    np.savez(work / "resnet.npz", image=rng.uniform(-1, 1, (64, 3, 32, 32)).astype(np.float32))
    np.savez(work / "tagger.npz", audio=rng.normal(0, 1, (32, 12, 20)).astype(np.float32))
    np.savez(work / "encoder.npz", tokens=rng.integers(0, VOCAB, (64, SEQ)), mask=_padding_mask(rng, 64, SEQ))
    np.savez(work / "autoencoder.npz", image=rng.uniform(0, 1, (64, 1, 16, 16)).astype(np.float32))
    np.savez(work / "outliers.npz", x=rng.uniform(-1, 1, (64, 16)).astype(np.float32))


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Every family exported into one repository by the CLI, one server on it:
    (server, torch nets by name, CLI output by name, work folder)."""
    work = tmp_path_factory.mktemp("families")
    nets = work / "families.py"
    nets.write_text(NETS)
    _write_data(work)
    repo = work / "repo"
    module = lambda func: ("--module", f"{nets}:{func}")
    outputs = {
        "resnet": _export(repo, *module("resnet"), "--input", "image:batch,3,32,32", "--output", "logits",
                          "--name", "resnet", "--variants", "fp32,fp16,int8-static,pruned50",
                          "--calibration-data", str(work / "resnet.npz")),
        "tagger": _export(repo, *module("tagger"), "--input", TAGGER_INPUT, "--output", "frames", "--name", "tagger",
                          "--variants", "fp32,int8-dynamic", "--calibration-data", str(work / "tagger.npz")),
        "encoder": _export(repo, *module("encoder"), *ENCODER_INPUTS, "--output", "logits", "--name", "encoder",
                           "--variants", "fp32,fp16,int8-dynamic", "--calibration-data", str(work / "encoder.npz")),
        "autoencoder": _export(repo, *module("autoencoder"), "--input", "image:batch,1,16,16", "--output", "recon",
                               "--name", "autoencoder", "--variants", "fp32,fp16,int8-static,pruned50",
                               "--calibration-data", str(work / "autoencoder.npz")),
    }
    users = _load(nets)
    torch_nets = {name: getattr(users, name)().eval() for name in ("resnet", "tagger", "encoder", "autoencoder")}
    with running_server(repo) as server:
        yield server, torch_nets, outputs, work
        assert "Traceback" not in server.log(), server.log()


def _infer(server, protocol: str, model: str, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
    client_lib = PROTOCOLS[protocol]
    client = client_lib.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    assert client.is_model_ready(model)
    inputs = []
    for name, x in feed.items():
        tensor = client_lib.InferInput(name, list(x.shape), "INT64" if x.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(x)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[client_lib.InferRequestedOutput(output)])
    return result.as_numpy(output)


def _torch(net, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(*(torch.from_numpy(a) for a in arrays)).numpy()


def _compare(got: np.ndarray, want: np.ndarray, variant: str) -> None:
    """fp32 / fp16: element-wise (the export's own bars); lossy variants: the closeness bars."""
    assert got.shape == want.shape
    if variant in ("fp32", "fp16"):
        tol = 1e-4 if variant == "fp32" else 2e-2
        np.testing.assert_allclose(got, want, atol=tol * max(1.0, float(np.abs(want).max())), rtol=tol)
    else:
        rel, cos = _closeness(got, want)
        max_rel, min_cos = (0.1, 0.98) if variant.startswith("int8") else (0.3, 0.9)
        assert rel <= max_rel and cos >= min_cos, (variant, rel, cos)


def _variant(model: str) -> str:
    suffix = model.partition("_")[2]
    return suffix.replace("_", "-") if suffix else "fp32"


# -- ResNet ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model, protocol, batch", [
    ("resnet", "http", 1), ("resnet_fp16", "grpc", 5), ("resnet_int8_static", "http", 8),
    ("resnet_pruned50", "grpc", 3),
])
def test_the_resnet_serves_what_torch_computes(families, model, protocol, batch) -> None:
    server, nets, outputs, _ = families
    x = np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
    got = _infer(server, protocol, model, {"image": x}, "logits")
    _compare(got, _torch(nets["resnet"], x), _variant(model))  # pruned50: against the un-pruned net
    assert f"{_variant(model)}: PASS" in outputs["resnet"]


def test_the_pruned_resnet_is_smaller(families) -> None:
    server, *_ = families
    sizes = {m: (server.repository / m / "1" / "model.onnx").stat().st_size for m in ("resnet", "resnet_pruned50")}
    assert sizes["resnet_pruned50"] < 0.5 * sizes["resnet"], sizes  # half the channels: about a quarter the weights


# -- LSTM tagger ----------------------------------------------------------------------------

@pytest.mark.parametrize("model, protocol", [("tagger", "http"), ("tagger_int8_dynamic", "grpc")])
@pytest.mark.parametrize("batch, time", [(1, 3), (3, 17)])
def test_the_lstm_serves_any_sequence_length(families, model, protocol, batch, time) -> None:
    server, nets, outputs, _ = families
    config = read_config(server.repository / model)
    assert list(config.input[0].dims) == [-1, 20] and list(config.output[0].dims) == [-1, 6]
    x = np.random.default_rng(time).normal(0, 1, (batch, time, 20)).astype(np.float32)
    got = _infer(server, protocol, model, {"audio": x}, "frames")
    assert got.shape == (batch, time, 6)
    _compare(got, _torch(nets["tagger"], x), _variant(model))
    assert "int8-dynamic: PASS closeness to fp32 on 32 calibration inputs" in outputs["tagger"]


def test_fp16_of_a_recurrent_network_is_refused(families, tmp_path) -> None:
    *_, work = families
    repo = tmp_path / "repo"
    result = CliRunner().invoke(root, ["export", "model", "--module", f"{work / 'families.py'}:tagger", "--input",
                                       TAGGER_INPUT, "-r", str(repo), "--name", "tagger", "--variants", "fp32,fp16"])
    assert result.exit_code == 2, result.output
    assert "--variants fp16: the graph has LSTM" in result.output and "leave fp16 out" in result.output
    assert not repo.exists()


# -- transformer encoder --------------------------------------------------------------------

@pytest.mark.parametrize("model, protocol", [("encoder", "grpc"), ("encoder_fp16", "http"),
                                             ("encoder_int8_dynamic", "grpc")])
@pytest.mark.parametrize("batch, seq", [(2, 6), (5, 13)])
def test_the_encoder_serves_any_sequence_length_with_padding(families, model, protocol, batch, seq) -> None:
    server, nets, _, _ = families
    rng = np.random.default_rng(seq)
    tokens, mask = rng.integers(0, VOCAB, (batch, seq)), _padding_mask(rng, batch, seq)
    assert (mask == 0).any()  # some rows are padded
    got = _infer(server, protocol, model, {"tokens": tokens, "mask": mask}, "logits")
    assert got.shape == (batch, 4)
    _compare(got, _torch(nets["encoder"], tokens, mask), _variant(model))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_padding_does_not_change_the_pooled_output(families, protocol) -> None:
    """A row padded to 12 tokens (any ids in the padding) answers as the same row unpadded."""
    server, *_ = families
    rng = np.random.default_rng(7)
    short = rng.integers(0, VOCAB, (1, 5))
    padded = np.concatenate([np.repeat(short, 2, axis=0), rng.integers(0, VOCAB, (2, 7))], axis=1)  # (2, 12)
    mask = np.array([[1] * 5 + [0] * 7] * 2, np.int64)
    alone = _infer(server, protocol, "encoder", {"tokens": short, "mask": np.ones_like(short)}, "logits")
    both = _infer(server, protocol, "encoder", {"tokens": padded, "mask": mask}, "logits")
    assert np.abs(alone).max() > 1e-2  # not trivially zero
    np.testing.assert_allclose(both, np.repeat(alone, 2, axis=0), atol=1e-4, rtol=1e-4)
    unmasked = _infer(server, protocol, "encoder", {"tokens": padded, "mask": np.ones_like(mask)}, "logits")
    assert np.abs(unmasked - both).max() > 1e-3  # the mask is what hides the padding


# -- autoencoder ----------------------------------------------------------------------------

@pytest.mark.parametrize("model, protocol, batch", [
    ("autoencoder", "grpc", 4), ("autoencoder_fp16", "http", 1), ("autoencoder_int8_static", "grpc", 6),
    ("autoencoder_pruned50", "http", 2),
])
def test_the_autoencoder_reconstructs_as_torch_does(families, model, protocol, batch) -> None:
    server, nets, outputs, _ = families
    x = np.random.default_rng(batch).uniform(0, 1, (batch, 1, 16, 16)).astype(np.float32)
    got = _infer(server, protocol, model, {"image": x}, "recon")
    assert got.shape == (batch, 1, 16, 16)
    _compare(got, _torch(nets["autoencoder"], x), _variant(model))
    assert f"{_variant(model)}: PASS" in outputs["autoencoder"]


# -- what does not export -------------------------------------------------------------------

def test_an_int8_of_badly_scaled_activations_fails_with_the_numbers(families, tmp_path) -> None:
    *_, work = families
    repo = tmp_path / "repo"
    result = CliRunner().invoke(root, [
        "export", "model", "--module", f"{work / 'families.py'}:outliers", "--input", "x:batch,16",
        "-r", str(repo), "--name", "outliers", "--variants", "fp32,int8-static",
        "--calibration-data", str(work / "outliers.npz")])
    assert result.exit_code == 1, result.output
    assert "fp32: PASS element-wise" in result.output  # the network itself exports faithfully
    assert "parity failed; nothing written" in result.output
    line = next(s for s in result.output.splitlines() if "int8-static: FAIL closeness" in s)
    rel = float(re.search(r"max \|err\| \S+ \(([\d.]+) % of max \|fp32\|\)", line).group(1))
    cosine = float(re.search(r"worst cosine (-?[\d.]+)", line).group(1))
    assert rel > 10 and cosine < 0.98, line  # the bars it names: 10 % and 0.98
    assert not (repo / "outliers").exists() and not (repo / "outliers_int8_static").exists()


def test_a_bool_attention_mask_exports(families, tmp_path) -> None:
    *_, work = families
    result = CliRunner().invoke(root, [
        "export", "model", "--module", f"{work / 'families.py'}:encoder", "--input", "tokens:batch,seq:INT64",
        "--input", "mask:batch,seq:BOOL", "-r", str(tmp_path / "repo"), "--name", "encoder"])
    assert result.exit_code == 0, result.output
    config = (tmp_path / "repo" / "encoder" / "config.pbtxt").read_text()
    assert "TYPE_BOOL" in config and "fp32: PASS element-wise" in result.output


def test_pruning_a_network_torch_pruning_cannot_handle_is_a_usage_error(families, tmp_path) -> None:
    *_, work = families
    repo = tmp_path / "repo"
    result = CliRunner().invoke(root, [
        "export", "model", "--module", f"{work / 'families.py'}:tagger", "--input", TAGGER_INPUT,
        "-r", str(repo), "--name", "tagger", "--variants", "pruned50"])
    assert result.exit_code == 2 and "pruned50" in result.output, (result.exit_code, result.output)
    assert not repo.exists()
