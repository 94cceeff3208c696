"""The model repository's safety: names, paths inside the model folder, messages without
the server's paths, readiness after a client's failed load, pickle-free torch programs."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from server.core.errors import DeepserveError, InvalidInput, ModelNotFound
from server.core.validation import check_model_name, check_version
from server.observability.metrics import Metrics
from server.repository.config import config_from_dict
from server.repository.manager import ModelRepository
from server.repository.model import LoadOptions, file_in_model
from tests.integration import server_fixtures as fx

SECRET = "TOP-SECRET-CONTENT-4242"


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "../etc", "/etc/passwd", "a\\b", "a\x00b", "a\nb", "x" * 256])
def test_invalid_model_names_are_refused(name):
    with pytest.raises(InvalidInput, match="model name"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["digits", "add_sub-2", "model.v2", "é" * 100])
def test_plain_folder_names_pass(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("version", ["..", "1/2", "-1", "1.0", "²", "1" * 20, "a"])
def test_versions_must_be_ascii_numbers(version):
    with pytest.raises(InvalidInput, match="version must be a number"):
        check_version(version)


def test_file_in_model_refuses_escapes_and_outward_symlinks(tmp_path):
    model_dir = tmp_path / "repo" / "m"
    (model_dir / "1").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text(SECRET)
    (model_dir / "1" / "out.onnx").symlink_to(tmp_path / "secret.txt")
    (model_dir / "1" / "in.onnx").write_bytes(b"x")
    (model_dir / "1" / "alias.onnx").symlink_to(model_dir / "1" / "in.onnx")
    for bad in ("../../secret.txt", str(tmp_path / "secret.txt"), "a\x00b", "", "out.onnx"):
        with pytest.raises(InvalidInput) as info:
            file_in_model(model_dir, model_dir / "1", bad, "default_model_filename")
        if not bad.startswith("/"):  # (an absolute name is the client's own text, echoed)
            assert str(tmp_path) not in info.value.message
    assert file_in_model(model_dir, model_dir / "1", "alias.onnx", "x") == model_dir / "1" / "alias.onnx"


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "outside" / "secret.onnx"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


@pytest.fixture
async def repository(tmp_path):
    root = tmp_path / "repo"
    fx.write_simple(root, "simple")
    repo = ModelRepository(root, LoadOptions(), Metrics())
    await repo.load_all()
    yield repo
    await repo.aclose()


def _simple_config(**extra) -> dict:
    data = {
        "name": "simple", "platform": "onnxruntime_onnx", "max_batch_size": 64,
        "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("INPUT0", "INPUT1")],
        "output": [{"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("OUTPUT0", "OUTPUT1")],
    }
    data.update(extra)
    return data


def _no_server_paths(message: str, repo: ModelRepository, *others: Path) -> None:
    for path in (repo.root, repo.root.resolve(), *others):
        assert str(path) not in message, message
    assert SECRET not in message


@pytest.mark.parametrize("name", ["..", "../repo", "/etc", "a/b", "a\x00b"])
async def test_load_and_unload_refuse_names_outside_the_repository(repository, name):
    for call in (repository.load(name), repository.unload(name)):
        with pytest.raises(InvalidInput, match="model name"):
            await call
    assert repository.ready()
    with pytest.raises(InvalidInput, match="model name"):
        repository.get(name)


async def test_default_model_filename_outside_the_model_folder_is_refused(repository, secret, tmp_path):
    relative = Path("..", "..", "..", "outside", "secret.onnx")  # from repo/simple/1/
    for filename in (str(relative), "../../../../../../../../etc/passwd", str(secret)):
        config = config_from_dict(_simple_config(default_model_filename=filename))
        with pytest.raises(InvalidInput, match="inside the model's folder") as info:
            await repository.load("simple", config)
        if not filename.startswith("/"):  # (an absolute name is the client's own text, echoed)
            _no_server_paths(info.value.message, repository, tmp_path)
        assert SECRET not in info.value.message
    # the failed reloads kept version 1 serving, and the index says why
    assert repository.get("simple").version == "1"
    (row,) = repository.index()
    assert row["state"] == "READY" and "inside the model's folder" in row["reason"]
    assert repository.ready()
    await repository.load("simple")  # a good load clears the reason
    assert repository.index()[0]["reason"] == ""


async def test_outward_symlink_model_file_is_refused(repository, secret, tmp_path):
    version = repository.root / "simple" / "2"
    version.mkdir()
    (version / "model.onnx").symlink_to(secret)
    with pytest.raises(InvalidInput, match="points outside the model's folder") as info:
        await repository.load("simple")
    assert "simple/2/model.onnx" in info.value.message
    _no_server_paths(info.value.message, repository, tmp_path)
    assert repository.versions("simple") == ("1",)


async def test_label_filename_outside_the_model_folder_is_refused(repository, tmp_path):
    outputs = _simple_config()["output"]
    outputs[0]["label_filename"] = "../../outside/secret.onnx"
    with pytest.raises(InvalidInput, match="label_filename") as info:
        await repository.load("simple", config_from_dict(_simple_config(output=outputs)))
    _no_server_paths(info.value.message, repository, tmp_path)


@pytest.mark.parametrize("key", ["file:../1/model.onnx", "file:/etc/passwd", "file:1/../../x", "file:model.onnx", "file:1//m", "1/model.onnx"])
async def test_uploaded_file_names_must_stay_in_the_model_folder(repository, key):
    with pytest.raises(InvalidInput, match="file:<version>/<filename>"):
        await repository.load("fresh", config_from_dict(_simple_config(name="fresh")), {key: b"x"})
    assert repository.ready()


async def test_failed_load_of_a_new_model_keeps_readiness_and_reports_why(repository, tmp_path):
    broken = repository.root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(DeepserveError) as info:
        await repository.load("broken")
    _no_server_paths(info.value.message, repository, tmp_path)
    assert "broken/1/model.onnx" in info.value.message or "model.onnx" in info.value.message
    rows = {r["name"]: r for r in repository.index()}
    assert rows["broken"]["state"] == "UNAVAILABLE" and rows["broken"]["reason"]
    assert repository.ready()  # a client's failed load of a new model does not count
    assert repository.get("simple").version == "1"
    # uploaded files: the message names <model>/<version>/<file>, not the temp folder
    with pytest.raises(DeepserveError) as info:
        await repository.load("uploaded", config_from_dict(_simple_config(name="uploaded")), {"file:1/model.onnx": b"junk"})
    assert "uploaded/1/model.onnx" in info.value.message and "deepserve-load" not in info.value.message
    assert repository.ready()
    assert {r["name"]: r for r in repository.index()}["uploaded"]["reason"]


async def test_a_model_broken_at_startup_counts_against_readiness(tmp_path):
    root = tmp_path / "repo"
    fx.write_simple(root, "simple")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"junk")
    repo = ModelRepository(root, LoadOptions(), Metrics())
    await repo.load_all()
    try:
        assert not repo.ready()
        reason = {r["name"]: r for r in repo.index()}["broken"]["reason"]
        assert reason and str(root) not in reason
        with pytest.raises(DeepserveError):
            await repo.load("broken")  # still broken: still counted
        assert not repo.ready()
        await repo.unload("broken")  # explicitly unloaded: no longer counted
        assert repo.ready()
    finally:
        await repo.aclose()


async def test_unknown_model_folder_message_has_no_server_path(repository):
    with pytest.raises(ModelNotFound) as info:
        await repository.load("nope")
    _no_server_paths(info.value.message, repository)


def _program_archive(tmp_path: Path, edit) -> Path:
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x)

    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(Tiny(), (torch.randn(2, 3),)), str(good))
    out = tmp_path / "edited.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = edit(info.filename, src.read(info.filename))
            if data is not None:
                dst.writestr(info, data)
    return out


class _Boom:
    def __reduce__(self):
        return (print, ("pickle ran",))


def test_torch_programs_that_would_unpickle_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from server.runtimes.torch import check_program_archive

    check_program_archive(_program_archive(tmp_path, lambda name, data: data))  # a plain program passes

    def pickled_weight(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            for payload in config["config"].values():
                payload["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    with pytest.raises(ValueError, match="pickled"):
        check_program_archive(_program_archive(tmp_path, pickled_weight))

    buffer = io.BytesIO()
    torch.save(_Boom(), buffer)

    def evil_sample_inputs(name: str, data: bytes) -> bytes:
        return buffer.getvalue() if "sample_inputs" in name else data

    with pytest.raises(ValueError, match="never unpickles"):
        check_program_archive(_program_archive(tmp_path, evil_sample_inputs))

    def aoti(name: str, data: bytes) -> bytes:
        return data

    archive = _program_archive(tmp_path, aoti)
    root = zipfile.ZipFile(archive).namelist()[0].split("/")[0]
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(ValueError, match="AOTInductor"):
        check_program_archive(archive)
