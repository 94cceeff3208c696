"""``deepserve export model --onnx FILE.onnx`` / ``--pt2 FILE.pt2``: reading a graph's inputs
(names, dtypes, dynamic axes), and the exit-2 refusals (nothing written, no traceback)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from export.cli import root
from export.user import UserInputError, load_onnx, onnx_family, onnx_io


def _graph(in_shape, dtype=TensorProto.FLOAT, extra_inputs=(), initializer_as_input=False):
    """y = x @ W + b, 4 -> 3 features, with x's shape as given."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.linspace(-1, 1, 12).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.1, 0.2, 0.3])
    inputs = [helper.make_tensor_value_info("x", dtype, in_shape), *extra_inputs]
    if initializer_as_input:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [in_shape[0], 3])
    graph = helper.make_graph(nodes, "lin", inputs, [out], initializer=[w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def linear(tmp_path):
    path = tmp_path / "lin.onnx"
    onnx.save(_graph(["N", 4]), path)
    return path


def test_graph_io_dtypes_and_dynamic_axes() -> None:
    mask = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch_size", None, "seq len"])
    inputs, outputs = onnx_io(_graph(["batch_size", 4], extra_inputs=[mask], initializer_as_input=True))
    assert [i.name for i in inputs] == ["x", "ids"]  # W, an initializer listed as an input, is not one
    assert inputs[0].shape == ("batch_size", 4) and inputs[0].dtype == "float32"
    assert inputs[1].dtype == "int64" and inputs[1].value_range == (0, 2)
    # an unnamed dim is dynamic and gets a name; names become identifiers
    assert inputs[1].shape == ("batch_size", "ids_dim1", "seq_len")
    assert outputs == ["y"]


def test_every_first_axis_is_the_one_batch_axis() -> None:
    other = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["M", 2])
    inputs, _ = onnx_io(_graph(["N", 4], extra_inputs=[other]))
    assert [i.shape[0] for i in inputs] == ["N", "N"]


def test_a_fixed_first_axis_is_refused() -> None:
    with pytest.raises(UserInputError, match="input 'x' has a fixed first axis \\(1\\).*must be dynamic"):
        onnx_io(_graph([1, 4]))


def test_unserved_dtypes_and_shapeless_inputs_are_refused() -> None:
    with pytest.raises(UserInputError, match="input 'x' has dtype complex64"):
        onnx_io(_graph(["N", 4], dtype=TensorProto.COMPLEX64))
    model = _graph(["N", 4])
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(UserInputError, match="input 'x' has no shape"):
        onnx_io(model)


def test_not_onnx_and_missing_files(tmp_path) -> None:
    with pytest.raises(UserInputError, match="--onnx: no such file"):
        load_onnx(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello")
    with pytest.raises(UserInputError, match="--onnx .*junk.onnx: not a valid ONNX model"):
        load_onnx(junk)


def test_the_spec_comes_from_the_graph(linear) -> None:
    net = onnx_family("lin", linear)
    assert net.family.spec.input_names == ["x"] and net.family.spec.output_names == ["y"]
    assert net.family.spec.outputs[0].shape == ("N", 3)
    assert net.onnx_model is not None


def _cli(tmp_path, *args):
    repo = tmp_path / "repo"
    result = CliRunner().invoke(root, ["export", "model", "-r", str(repo), "--name", "n", *args])
    return result, repo


@pytest.mark.parametrize("args, message", [
    (["--variants", "fp32,sparse50"], "--variants sparse50: pruning needs the torch network (--module)"),
    (["--variants", "pruned50"], "--variants pruned50: pruning needs the torch network (--module)"),
    (["--module", "x.py:f"], "--module and --onnx are mutually exclusive"),
    (["--pt2", "x.pt2"], "--onnx and --pt2 are mutually exclusive"),
    (["--input", "x:batch,4"], "--input and --output go with --module/--pt2"),
])
def test_cli_refusals_exit_2(tmp_path, linear, args, message) -> None:
    result, repo = _cli(tmp_path, "--onnx", str(linear), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and not repo.exists()


def test_family_and_onnx_are_mutually_exclusive(tmp_path, linear) -> None:
    repo = tmp_path / "repo"
    result = CliRunner().invoke(root, ["export", "model", "digits", "--onnx", str(linear), "-r", str(repo)])
    assert result.exit_code == 2 and "FAMILY and --onnx are mutually exclusive" in result.output
    assert not repo.exists()


def test_cli_bad_files_exit_2(tmp_path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01not a model")
    for flag in ("--onnx", "--pt2"):
        result, repo = _cli(tmp_path, flag, str(junk))
        assert result.exit_code == 2, result.output
        assert f"{flag} {junk}" in result.output and "Traceback" not in result.output and not repo.exists()
        result, repo = _cli(tmp_path, flag, str(tmp_path / "missing"))
        assert result.exit_code == 2 and f"{flag}: no such file" in result.output and not repo.exists()


def test_calibration_data_must_match_the_graph(tmp_path, linear) -> None:
    wrong = tmp_path / "calib.npz"
    np.savez(wrong, x=np.zeros((8, 5), np.float32))
    result, repo = _cli(tmp_path, "--onnx", str(linear), "--variants", "int8-static", "--calibration-data", str(wrong))
    assert result.exit_code == 2
    assert "--calibration-data" in result.output and "'x' has shape (8, 5), the input is declared N,4" in result.output
    assert not repo.exists()
    np.savez(wrong, image=np.zeros((8, 4), np.float32))
    result, repo = _cli(tmp_path, "--onnx", str(linear), "--variants", "int8-static", "--calibration-data", str(wrong))
    assert result.exit_code == 2 and "no array for input(s) ['x']" in result.output and not repo.exists()


def test_an_onnx_file_exports_and_writes(tmp_path, linear) -> None:
    result, repo = _cli(tmp_path, "--onnx", str(linear), "--variants", "fp32,fp32-ortopt,int8-dynamic")
    assert result.exit_code == 0, result.output
    assert "fp32: PASS element-wise" in result.output
    assert "int8-dynamic: PASS closeness to fp32" in result.output
    assert sorted(p.name for p in repo.iterdir()) == ["n", "n_fp32_ortopt", "n_int8_dynamic"]
    assert (repo / "n" / "1" / "model.onnx").read_bytes() == onnx.load(linear).SerializeToString()


def test_pt2_refuses_pruning_and_weights(tmp_path) -> None:
    for args, message in ((["--variants", "sparse50"], "--variants sparse50: pruning needs the torch network"),
                          (["--weights", str(tmp_path / "w.pt")], "--weights goes with --module")):
        (tmp_path / "w.pt").write_bytes(b"")
        result, repo = _cli(tmp_path, "--pt2", str(tmp_path / "x.pt2"), *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output and not repo.exists()
