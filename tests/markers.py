"""GPU markers, defined once. Device detection is one cached function tests can monkeypatch."""

from __future__ import annotations

import functools
import importlib.util
import shutil

import pytest


@functools.cache
def cuda_available() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


@functools.cache
def tensorrt_available() -> bool:
    return shutil.which("nvidia-smi") is not None and importlib.util.find_spec("tensorrt") is not None


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU and onnxruntime-gpu")
requires_tensorrt = pytest.mark.skipif(not tensorrt_available(), reason="needs an NVIDIA GPU and the tensorrt package")


@functools.cache
def torch_cuda_available() -> bool:
    if shutil.which("nvidia-smi") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


requires_torch_cuda = pytest.mark.skipif(not torch_cuda_available(), reason="needs an NVIDIA GPU and a CUDA build of torch")
