"""The PyTorch runtime on CUDA: the digits program placed on the GPU answers as on the CPU,
within the fp32 parity tolerance (GPU machines only)."""

from __future__ import annotations

import numpy as np
import torch

from export.spec import ELEMENTWISE_TOLERANCES
from export.torch_program import write_torch_program
from models import digits_cnn
from models.digits_data import load_split
from server.runtimes import torch as torch_runtime
from server.runtimes.base import RuntimeOptions
from tests.markers import requires_torch_cuda

pytestmark = requires_torch_cuda


def test_program_on_cuda_matches_the_cpu(tmp_path):
    path = tmp_path / "model.pt2"
    write_torch_program(digits_cnn.load().eval(), (torch.zeros(2, 1, 8, 8),), path)
    x = np.ascontiguousarray(load_split().x_test)
    outputs = {}
    for device in ("cpu", "cuda:0"):
        runtime = torch_runtime.create()
        signature = runtime.load(path, RuntimeOptions(device=device))
        outputs[device] = runtime.execute({signature.inputs[0].name: x})[signature.outputs[0].name]
        runtime.unload()
    tolerance = ELEMENTWISE_TOLERANCES["fp32"]
    np.testing.assert_allclose(outputs["cuda:0"], outputs["cpu"], atol=tolerance.atol, rtol=tolerance.rtol)
    assert (outputs["cuda:0"].argmax(axis=1) == outputs["cpu"].argmax(axis=1)).all()
