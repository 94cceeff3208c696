"""``--calibration-data`` and ``--eval-data`` of user exports (export.data): .npz/.npy files,
folders of images decoded as the serving pipeline does, and a user's batch function."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.data import load_calibration, load_eval
from export.errors import UserInputError
from export.spec import ExportSpec, IOSpec
from server.pipelines.image import ImageSpec

RED, GREEN, WHITE = (255, 0, 0), (0, 255, 0), (255, 255, 255)


def _spec(*inputs: IOSpec) -> ExportSpec:
    return ExportSpec(inputs=inputs, outputs=(IOSpec("logits", ("batch", 3)),))


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> Path:
    """A solid ``color`` PNG of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _pipeline(path: Path, **params: str) -> np.ndarray:
    return ImageSpec.from_parameters(params).tensor(path.read_bytes())[0]


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch):
    """Loading PATH.py puts its folder on sys.path: undone after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


# -- image folders -------------------------------------------------------------------------

def test_an_image_folder_is_decoded_as_the_pipeline_does(tmp_path) -> None:
    red = _png(tmp_path / "a" / "red.png", RED)
    green = _png(tmp_path / "b.png", GREEN, (5, 30))
    _png(tmp_path / ".hidden" / "skipped.png", WHITE)
    (tmp_path / "notes.txt").write_text("not an image")
    spec = _spec(IOSpec("image", ("batch", 3, 8, 6)))
    feed = load_calibration(tmp_path, spec)
    assert list(feed) == ["image"] and feed["image"].shape == (2, 3, 8, 6) and feed["image"].dtype == np.float32
    for got, path in zip(feed["image"], sorted([red, green]), strict=True):  # a/red.png < b.png
        np.testing.assert_array_equal(got, _pipeline(path, height="8", width="6", color="RGB"))
    np.testing.assert_allclose(feed["image"][0, :, 0, 0], [1.0, 0.0, 0.0])  # red, scaled by 1/255
    np.testing.assert_allclose(feed["image"][1, :, 0, 0], [0.0, 1.0, 0.0])


def test_one_channel_inputs_get_grayscale(tmp_path) -> None:
    path = _png(tmp_path / "red.png", RED)
    feed = load_calibration(tmp_path, _spec(IOSpec("x", ("batch", 1, 4, 4))))
    assert feed["x"].shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(feed["x"][0], _pipeline(path, height="4", width="4", color="L"))
    np.testing.assert_allclose(feed["x"][0], round(255 * 0.299) / 255, atol=1 / 255)  # L of red: ITU-R 601-2 luma


def test_preprocess_overrides_and_completes_the_declared_shape(tmp_path) -> None:
    path = _png(tmp_path / "white.png", WHITE)
    dynamic = _spec(IOSpec("image", ("batch", 3, "h", "w")))
    options = {"height": "4", "width": "6", "mean": "0.5", "std": "0.25"}
    feed = load_calibration(tmp_path, dynamic, options)
    assert feed["image"].shape == (1, 3, 4, 6)
    np.testing.assert_allclose(feed["image"], 2.0)  # (1 - 0.5) / 0.25
    np.testing.assert_array_equal(feed["image"][0], _pipeline(path, **options))
    nhwc = load_calibration(tmp_path, _spec(IOSpec("image", ("batch", 5, 7, 1))), {"layout": "NHWC"})
    assert nhwc["image"].shape == (1, 5, 7, 1)
    with pytest.raises(UserInputError, match=r"--calibration-data .*needs a fixed height and width, or "
                                             r"--preprocess height=\.\.\. width=\.\.\."):
        load_calibration(tmp_path, dynamic)
    fixed = _spec(IOSpec("image", ("batch", 3, 8, 8)))
    with pytest.raises(UserInputError, match=r"--calibration-data .*'image' has shape \(1, 3, 4, 6\), "
                                             r"the input is declared batch,3,8,8"):
        load_calibration(tmp_path, fixed, {"height": "4", "width": "6"})
    with pytest.raises(UserInputError, match=r"--preprocess .*color must be RGB or L, not 'CMYK'"):
        load_calibration(tmp_path, fixed, {"color": "CMYK"})


def test_at_most_limit_images_evenly_strided(tmp_path) -> None:
    for i in range(10):
        _png(tmp_path / f"{i:02d}.png", (i * 20,) * 3)
    feed = load_calibration(tmp_path, _spec(IOSpec("x", ("batch", 1, 2, 2))), limit=4)
    np.testing.assert_allclose(feed["x"][:, 0, 0, 0], np.array([0, 2, 5, 7]) * 20 / 255, atol=1e-6)


def test_image_folder_mistakes_name_the_flag_and_the_file(tmp_path) -> None:
    spec = _spec(IOSpec("image", ("batch", 3, 8, 8)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"--calibration-data .*empty: no images \(.*\.png"):
        load_calibration(tmp_path / "empty", spec)
    _png(tmp_path / "imgs" / "good.png", RED)
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(UserInputError, match=r"--calibration-data .*bad\.jpg: not a decodable image"):
        load_calibration(tmp_path / "imgs", spec)
    two = _spec(IOSpec("image", ("batch", 3, 8, 8)), IOSpec("mask", ("batch", 8)))
    with pytest.raises(UserInputError, match=r"--calibration-data .*one image input .*image batch,3,8,8, mask batch,8"):
        load_calibration(tmp_path / "imgs", two)
    with pytest.raises(UserInputError, match=r"--calibration-data .*1 \(L\) or 3 \(RGB\) channels"):
        load_calibration(tmp_path / "imgs", _spec(IOSpec("image", ("batch", 4, 8, 8))))
    with pytest.raises(UserInputError, match=r"--calibration-data: no such file or folder .*absent"):
        load_calibration(tmp_path / "absent", spec)


# -- .npz / .npy -------------------------------------------------------------------------------

def test_array_files_are_fitted_and_capped(tmp_path) -> None:
    spec = _spec(IOSpec("x", ("batch", 6)))
    np.save(tmp_path / "ok.npy", np.arange(60, dtype=np.float64).reshape(10, 6))
    feed = load_calibration(tmp_path / "ok.npy", spec, limit=4)
    assert feed["x"].dtype == np.float32 and feed["x"][:, 0].tolist() == [0, 12, 30, 42]  # rows 0, 2, 5, 7
    np.save(tmp_path / "wrong.npy", np.zeros((10, 5), np.float32))
    with pytest.raises(UserInputError, match=r"--calibration-data .*'x' has shape \(10, 5\), the input is declared batch,6"):
        load_calibration(tmp_path / "wrong.npy", spec)
    two = _spec(IOSpec("x", ("batch", 6)), IOSpec("y", ("batch", 6)))
    with pytest.raises(UserInputError, match=r"a \.npy holds one array, the network has 2 inputs"):
        load_calibration(tmp_path / "ok.npy", two)
    np.savez(tmp_path / "eval.npz", x=np.zeros((10, 6), np.float32), y=np.arange(10) % 3)
    inputs, labels = load_eval(tmp_path / "eval.npz", spec, limit=4)
    assert inputs["x"].shape == (4, 6) and labels.dtype == np.int64 and labels.tolist() == [0, 2, 2, 1]
    np.savez(tmp_path / "eval_bad.npz", x=np.zeros((10, 6), np.float32), y=np.arange(9))
    with pytest.raises(UserInputError, match=r"--eval-data .*9 labels for 10 inputs"):
        load_eval(tmp_path / "eval_bad.npz", spec)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserInputError, match=r"--eval-data .*junk\.npz: not a readable \.npz/\.npy file"):
        load_eval(tmp_path / "junk.npz", spec)


# -- a user's batch function -------------------------------------------------------------------

BATCHES = textwrap.dedent('''
    import itertools

    import numpy as np
    import torch

    def dicts():
        for i in range(3):
            yield {"x": np.full((2, 4), i, np.float64), "m": torch.full((2,), i, dtype=torch.int32)}

    def forever():
        for i in itertools.count():
            yield np.full((3, 4), i, np.float32)

    def tuples():
        return [(np.ones((2, 4)), np.zeros(2)), (torch.zeros(1, 4, requires_grad=True), torch.ones(1))]

    def one_array():
        return np.ones((5, 4), np.float32)

    def shapes_change():
        yield np.zeros((2, 4))
        yield np.zeros((2, 5))

    def nothing():
        return iter(())

    def strings():
        yield "x"

    def number():
        return 3

    def fails():
        raise RuntimeError("no data here")

    def fails_later():
        yield np.zeros((1, 4))
        raise KeyError("shard 2")

    not_callable = 7
''')


@pytest.fixture
def batches(tmp_path) -> Path:
    path = tmp_path / "batches.py"
    path.write_text(BATCHES)
    return path


def test_a_function_yields_dict_batches(batches) -> None:
    spec = _spec(IOSpec("x", ("batch", 4)), IOSpec("m", ("batch",), "int64"))
    feed = load_calibration(f"{batches}:dicts", spec)
    assert feed["x"].dtype == np.float32 and feed["m"].dtype == np.int64
    assert feed["x"][:, 0].tolist() == [0, 0, 1, 1, 2, 2] and feed["m"].tolist() == [0, 0, 1, 1, 2, 2]
    feed = load_calibration(f"{batches}:tuples", _spec(IOSpec("x", ("batch", 4)), IOSpec("m", ("batch",))))
    assert feed["x"].shape == (3, 4) and feed["x"][:, 0].tolist() == [1, 1, 0] and feed["m"].tolist() == [0, 0, 1]


def test_a_function_is_read_until_limit_samples(batches) -> None:
    spec = _spec(IOSpec("x", ("batch", 4)))
    feed = load_calibration(f"{batches}:forever", spec, limit=7)  # never exhausted: stops after 3 batches
    assert feed["x"][:, 0].tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert load_calibration(f"{batches}:one_array", spec)["x"].shape == (5, 4)  # a bare batch: the only one


def test_a_module_path_reference(tmp_path, monkeypatch) -> None:
    package = tmp_path / "calibpkg_export_data"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "source.py").write_text("import numpy as np\n\ndef make():\n    yield np.full((2, 3), 4.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    feed = load_calibration("calibpkg_export_data.source:make", _spec(IOSpec("x", ("batch", 3))))
    np.testing.assert_array_equal(feed["x"], np.full((2, 3), 4.0, np.float32))
    with pytest.raises(UserInputError, match=r"--calibration-data: could not import calibpkg_export_data\.absent"):
        load_calibration("calibpkg_export_data.absent:make", _spec(IOSpec("x", ("batch", 3))))


@pytest.mark.parametrize(("func", "message"), [
    ("missing", r"has no function 'missing'"),
    ("not_callable", r"has no function 'not_callable'"),
    ("fails", r"fails\(\) raised RuntimeError: no data here"),
    ("fails_later", r"fails_later\(\) raised KeyError after 1 batch\(es\): 'shard 2'"),
    ("number", r"number\(\) returned int, not an iterable of batches"),
    ("nothing", r"nothing\(\) yielded no batches"),
    ("strings", r"\(batch 0\): got str; a batch is a dict"),
    ("shapes_change", r"\(batch 1\): 'x' has shape \(2, 5\), the input is declared batch,4"),
    ("tuples", r"\(batch 0\): a batch of 2 arrays; the network has 1 input\(s\) \['x'\]"),
])
def test_function_mistakes_name_the_flag(batches, func, message) -> None:
    with pytest.raises(UserInputError, match=r"^--calibration-data\b.*" + message):
        load_calibration(f"{batches}:{func}", _spec(IOSpec("x", ("batch", 4))))


def test_function_batches_must_fit_the_inputs(batches, tmp_path) -> None:
    two = _spec(IOSpec("x", ("batch", 4)), IOSpec("m", ("batch",)))
    with pytest.raises(UserInputError, match=r"--calibration-data .*a bare array, but the network has 2 inputs"):
        load_calibration(f"{batches}:forever", two)
    dynamic = _spec(IOSpec("x", ("batch", "n")))
    with pytest.raises(UserInputError, match=r"batch 1 has 'x' of shape \(2, 5\), batch 0 \(2, 4\); batches are "
                                             r"concatenated"):
        load_calibration(f"{batches}:shapes_change", dynamic)
    (tmp_path / "broken.py").write_text("def make(:\n")
    with pytest.raises(UserInputError, match=r"^--calibration-data: could not import .*broken\.py: SyntaxError"):
        load_calibration(f"{tmp_path / 'broken.py'}:make", two)
    with pytest.raises(UserInputError, match=r"^--calibration-data: no such file .*absent\.py"):
        load_calibration(f"{tmp_path / 'absent.py'}:make", two)
    with pytest.raises(UserInputError, match=r"^--calibration-data 'x:1': expected PATH\.py:FUNC"):
        load_calibration("x:1", two)


def test_bfloat16_tensors_are_refused_clearly(tmp_path) -> None:
    (tmp_path / "bf16.py").write_text("import torch\n\ndef make():\n    yield torch.zeros(2, 4, dtype=torch.bfloat16)\n")
    with pytest.raises(UserInputError, match=r"--calibration-data .*cannot be converted to numpy"):
        load_calibration(f"{tmp_path / 'bf16.py'}:make", _spec(IOSpec("x", ("batch", 4))))
    assert torch.zeros(1, dtype=torch.bfloat16).float().numpy().tolist() == [0.0]  # float() is the user's fix


# -- class folders (eval) ----------------------------------------------------------------------

@pytest.fixture
def classes(tmp_path) -> Path:
    root = tmp_path / "eval"
    _png(root / "cat" / "1.png", RED)
    _png(root / "cat" / "2.png", RED)
    _png(root / "dog" / "1.png", GREEN)
    return root


def test_class_folders_without_labels_are_numbered_in_sorted_order(classes) -> None:
    inputs, labels = load_eval(classes, _spec(IOSpec("image", ("batch", 3, 4, 4))))
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1]  # cat, cat, dog
    assert inputs["image"].shape == (3, 3, 4, 4)
    np.testing.assert_allclose(inputs["image"][:, :, 0, 0], [[1, 0, 0], [1, 0, 0], [0, 1, 0]])


def test_class_folders_follow_the_labels(classes) -> None:
    spec = _spec(IOSpec("image", ("batch", 1, 4, 4)))
    inputs, labels = load_eval(classes, spec, labels=["bird", "dog", "cat"])
    assert labels.tolist() == [2, 2, 1] and inputs["image"].shape == (3, 1, 4, 4)
    _, labels = load_eval(classes, spec, labels=["bird", "dog", "cat"], limit=2)
    assert labels.tolist() == [2, 2]  # indices 0 and 1 of 3 (strided: 0 * 3 // 2, 1 * 3 // 2)
    with pytest.raises(UserInputError, match=r"--eval-data .*class folder\(s\) \['cat'\] are not among the labels "
                                             r"\(bird, dog\)"):
        load_eval(classes, spec, labels=["bird", "dog"])


def test_class_folder_mistakes_name_the_flag(classes, tmp_path) -> None:
    spec = _spec(IOSpec("image", ("batch", 3, 4, 4)))
    _png(classes / "loose.png", WHITE)
    with pytest.raises(UserInputError, match=r"^--eval-data .*one subfolder of images per class .*loose\.png"):
        load_eval(classes, spec)
    (tmp_path / "bare").mkdir()
    with pytest.raises(UserInputError, match=r"^--eval-data .*found no subfolders"):
        load_eval(tmp_path / "bare", spec)
    (tmp_path / "bare" / "cat").mkdir()
    with pytest.raises(UserInputError, match=r"^--eval-data .*no images .* in the class folders"):
        load_eval(tmp_path / "bare", spec)
    with pytest.raises(UserInputError, match=r"^--eval-data: no such file or folder"):
        load_eval("module:func", spec)
