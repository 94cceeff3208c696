"""The server keeps numpy's BLAS on the calling thread unless the environment sets a count
(checked in a fresh interpreter: the limit is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from server.serve import BLAS_THREAD_VARIABLES

PROBE = (
    "import numpy, json; from threadpoolctl import threadpool_info; from server.serve import limit_blas_threads; "
    "limit_blas_threads(); print(json.dumps([p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']))"
)


def blas_threads(**env: str) -> list[int]:
    clean = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: BLAS has one thread anyway")
def test_numpy_blas_runs_on_one_thread_in_the_server_unless_the_operator_says() -> None:
    assert blas_threads() == [1]
    assert blas_threads(OPENBLAS_NUM_THREADS="2") == [2]
