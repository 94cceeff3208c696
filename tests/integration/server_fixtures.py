"""A temp model repository of tiny ONNX models and a real server subprocess, for the integration tests
(and ``loadtests/grpc_vs_http.py``).

Models (built with ``onnx.helper``; nothing is downloaded)::

    simple      FP32 INPUT0, INPUT1 [-1, 16] -> OUTPUT0 = a + b (labels), OUTPUT1 = a - b
                max_batch_size 64, dynamic batching (500 µs delay)
    reloadable  same graph as simple, for load / unload tests
    types       no batching; one identity per datatype: BYTES, FP16, BOOL, INT64, INT8, UINT16, FP64
    queued      FP32 INPUT [-1, 4] -> OUTPUT identity; max_batch_size 8 with a 20 s queue delay,
                2 priority levels, timeout override allowed: requests sit in the queue
    decoupled   python (model.py), decoupled: FP32 INPUT [-1] -> one response INPUT_OUT = INPUT
    add_sub_twice  a Triton ensemble of ONNX steps, as Triton users write it (empty version
                folder): simple(a, b) -> (a+b, a-b) -> simple -> (2a, 2b); the second step
                reads both outputs of the first
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
SMALL_MESSAGE_BYTES = 4 * 1024 * 1024  # the test server's gRPC / HTTP message limit


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def add_sub_model() -> onnx.GraphProto:
    t = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 16])
    return helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]), helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "add_sub",
        [t("INPUT0"), t("INPUT1")],
        [t("OUTPUT0"), t("OUTPUT1")],
    )


def identity_model(tensors: dict[str, tuple[int, list]]) -> onnx.GraphProto:
    """One Identity per ``name -> (onnx type, shape)``: input ``name``, output ``name_OUT``."""
    nodes, inputs, outputs = [], [], []
    for name, (elem, shape) in tensors.items():
        nodes.append(helper.make_node("Identity", [name], [f"{name}_OUT"]))
        inputs.append(helper.make_tensor_value_info(name, elem, shape))
        outputs.append(helper.make_tensor_value_info(f"{name}_OUT", elem, shape))
    return helper.make_graph(nodes, "identity", inputs, outputs)


SIMPLE_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] label_filename: "labels.txt" }},
         {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
"""

TYPES = {
    "S": (TensorProto.STRING, "TYPE_STRING"),
    "H": (TensorProto.FLOAT16, "TYPE_FP16"),
    "B": (TensorProto.BOOL, "TYPE_BOOL"),
    "I64": (TensorProto.INT64, "TYPE_INT64"),
    "I8": (TensorProto.INT8, "TYPE_INT8"),
    "U16": (TensorProto.UINT16, "TYPE_UINT16"),
    "F64": (TensorProto.DOUBLE, "TYPE_FP64"),
}

QUEUED_CONFIG = """
name: "queued"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "INPUT_OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 20000000
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { allow_timeout_override: true }
}
"""

DECOUPLED_CONFIG = """
name: "decoupled"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "INPUT_OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
model_transaction_policy { decoupled: true }
"""

DECOUPLED_MODEL = """
class Echo:
    def execute(self, inputs):
        yield {"INPUT_OUT": inputs["INPUT"]}
"""


ENSEMBLE_CONFIG = """
name: "add_sub_twice"
platform: "ensemble"
max_batch_size: 64
input [ { name: "A" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "TWO_A" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "TWO_B" data_type: TYPE_FP32 dims: [ 16 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "simple"
      model_version: -1
      input_map { key: "INPUT0" value: "A" }
      input_map { key: "INPUT1" value: "B" }
      output_map { key: "OUTPUT0" value: "sum" }
      output_map { key: "OUTPUT1" value: "difference" }
    },
    {
      model_name: "simple"
      model_version: 1
      input_map { key: "INPUT0" value: "sum" }
      input_map { key: "INPUT1" value: "difference" }
      output_map { key: "OUTPUT0" value: "TWO_A" }
      output_map { key: "OUTPUT1" value: "TWO_B" }
    }
  ]
}
"""


def metric_samples(base_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric (counters by their ``_total`` name) from ``base_url``'s
    ``/metrics``, read with prometheus_client's own parser: (labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def write_model(repo: Path, name: str, config: str, files: dict[str, str] | None = None) -> None:
    """``repo/name/config.pbtxt`` and version 1's files (a Python model's ``model.py``, ...)."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    for filename, text in (files or {}).items():
        (version / filename).write_text(text)


def write_simple(repo: Path, name: str) -> None:
    _save(add_sub_model(), repo / name / "1" / "model.onnx")
    (repo / name / "config.pbtxt").write_text(SIMPLE_CONFIG.format(name=name))
    (repo / name / "labels.txt").write_text("\n".join(f"label{i}" for i in range(16)) + "\n")


def build_repository(repo: Path) -> Path:
    write_simple(repo, "simple")
    write_simple(repo, "reloadable")
    _save(identity_model({n: (e, [-1]) for n, (e, _) in TYPES.items()}), repo / "types" / "1" / "model.onnx")
    ios = [(f'{{ name: "{n}" data_type: {c} dims: [ -1 ] }}', f'{{ name: "{n}_OUT" data_type: {c} dims: [ -1 ] }}') for n, (_, c) in TYPES.items()]
    (repo / "types" / "config.pbtxt").write_text(
        'name: "types"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        f"input [ {', '.join(i for i, _ in ios)} ]\noutput [ {', '.join(o for _, o in ios)} ]\n"
    )
    _save(identity_model({"INPUT": (TensorProto.FLOAT, ["batch", 4])}), repo / "queued" / "1" / "model.onnx")
    (repo / "queued" / "config.pbtxt").write_text(QUEUED_CONFIG)
    (repo / "decoupled" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "decoupled" / "1" / "model.py").write_text(DECOUPLED_MODEL)
    (repo / "decoupled" / "config.pbtxt").write_text(DECOUPLED_CONFIG)
    (repo / "add_sub_twice" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "add_sub_twice" / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    return repo


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerHandle:
    http_port: int
    grpc_port: int
    repository: Path
    log_path: Path
    pid: int

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError), urllib.request.urlopen(
            url, timeout=1
        ) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready within {timeout_s} s")


@contextlib.contextmanager
def running_server(
    repo: Path, extra_env: dict[str, str] | None = None, timeout_s: float = 60.0, wait_for: str = "ready"
) -> Iterator[ServerHandle]:
    """``python -m server.cli serve`` on free loopback ports, once ``/v2/health/<wait_for>``
    answers 200 (``live`` for a server that is not meant to become ready); SIGTERM on exit."""
    with server_process(repo, extra_env=extra_env, timeout_s=timeout_s, wait_for=wait_for) as (handle, _):
        yield handle


@contextlib.contextmanager
def server_process(
    repo: Path,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
    wait_for: str = "ready",
) -> Iterator[tuple[ServerHandle, subprocess.Popen]]:
    """:func:`running_server` that also yields the process (for tests that signal it and
    read its exit code); ``extra_args`` go after the default flags (a later flag wins).
    The drain period after SIGTERM is 0 unless ``extra_env`` or ``extra_args`` set one."""
    http_port, grpc_port = free_port(), free_port()
    log_path = Path(tempfile.mkstemp(prefix="deepserve-test-", suffix=".log")[1])
    env = {
        **os.environ,
        "DEEPSERVE_GRPC_MAX_MESSAGE_BYTES": str(SMALL_MESSAGE_BYTES),
        "DEEPSERVE_DRAIN_SECONDS": "0",  # tearing a test server down does not wait for load balancers
        **(extra_env or {}),
    }
    cmd = [
        sys.executable, "-m", "server.cli", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--max-request-bytes", str(SMALL_MESSAGE_BYTES), "--log-level", "warning", *extra_args,
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    handle = ServerHandle(http_port, grpc_port, repo, log_path, proc.pid)
    try:
        try:
            _wait_ready(proc, f"http://127.0.0.1:{http_port}/v2/health/{wait_for}", timeout_s)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- server log ---\n{handle.log()}") from None
        yield handle, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_path.unlink(missing_ok=True)
