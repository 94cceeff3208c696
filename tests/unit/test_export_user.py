"""``deepserve export model --module``: parsing the flags, loading the user's network and
weights, and the clear exit-2 messages for bad input (nothing written)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from export.cli import root
from export.data import load_calibration, load_eval
from export.user import (
    UserInputError,
    build_spec,
    export_onnx_error,
    load_user_module,
    load_weights,
    parse_input,
    parse_module_ref,
)

NET = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(x)

    def build():
        torch.manual_seed(0)
        return Net()

    def with_examples():
        return Net(), torch.zeros(4, 6)

    def returns_string():
        return "a string"

    class Eig(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x).real

    def eig():
        return Eig()

    def raises():
        raise RuntimeError("no weights here")
''')


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "user_net.py"
    path.write_text(NET)
    return path


def test_parse_input_shapes_dtypes_and_dynamic_axes() -> None:
    spec = parse_input("audio:batch,time,80:FP32")
    assert spec.name == "audio" and spec.shape == ("batch", "time", 80) and spec.dtype == "float32"
    assert spec.dims == (-1, 80)
    assert parse_input("input:batch,3,224,224").shape == ("batch", 3, 224, 224)
    tokens = parse_input("ids:batch,seq:int64")
    assert tokens.dtype == "int64" and tokens.value_range == (0, 2)
    assert parse_input("x:n,4:FP16").dtype == "float16"


@pytest.mark.parametrize("text, words", [
    ("input", "NAME:SHAPE"),
    ("input:", "NAME:SHAPE"),
    ("input:batch,3:FP8", "unknown dtype"),
    ("input:4,3", "first axis is the batch axis"),
    ("input:batch,0", ">= 1"),
    ("input:batch,,3", "empty entry"),
    ("input:batch,3-4", "neither a size nor an axis name"),
])
def test_bad_input_specs_name_the_flag(text, words) -> None:
    with pytest.raises(UserInputError, match="--input") as err:
        parse_input(text)
    assert words in str(err.value)


def test_parse_module_ref() -> None:
    assert parse_module_ref("models/my_net.py:build") == ("models/my_net.py", "build")
    assert parse_module_ref("pkg.mod:make_model") == ("pkg.mod", "make_model")
    for bad in ("no_colon.py", ":build", "x.py:"):
        with pytest.raises(UserInputError, match="--module"):
            parse_module_ref(bad)


def test_load_user_module_from_a_file_and_from_an_importable_package(net_file) -> None:
    module, examples = load_user_module(f"{net_file}:build")
    assert isinstance(module, torch.nn.Module) and not module.training and examples is None
    module, examples = load_user_module(f"{net_file}:with_examples")
    assert examples is not None and examples[0].shape == (4, 6)
    module, _ = load_user_module("models.bench:mlp_tiny")  # an importable package, by module name
    assert isinstance(module, torch.nn.Module)


def test_load_user_module_bad_cases(net_file, tmp_path) -> None:
    with pytest.raises(UserInputError, match=r"returned str, not a torch.nn.Module"):
        load_user_module(f"{net_file}:returns_string")
    with pytest.raises(UserInputError, match=r"raises\(\) raised RuntimeError: no weights here"):
        load_user_module(f"{net_file}:raises")
    with pytest.raises(UserInputError, match=r"has no function 'nope'"):
        load_user_module(f"{net_file}:nope")
    with pytest.raises(UserInputError, match=r"no such file"):
        load_user_module(f"{tmp_path / 'missing.py'}:build")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_package_xyz\n")
    with pytest.raises(UserInputError, match=r"could not import .*broken.py: ModuleNotFoundError"):
        load_user_module(f"{broken}:build")
    with pytest.raises(UserInputError, match=r"could not import no_such_pkg_xyz.mod"):
        load_user_module("no_such_pkg_xyz.mod:build")


def test_weights_safetensors_and_torch_save(net_file, tmp_path) -> None:
    from safetensors.torch import save_file

    source, _ = load_user_module(f"{net_file}:build")
    with torch.no_grad():
        source.fc.weight.fill_(0.5)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        target, _ = load_user_module(f"{net_file}:build")
        load_weights(target, tmp_path / name)
        assert torch.equal(target.fc.weight, source.fc.weight)


def test_weights_only_refuses_pickled_code_and_mismatches_are_listed(net_file, tmp_path) -> None:
    target, _ = load_user_module(f"{net_file}:build")
    torch.save({"fc.weight": torch.zeros(3, 6), "fc.bias": np.zeros(3).astype(object)}, tmp_path / "pickled.pt")
    with pytest.raises(UserInputError, match=r"--weights .*weights-only"):
        load_weights(target, tmp_path / "pickled.pt")
    torch.save({"fc.weight": torch.zeros(4, 6), "extra.bias": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(UserInputError) as err:
        load_weights(target, tmp_path / "wrong.pt")
    text = str(err.value)
    assert "does not fit" in text and "missing keys: fc.bias" in text and "unexpected keys: extra.bias" in text
    assert "fc.weight (4, 6) vs the network's (3, 6)" in text
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match=r"--weights .*could not load"):
        load_weights(target, tmp_path / "junk.safetensors")


def test_build_spec_names_outputs_and_checks_the_network(net_file) -> None:
    module, _ = load_user_module(f"{net_file}:build")
    spec = build_spec(module, [parse_input("x:batch,6")], [])
    assert spec.output_names == ["output"] and spec.outputs[0].shape == ("batch", 3)
    with pytest.raises(UserInputError, match=r"--input: the network does not run .*RuntimeError"):
        build_spec(module, [parse_input("x:batch,5")], [])
    with pytest.raises(UserInputError, match=r"--output: 2 name\(s\) given, the network returns 1"):
        build_spec(module, [parse_input("x:batch,6")], ["a", "b"])
    module, examples = load_user_module(f"{net_file}:with_examples")
    spec = build_spec(module, [], ["scores"], examples)  # inputs inferred from the example inputs
    assert spec.inputs[0].shape == ("batch", 6) and spec.trace_sizes == {"batch": 4}
    assert spec.example_inputs()[0].shape == (4, 6)


def test_data_files_are_checked_against_the_inputs(net_file, tmp_path) -> None:
    module, _ = load_user_module(f"{net_file}:build")
    spec = build_spec(module, [parse_input("x:batch,6")], [])
    np.save(tmp_path / "ok.npy", np.zeros((10, 6), np.float64))
    assert load_calibration(tmp_path / "ok.npy", spec)["x"].dtype == np.float32
    np.save(tmp_path / "wrong.npy", np.zeros((10, 5), np.float32))
    with pytest.raises(UserInputError, match=r"--calibration-data .*'x' has shape \(10, 5\), the input is declared batch,6"):
        load_calibration(tmp_path / "wrong.npy", spec)
    np.savez(tmp_path / "named.npz", y=np.zeros((10, 6), np.float32))
    with pytest.raises(UserInputError, match=r"--calibration-data .*no array for input\(s\) \['x'\]"):
        load_calibration(tmp_path / "named.npz", spec)
    np.savez(tmp_path / "eval.npz", x=np.zeros((10, 6), np.float32), y=np.arange(10) % 3)
    feed, labels = load_eval(tmp_path / "eval.npz", spec)
    assert feed["x"].shape == (10, 6) and labels.dtype == np.int64
    np.savez(tmp_path / "eval_bad.npz", x=np.zeros((10, 6), np.float32), y=np.arange(9))
    with pytest.raises(UserInputError, match=r"--eval-data .*9 labels for 10 inputs"):
        load_eval(tmp_path / "eval_bad.npz", spec)


def test_export_errors_name_the_op() -> None:
    err = RuntimeError("Failed to export the model with torch.export.\nUnsupported: aten::unique_consecutive.default")
    assert "at op aten::unique_consecutive.default" in export_onnx_error(err)
    assert export_onnx_error(ValueError("boom")).startswith("--module: ONNX export failed: ValueError: boom")


def _flat(text: str) -> str:
    """The message without the usage box's borders and line breaks."""
    return " ".join(text.replace("│", " ").split())


def _cli(tmp_path, *args):
    return CliRunner().invoke(root, ["export", "model", "-r", str(tmp_path / "repo"), "--name", "mine", *args])


@pytest.mark.parametrize("args, words", [
    (["--module", "{net}:returns_string", "--input", "x:batch,6"], "--module: returns_string() returned str"),
    (["--module", "{net}:build", "--input", "x:batch,5"], "--input: the network does not run"),
    (["--module", "{dir}/absent.py:build", "--input", "x:batch,6"], "--module: no such file"),
    (["--module", "{net}:build", "--input", "x:batch,6", "--weights", "{dir}/bad.pt"], "missing keys: fc.bias"),
    (["--module", "{net}:build", "--input", "x:batch,6", "--calibration-data", "{dir}/bad.npy"], "--calibration-data"),
    (["--module", "{net}:eig", "--input", "x:batch,4,4"], "--module: ONNX export failed at op aten.linalg_eig"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(net_file, tmp_path, args, words) -> None:
    torch.save({"fc.weight": torch.zeros(3, 6)}, tmp_path / "bad.pt")
    np.save(tmp_path / "bad.npy", np.zeros((4, 2), np.float32))
    args = [a.format(net=net_file, dir=tmp_path) for a in args]
    result = _cli(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "repo").exists()


def test_family_or_module_is_required(tmp_path, net_file) -> None:
    result = _cli(tmp_path)
    assert result.exit_code == 2 and "--module" in result.output
    result = _cli(tmp_path, "digits", "--module", f"{net_file}:build")
    assert result.exit_code == 2 and "not both" in result.output
    result = CliRunner().invoke(root, ["export", "model", "digits", "-r", str(tmp_path), "--input", "x:batch,6"])
    assert result.exit_code == 2 and "go with --module" in _flat(result.output)


def test_a_failed_variant_writes_nothing_at_all(net_file, tmp_path, monkeypatch) -> None:
    from export import user

    monkeypatch.setitem(user.CLOSENESS, "int8-dynamic", user.ClosenessBars(1e-9, 1.0, 1.0))
    result = _cli(tmp_path, "--module", f"{net_file}:build", "--input", "x:batch,6", "--variants", "fp32,int8-dynamic")
    assert result.exit_code == 1, result.output
    assert "fp32: PASS" in result.output and "int8-dynamic: FAIL closeness" in result.output
    assert "nothing written" in result.output and not (tmp_path / "repo").exists()
