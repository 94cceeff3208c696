"""Dependencies point one way, and the serving path never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    return set(out.stdout.split())


def test_batcher_imports_neither_fastapi_nor_onnxruntime():
    modules = imported_after("import server.scheduling.batcher, server.scheduling.queue")
    assert not {"fastapi", "onnxruntime", "grpc", "torch"} & modules


@pytest.mark.parametrize("module", ["server.serve", "server.runtimes.onnxruntime", "server.cli"])
def test_serving_onnx_never_imports_torch(module):
    assert "torch" not in imported_after(f"import {module}")


def test_core_imports_no_frontend_and_no_runtime():
    modules = imported_after("import server.core.types, server.core.validation, server.core.datatypes")
    assert not {"fastapi", "grpc", "onnxruntime", "server.frontends", "server.scheduling"} & modules
