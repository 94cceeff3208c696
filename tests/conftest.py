"""Tests are marked by folder: everything under tests/gpu carries the `gpu` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

GPU_DIR = Path(__file__).parent / "gpu"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if GPU_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
