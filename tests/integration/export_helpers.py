"""What the user-export integration tests share: the CLI, a served FP32 call, closeness."""

from __future__ import annotations

import importlib.util

import numpy as np
import tritonclient.http as httpclient
from typer.testing import CliRunner

from export.cli import root


def load_module(path):
    """A network file written by a test, imported as a module (its build functions)."""
    spec = importlib.util.spec_from_file_location("user_nets_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(repo, *args) -> str:
    """``deepserve export model -r REPO ARGS``, which must succeed; its output."""
    result = CliRunner().invoke(root, ["export", "model", "-r", str(repo), *args])
    assert result.exit_code == 0, result.output
    return result.output


def infer(server, model, name, x, output, **kw):
    """One FP32 input through tritonclient HTTP (binary data); the named output."""
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready(model)
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(output, binary_data=True, **kw)])
    return result.as_numpy(output)


def closeness(got, want) -> tuple[float, float]:
    """(max |err| / max |want|, worst per-sample cosine)."""
    g, w = got.reshape(len(got), -1), want.reshape(len(want), -1)
    cos = (g * w).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1))
    return float(np.abs(got - want).max() / np.abs(want).max()), float(cos.min())
