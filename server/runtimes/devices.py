"""Device detection: one cached function that tests can monkeypatch."""

from __future__ import annotations

import functools


@functools.cache
def gpu_count() -> int:
    """Number of NVIDIA GPUs visible through NVML (0 without the driver or pynvml)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # ImportError, or NVMLError where there is no driver
        return 0
