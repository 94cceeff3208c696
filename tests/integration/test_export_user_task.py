"""``export model --module ... --task classify``: a user's own classifier, exported by the
CLI with its pipeline ensemble, answers ``/v1/classify`` on image bytes through the real
server; and what ``--task`` needs is checked before anything is written."""

from __future__ import annotations

import io

import httpx
import numpy as np
from typer.testing import CliRunner

from export.cli import root
from tests.integration.server_fixtures import running_server


def png(digit: np.ndarray, scale: int = 6) -> bytes:
    from PIL import Image

    big = np.kron(digit, np.ones((scale, scale)))
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.pad(big, scale) * 255).astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_users_classifier_serves_the_classify_route(tmp_path):
    from models.digits_data import load_split

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]) + "\n")
    repo = tmp_path / "repo"
    result = CliRunner().invoke(root, [
        "export", "model", "--module", "models.digits_cnn:load", "--input", "input:batch,1,8,8", "--output", "logits",
        "-r", str(repo), "--name", "mydigits", "--labels", str(labels), "--task", "classify",
        "--preprocess", "processor=image.digit",
    ])
    assert result.exit_code == 0, result.output
    assert (repo / "mydigits_classify" / "config.pbtxt").is_file()
    split = load_split()
    with running_server(repo) as server:
        got = []
        for x in split.x_test[:20]:
            files = [("file", ("d.png", png(x[0]), "image/png"))]
            body = httpx.post(f"http://{server.http_url}/v1/classify", files=files,
                              data={"model": "mydigits_classify", "top_k": "1"}, timeout=30).json()
            got.append(body["predictions"][0]["label"])
    words = labels.read_text().split()
    assert sum(g == words[y] for g, y in zip(got, split.y_test[:20], strict=True)) >= 18


def test_what_task_needs_is_checked_before_anything_is_written(tmp_path):
    repo = tmp_path / "repo"
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(d) for d in range(10)) + "\n")
    base = ["export", "model", "--module", "models.digits_cnn:load", "--input", "input:batch,1,8,8",
            "-r", str(repo), "--name", "mydigits"]
    for extra, message in (
        (["--task", "classify"], "needs --labels"),
        (["--task", "segment", "--labels", str(labels)], "classify or detect"),
        (["--task", "classify", "--labels", str(labels), "--preprocess", "oops"], "KEY=VALUE"),
        (["--task", "detect", "--labels", str(labels)], "heatmap, size and offset"),
    ):
        result = CliRunner().invoke(root, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not repo.exists() or not any(repo.iterdir())
