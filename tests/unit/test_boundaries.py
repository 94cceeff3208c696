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


def test_schedulers_import_neither_fastapi_nor_a_device_library():
    modules = imported_after("import server.scheduling.batcher, server.scheduling.queue, server.scheduling.ensemble, "
                             "server.scheduling.diffusion")
    assert not {"fastapi", "onnxruntime", "grpc", "torch", "server.repository", "server.service"} & modules


@pytest.mark.parametrize("module", ["server.runtimes.python", "server.runtimes.torch", "server.service"])
def test_python_and_torch_runtimes_import_their_heavy_packages_only_when_a_model_loads(module):
    assert not {"torch", "PIL", "server.pipelines.image"} & imported_after(f"import {module}")


def test_frontends_never_import_a_loaded_model_or_a_scheduler_directly():
    import ast
    from pathlib import Path

    for path in (Path(__file__).resolve().parents[2] / "server" / "frontends").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("server.scheduling", "server.runtimes", "server.repository.loaded",
                                                   "server.repository.model", "server.repository.manager")), (path, node.module)


@pytest.mark.parametrize("module", ["server.serve", "server.runtimes.onnxruntime", "server.cli"])
def test_serving_onnx_never_imports_torch(module):
    assert "torch" not in imported_after(f"import {module}")


def test_core_imports_no_frontend_and_no_runtime():
    modules = imported_after("import server.core.types, server.core.validation, server.core.datatypes")
    assert not {"fastapi", "grpc", "onnxruntime", "server.frontends", "server.scheduling"} & modules
