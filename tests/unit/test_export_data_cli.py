"""``--calibration-data`` / ``--eval-data`` through the CLI: image folders (decoded as the
image pipeline does) and a batch function, end to end into checked variants."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from export.cli import root

NET = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn

    def build():
        """Bright (class 1) against dark (class 0) 3x8x8 images, trained here in a moment."""
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 2))
        x = torch.rand(256, 3, 8, 8)
        y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
        x = x + (y.float() * 2 - 1)[:, None, None, None] * 0.3
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(150):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net.eval()

    def batches():
        rng = np.random.default_rng(0)
        for _ in range(3):
            yield {"image": rng.random((16, 3, 8, 8), dtype=np.float32)}
''')


@pytest.fixture
def folders(tmp_path):
    """eval/<class>/*.png and calib/*.png; pixel levels make the class."""
    rng = np.random.default_rng(1)
    for name, low, high in (("dark", 0, 90), ("bright", 165, 255)):
        (tmp_path / "eval" / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(low, high, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "eval" / name / f"{i}.png")
            if i < 5:
                (tmp_path / "calib").mkdir(exist_ok=True)
                Image.fromarray(pixels).save(tmp_path / "calib" / f"{name}{i}.png")
    (tmp_path / "labels.txt").write_text("dark\nbright\n")
    (tmp_path / "net.py").write_text(NET)
    return tmp_path


def _export(folders, *args):
    return CliRunner().invoke(root, ["export", "model", "--module", f"{folders}/net.py:build",
                                     "--input", "image:batch,3,8,8", "-r", str(folders / "repo"), "--name", "bd",
                                     "--labels", str(folders / "labels.txt"), *args])


def test_image_folders_calibrate_and_judge(folders) -> None:
    result = _export(folders, "--variants", "fp32,int8-static", "--calibration-data", str(folders / "calib"),
                     "--eval-data", str(folders / "eval"), "--preprocess", "mean=0", "--preprocess", "std=1")
    assert result.exit_code == 0, result.output
    line = next(s for s in result.output.splitlines() if s.startswith("int8-static:"))
    # 24 labelled images, classes from the folder names in --labels order: the net separates them
    assert "PASS on 24 held-out inputs" in line and "accuracy 1.0000 vs fp32 1.0000" in line, line
    assert (folders / "repo" / "bd_int8_static" / "1" / "model.onnx").is_file()


def test_a_batch_function_calibrates(folders) -> None:
    result = _export(folders, "--variants", "int8-static", "--calibration-data", f"{folders}/net.py:batches")
    assert result.exit_code == 0, result.output
    assert "int8-static: PASS closeness to fp32 on 48 calibration inputs" in result.output


@pytest.mark.parametrize("args, words", [
    (["--eval-data", "{dir}/calib"], "--eval-data"),  # images but no class folders
    (["--calibration-data", "{dir}/labels.txt"], "--calibration-data"),
    (["--calibration-data", "{dir}/net.py:absent"], "--calibration-data"),
    (["--calibration-data", "{dir}/calib", "--preprocess", "height"], "--preprocess takes KEY=VALUE"),
])
def test_bad_data_flags_exit_2(folders, args, words) -> None:
    result = _export(folders, "--variants", "int8-static", *[a.format(dir=folders) for a in args])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (folders / "repo").exists()
