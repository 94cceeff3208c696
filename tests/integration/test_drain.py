"""Graceful drain on SIGTERM (issue #13): a real server under 64 concurrent clients.

Every request must be answered: a 200 with the right answer, or a 503 with ``Retry-After``
(gRPC UNAVAILABLE) saying the server is shutting down. A connection error is a failure,
except after the server has logged that it closes its listeners (the last step before it
exits); no client sends anything once it has seen the process exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration import server_fixtures as fx

DRAIN_S = 2.0  # the drain period of the load test
DRAIN_TIMEOUT_S = 20.0
ANSWER_TIMEOUT_S = 30.0  # a request unanswered this long fails the test
SHUTTING_DOWN = "the server is shutting down"
GAVE_UP = "stopped waiting for this request"

SLOW_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 64
input [ {{ name: "X" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT64 dims: [ 1 ] }} ]
dynamic_batching {{ }}
parameters {{ key: "delay_ms" value: {{ string_value: "{delay_ms}" }} }}
"""

SLOW_MODEL = """
import time


class Slow:
    \"\"\"Y = 2 X + 1, after delay_ms per batch.\"\"\"

    def setup(self, context):
        self.delay_s = float(context.parameters["delay_ms"]) / 1000

    def execute(self, inputs):
        time.sleep(self.delay_s)
        return {"Y": inputs["X"] * 2 + 1}
"""

STREAM_CONFIG = """
name: "slow_stream"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_INT64 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
instance_group [ { kind: KIND_CPU count: 16 } ]
"""

STREAM_MODEL = """
import time

import numpy as np


class SlowStream:
    \"\"\"Decoupled: three responses Y = 10 X + i, 100 ms apart.\"\"\"

    def execute(self, inputs):
        x = int(inputs["X"][0])
        for i in range(3):
            time.sleep(0.1)
            yield {"Y": np.array([10 * x + i], np.int64)}
"""


def build_drain_repository(repo: Path) -> Path:
    for name, delay_ms in (("slow", 200), ("stuck", 60_000)):
        fx.write_model(repo, name, SLOW_CONFIG.format(name=name, delay_ms=delay_ms), {"model.py": SLOW_MODEL})
    fx.write_model(repo, "slow_stream", STREAM_CONFIG, {"model.py": STREAM_MODEL})
    return repo


@pytest.fixture(scope="module")
def drain_repo(tmp_path_factory) -> Path:
    return build_drain_repository(tmp_path_factory.mktemp("drain-repo"))


@contextlib.contextmanager
def draining_server(repo: Path, drain_s: float, timeout_s: float) -> Iterator[tuple[fx.ServerHandle, subprocess.Popen]]:
    args = ("--drain-seconds", str(drain_s), "--drain-timeout-seconds", str(timeout_s), "--log-level", "info")
    with fx.server_process(repo, extra_args=args) as (handle, proc):
        yield handle, proc


# -- one record per request ----------------------------------------------------------------


@dataclasses.dataclass
class Record:
    kind: str  # http, grpc, grpc_stream, sse
    sent: float  # time.time() just before sending
    outcome: str = ""  # ok | drain (503 / UNAVAILABLE, shutting down) | gave_up (the same, at the timeout) | conn | bad
    detail: str = ""
    ended: float = 0.0


class Load:
    """Client threads that each send one request after another until told to stop or until
    they see the server process gone (they check before every request)."""

    def __init__(self, handle: fx.ServerHandle, proc: subprocess.Popen) -> None:
        self.handle, self.proc = handle, proc
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.oks: dict[int, int] = {}

    def start(self, kind: str, count: int, one: Callable[..., Callable[[int], tuple[str, str]]]) -> None:
        for _ in range(count):
            index = len(self.threads)
            self.threads.append(threading.Thread(target=self._run, args=(index, kind, one), daemon=True))
            self.threads[-1].start()

    def _run(self, index: int, kind: str, factory) -> None:
        with factory(self.handle) as send:
            k = 0
            while not self.stop.is_set() and self.proc.poll() is None:
                x = index * 1_000_000 + k
                k += 1
                record = Record(kind, time.time())
                try:
                    record.outcome, record.detail = send(x)
                except Exception as exc:  # noqa: BLE001 - recorded and judged by the test
                    record.outcome, record.detail = "bad", f"{exc!r}: {exc}"
                record.ended = time.time()
                with self.lock:
                    self.records.append(record)
                    if record.outcome == "ok":
                        self.oks[index] = self.oks.get(index, 0) + 1
                if record.outcome in ("conn", "bad"):
                    return  # this client's connection is gone
                if record.outcome != "ok":
                    self.stop.wait(0.05)  # a short pause before retrying after a 503 (pacing only)

    def join(self) -> list[str]:
        """Names of the threads still waiting for an answer after ``ANSWER_TIMEOUT_S``."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))
        return [t.name for t in self.threads if t.is_alive()]


def _http_outcome(response: httpx.Response) -> tuple[str, str] | None:
    if response.status_code == 503 and response.headers.get("retry-after"):
        message = response.json()["error"]
        if GAVE_UP in message:
            return "gave_up", message
        if SHUTTING_DOWN in message:
            return "drain", message
    if response.status_code != 200:
        return "bad", f"{response.status_code} {response.headers} {response.text}"
    return None


def _grpc_outcome(error: Exception) -> tuple[str, str]:
    message = str(error)
    if SHUTTING_DOWN in message and ("UNAVAILABLE" in message or (
            isinstance(error, InferenceServerException) and error.status() == "StatusCode.UNAVAILABLE")):
        return ("gave_up" if GAVE_UP in message else "drain"), message
    if isinstance(error, InferenceServerException) and error.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"):
        return "conn", message
    return "bad", message


@contextlib.contextmanager
def http_unary(handle: fx.ServerHandle, model: str = "slow"):
    with httpx.Client(base_url=f"http://{handle.http_url}", timeout=ANSWER_TIMEOUT_S) as client:

        def send(x: int) -> tuple[str, str]:
            body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "INT64", "data": [x]}]}
            try:
                response = client.post(f"/v2/models/{model}/infer", json=body)
            except httpx.TransportError as exc:
                return "conn", repr(exc)
            if (outcome := _http_outcome(response)) is not None:
                return outcome
            data = response.json()["outputs"][0]["data"]
            return ("ok", "") if data == [2 * x + 1] else ("bad", f"{x} -> {data}")

        yield send


@contextlib.contextmanager
def grpc_unary(handle: fx.ServerHandle, model: str = "slow"):
    client = grpcclient.InferenceServerClient(handle.grpc_url)

    def send(x: int) -> tuple[str, str]:
        inp = grpcclient.InferInput("X", [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([[x]], np.int64))
        try:
            result = client.infer(model, [inp], client_timeout=ANSWER_TIMEOUT_S)
        except InferenceServerException as exc:
            return _grpc_outcome(exc)
        y = result.as_numpy("Y").tolist()
        return ("ok", "") if y == [[2 * x + 1]] else ("bad", f"{x} -> {y}")

    try:
        yield send
    finally:
        client.close()


@contextlib.contextmanager
def grpc_stream(handle: fx.ServerHandle, model: str = "slow_stream"):
    """One ModelStreamInfer call per client; each request waits for its responses."""
    client = grpcclient.InferenceServerClient(handle.grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=120)
    expected_count = 3 if model == "slow_stream" else 1

    def send(x: int) -> tuple[str, str]:
        inp = grpcclient.InferInput("X", [1] if model == "slow_stream" else [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([x] if model == "slow_stream" else [[x]], np.int64))
        try:
            client.async_stream_infer(model, [inp], request_id=str(x))
        except InferenceServerException as exc:  # the stream has ended (its error went to the callback)
            return "conn", str(exc)
        values = []
        while len(values) < expected_count:
            try:
                result, error = answers.get(timeout=ANSWER_TIMEOUT_S)
            except queue.Empty:
                return "bad", f"request {x}: no answer within {ANSWER_TIMEOUT_S} s"
            if error is not None:
                return _grpc_outcome(error)
            if result.get_response().id != str(x):
                return "bad", f"request {x}: a response for {result.get_response().id}"
            values.append(int(result.as_numpy("Y").reshape(-1)[0]))
        expected = [10 * x, 10 * x + 1, 10 * x + 2] if model == "slow_stream" else [2 * x + 1]
        return ("ok", "") if values == expected else ("bad", f"{x} -> {values}")

    try:
        yield send
    finally:
        with contextlib.suppress(Exception):
            client.stop_stream()
        client.close()


@contextlib.contextmanager
def sse_stream(handle: fx.ServerHandle):
    with httpx.Client(base_url=f"http://{handle.http_url}", timeout=ANSWER_TIMEOUT_S) as client:

        def send(x: int) -> tuple[str, str]:
            try:
                with client.stream("POST", "/v2/models/slow_stream/generate_stream", json={"X": x}) as response:
                    if response.status_code != 200:
                        response.read()
                        return _http_outcome(response) or ("bad", "unreachable")
                    events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
            except httpx.TransportError as exc:
                return "conn", repr(exc)
            errors = [e["error"] for e in events if "error" in e]
            if errors:
                return ("gave_up" if GAVE_UP in errors[0] else "bad"), errors[0]
            values = [e["Y"] for e in events]
            return ("ok", "") if values == [10 * x, 10 * x + 1, 10 * x + 2] else ("bad", f"{x} -> {values}")

        yield send


# -- health, sampled over both protocols -----------------------------------------------------


@dataclasses.dataclass
class Probe:
    name: str  # http_ready, http_live, grpc_ready, grpc_live
    started: float
    ended: float
    value: int | bool | str  # HTTP status, gRPC answer, or "conn"


def probe_health(handle: fx.ServerHandle, proc: subprocess.Popen, stop: threading.Event, probes: list[Probe]) -> None:
    """Readiness and liveness over HTTP and gRPC, one after another until the process is gone."""
    grpc = grpcclient.InferenceServerClient(handle.grpc_url)
    with httpx.Client(base_url=f"http://{handle.http_url}", timeout=10) as http:

        def http_status(path: str) -> int | str:
            try:
                return http.get(path).status_code
            except httpx.TransportError:
                return "conn"

        def grpc_answer(call) -> bool | str:
            try:
                return call(client_timeout=10)
            except InferenceServerException:
                return "conn"

        checks = {
            "http_ready": lambda: http_status("/v2/health/ready"),
            "http_live": lambda: http_status("/v2/health/live"),
            "grpc_ready": lambda: grpc_answer(grpc.is_server_ready),
            "grpc_live": lambda: grpc_answer(grpc.is_server_live),
        }
        while not stop.is_set():
            for name, check in checks.items():
                if proc.poll() is not None:
                    grpc.close()
                    return
                started = time.time()
                value = check()
                probes.append(Probe(name, started, time.time(), value))
            stop.wait(0.05)
    grpc.close()


def logged_at(log: str, text: str) -> float:
    """time.time() of the server log line that contains ``text`` (its asctime, to the ms)."""
    for line in log.splitlines():
        if text in line:
            stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
            assert stamp, line
            return datetime.datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError(f"no log line with {text!r}:\n{log}")


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


CLOSING = "closing the listeners"


def test_sigterm_drains_under_64_clients(drain_repo: Path) -> None:
    with draining_server(drain_repo, DRAIN_S, DRAIN_TIMEOUT_S) as (handle, proc):
        load = Load(handle, proc)
        load.start("http", 24, http_unary)
        load.start("grpc", 24, grpc_unary)
        load.start("grpc_stream", 8, grpc_stream)
        load.start("sse", 8, sse_stream)
        assert len(load.threads) == 64
        wait_for(lambda: len(load.oks) == 64, "every client's first answer")
        probes: list[Probe] = []
        stop_probing = threading.Event()
        prober = threading.Thread(target=probe_health, args=(handle, proc, stop_probing, probes), daemon=True)
        prober.start()
        wait_for(lambda: len(probes) >= 8, "health probes before SIGTERM")

        sigterm_at = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=DRAIN_TIMEOUT_S)
        finally:
            load.stop.set()
            stop_probing.set()
        stuck = load.join()
        prober.join(ANSWER_TIMEOUT_S)
        log = handle.log()

    assert code == 0, log
    assert not stuck, f"clients without an answer: {stuck}"
    assert "Traceback" not in log, log
    closed_at = logged_at(log, CLOSING)
    assert logged_at(log, "draining:") <= closed_at

    failures = [r for r in load.records if r.outcome == "bad" or (r.outcome == "conn" and r.ended < closed_at)
                or r.outcome == "gave_up"]
    assert not failures, (closed_at, sigterm_at, failures[:10])
    # Requests in flight when SIGTERM came were finished, not refused.
    finished = [r for r in load.records if r.sent < sigterm_at < r.ended and r.outcome == "ok"]
    assert {r.kind for r in finished} == {"http", "grpc", "grpc_stream", "sse"}, finished
    # New requests during the drain were answered 503 / UNAVAILABLE, on every kind of call.
    refused = [r for r in load.records if r.outcome == "drain"]
    assert {r.kind for r in refused} == {"http", "grpc", "grpc_stream", "sse"}
    assert all(r.ended >= sigterm_at for r in refused)
    # Nothing was refused at the TCP level before the server began to close.
    early_conn = [r for r in load.records if r.outcome == "conn" and r.ended < closed_at]
    assert not early_conn, early_conn

    # Readiness: true before SIGTERM, then false for good; liveness true until the close. A
    # probe may fail to connect only once the server has begun to close.
    assert not [p for p in probes if p.value == "conn" and p.ended < closed_at], probes
    answered = [p for p in probes if p.value != "conn"]
    assert all(p.value in (200, True) for p in answered if p.ended < sigterm_at), probes
    assert all(p.value in (200, True) for p in answered if p.name.endswith("_live")), probes
    for name, not_ready in (("http_ready", 400), ("grpc_ready", False)):
        ready = [p.value for p in answered if p.name == name and p.started > sigterm_at]
        assert not_ready in ready, (name, probes)
        assert all(value == not_ready for value in ready[ready.index(not_ready):]), (name, probes)


def _inflight(handle: fx.ServerHandle, model: str) -> float:
    text = httpx.get(f"http://{handle.http_url}/metrics").text
    match = re.search(rf'deepserve_inflight_requests{{model="{model}",version="1"}} (\S+)', text)
    return float(match[1]) if match else 0.0


@pytest.mark.parametrize("ending", ["timeout", "second_signal"])
def test_requests_still_running_when_the_drain_ends_get_503(drain_repo: Path, ending: str) -> None:
    """A model stuck for a minute: at the drain timeout (or at a second SIGTERM, long before
    the drain period and timeout end) its requests are answered 503 / UNAVAILABLE, and the
    process exits 0 without waiting for the model."""
    timeout_s = 1.5 if ending == "timeout" else 60.0
    drain_s = 0.0 if ending == "timeout" else 60.0
    with draining_server(drain_repo, drain_s, timeout_s) as (handle, proc):
        results: list[Record] = []
        threads = []
        for kind, factory in (("http", http_unary), ("grpc", grpc_unary), ("grpc_stream", grpc_stream)):
            for i in range(3):
                def run(kind=kind, factory=factory, i=i):
                    with factory(handle, "stuck") as send:
                        record = Record(kind, time.time())
                        record.outcome, record.detail = send(1000 * i + 7)
                        record.ended = time.time()
                        results.append(record)

                threads.append(threading.Thread(target=run, daemon=True))
                threads[-1].start()
        wait_for(lambda: _inflight(handle, "stuck") == 9, "9 requests in the stuck model")

        proc.send_signal(signal.SIGTERM)
        if ending == "second_signal":
            wait_for(lambda: httpx.get(f"http://{handle.http_url}/v2/health/ready").status_code == 400, "not ready")
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=min(timeout_s, 20.0) + 10)  # 20 s: long before 60 s
        for thread in threads:
            thread.join(ANSWER_TIMEOUT_S)
        log = handle.log()

    assert code == 0, log
    assert len(results) == 9, (results, log)
    assert all(r.outcome == "gave_up" for r in results), results
    why = "the drain timeout" if ending == "timeout" else "a second signal"
    assert f"9 request(s) still running at {why}" in log, log
