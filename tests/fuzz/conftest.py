"""The fuzzing suite's server, example counts, health check and results file.

Bounded by default (part of ``make test``); ``make fuzz`` scales every example count with
``DEEPSERVE_FUZZ_SCALE`` and writes the figures to ``tests/fuzz/results/fuzz-<date>.json``
(``DEEPSERVE_FUZZ_RESULTS=1``).

The server serves the tiny models of ``tests/integration/server_fixtures`` that answer at
once (``queued``, with its 20 s batching delay, is left out), plus ``strings``, a
config-less BYTES model (auto-completed).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tests.integration import server_fixtures as fx

RESULTS_DIR = Path(__file__).parent / "results"
SCALE = float(os.environ.get("DEEPSERVE_FUZZ_SCALE", "1"))
RECORD = os.environ.get("DEEPSERVE_FUZZ_RESULTS", "") not in ("", "0")


def examples(bounded: int) -> int:
    """The example count for a test: ``bounded`` in the suite, scaled by ``make fuzz``."""
    return max(1, round(bounded * SCALE))


def fuzz_settings(bounded: int) -> settings:
    return settings(
        max_examples=examples(bounded),
        deadline=None,
        database=None,  # nothing written into the work tree; failures print their reproducer
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


class Tally:
    """Cases run per target and how many got a server error (5xx other than 503, INTERNAL / UNKNOWN)."""

    def __init__(self) -> None:
        self.cases: Counter[str] = Counter()
        self.server_errors: Counter[str] = Counter()
        self.statuses: dict[str, Counter[str]] = {}

    def record(self, target: str, status: int | str, server_error: bool) -> None:
        self.cases[target] += 1
        self.statuses.setdefault(target, Counter())[str(status)] += 1
        if server_error:
            self.server_errors[target] += 1


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=fx.ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@pytest.fixture(scope="session")
def tally() -> Iterator[Tally]:
    tally = Tally()
    started, wall = datetime.datetime.now(datetime.UTC), time.monotonic()
    yield tally
    if not RECORD:
        return
    duration = time.monotonic() - wall
    targets = {
        name: {
            "cases": tally.cases[name],
            "server_errors": tally.server_errors[name],
            "statuses": dict(sorted(tally.statuses[name].items())),
        }
        for name in sorted(tally.cases)
    }
    result = {
        "date": started.strftime("%Y-%m-%d"),
        "started_utc": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "commit": _git("rev-parse", "HEAD"),
        "worktree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "scale": SCALE,
        "total_cases": sum(tally.cases.values()),
        "total_server_errors": sum(tally.server_errors.values()),
        "targets": targets,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"fuzz-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")


def build_fuzz_repository(repo: Path) -> Path:
    fx.build_repository(repo)
    for entry in (repo / "queued").rglob("*"):
        if entry.is_file():
            entry.unlink()
    for entry in sorted((repo / "queued").rglob("*"), reverse=True):
        entry.rmdir()
    (repo / "queued").rmdir()
    fx._save(fx.identity_model({"TEXT": (fx.TensorProto.STRING, ["batch", 1])}), repo / "strings" / "1" / "model.onnx")
    return repo


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory, tally: Tally) -> Iterator[fx.ServerHandle]:
    """One server for the whole fuzzing session; healthy and clean when it ends."""
    repo = build_fuzz_repository(tmp_path_factory.mktemp("fuzz-repo"))
    with fx.running_server(repo) as handle:
        yield handle
        assert_healthy(handle)
        log = handle.log()
        assert "Traceback" not in log, log[-20000:]


def assert_healthy(server: fx.ServerHandle) -> None:
    """Live, ready, and a correct inference over HTTP and gRPC."""
    import tritonclient.grpc as grpcclient

    base = f"http://{server.http_url}"
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{base}/v2/health/live").status_code == 200
        assert client.get(f"{base}/v2/health/ready").status_code == 200
        a = np.arange(16, dtype=np.float32).reshape(1, 16)
        body = {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a.ravel().tolist()},
                {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": np.ones(16).tolist()},
            ]
        }
        response = client.post(f"{base}/v2/models/simple/infer", json=body)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs["OUTPUT0"] == (a.ravel() + 1).tolist()
        assert outputs["OUTPUT1"] == (a.ravel() - 1).tolist()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_server_live() and client.is_server_ready()
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(np.ones((1, 16), np.float32))
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
