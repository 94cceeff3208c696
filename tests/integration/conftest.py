"""A real server on loopback, for the HTTP tests: the default digits model plus tiny
ONNX models built with ``onnx.helper`` (see ``server_fixtures`` for those)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.integration import server_fixtures as fx

BOUNDED_CONFIG = """
name: "bounded"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "INPUT_OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 30000000
  default_queue_policy { max_queue_size: 4 allow_timeout_override: true }
}
"""


def build_http_repository(repo: Path) -> Path:
    from export.default_repository import build_default_repository

    build_default_repository(repo)
    fx.build_repository(repo)
    fx._save(fx.identity_model({"INPUT": (fx.TensorProto.FLOAT, ["batch", 4])}), repo / "bounded" / "1" / "model.onnx")
    (repo / "bounded" / "config.pbtxt").write_text(BOUNDED_CONFIG)
    # No config at all: auto-completed from the graph (batching, since every axis 0 is dynamic).
    fx._save(fx.identity_model({"TEXT": (fx.TensorProto.STRING, ["batch", 1])}), repo / "strings" / "1" / "model.onnx")
    return repo


def add_broken_model(repo: Path) -> None:
    """A model whose config names an input its file does not have."""
    fx.write_simple(repo, "broken")
    (repo / "broken" / "config.pbtxt").write_text(
        fx.SIMPLE_CONFIG.format(name="broken").replace('name: "INPUT1"', 'name: "NOT_IN_FILE"')
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[fx.ServerHandle]:
    """A server of the tiny models only, one per test module (their statistics stay apart)."""
    repo = fx.build_repository(tmp_path_factory.mktemp("tiny-repo"))
    with fx.running_server(repo) as handle:
        yield handle
        assert "Traceback" not in handle.log(), handle.log()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory) -> Iterator[fx.ServerHandle]:
    repo = build_http_repository(tmp_path_factory.mktemp("repo"))
    with fx.running_server(repo) as handle:
        yield handle


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits as the default model takes them: (N, 1, 8, 8) float32 in [0, 1]."""
    from models.digits_data import load_split

    split = load_split()
    return split.x_test, split.y_test
