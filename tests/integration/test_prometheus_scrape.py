"""A real Prometheus scrapes a real deepserve, and every query of the Grafana dashboard runs.

The server (``server_fixtures.running_server`` on the tiny ``simple`` model) serves /metrics on its
own metrics port, as the Docker images do (``DEEPSERVE_METRICS_PORT``). Prometheus (Debian's
``prometheus`` binary; skipped with a reason when it is not installed) scrapes it every second,
loads ``docker/prometheus/alerts.yml`` and evaluates it every second. After some traffic, every
PromQL expression in ``docker/grafana/dashboards/deepserve.json`` (Grafana variables substituted)
goes through Prometheus' HTTP API and must succeed; request rate, p99 latency and average batch
size must have data. The image's HEALTHCHECK command runs against the server too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.integration import server_fixtures as fx

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "deepserve.json"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
RATE_WINDOW = "30s"  # $__rate_interval: many 1 s scrapes, all after the server started
REQUESTS = 48

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> dict:
        try:
            body = self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:  # 400 / 422: a bad expression
            body = json.loads(exc.read())
        return body


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return binary


@contextlib.contextmanager
def running_prometheus(binary: str, metrics_target: str, workdir: Path, timeout_s: float = 20) -> Iterator[Prometheus]:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "deepserve", "static_configs": [{"targets": [metrics_target]}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = fx.free_port()
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready in {timeout_s} s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield prometheus
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def scalar_values(result: dict) -> list[float]:
    data = result["data"]
    if data["resultType"] == "vector":
        return [float(sample["value"][1]) for sample in data["result"]]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return []


def send_traffic(url: str) -> None:
    """REQUESTS requests of 1-4 rows from 8 threads (so the batcher forms real batches), then an
    invalid one."""
    import tritonclient.http as httpclient

    def one(i: int) -> None:
        client = httpclient.InferenceServerClient(url)
        rows = 1 + i % 4
        a = np.full((rows, 16), i, dtype=np.float32)
        inputs = [httpclient.InferInput("INPUT0", [rows, 16], "FP32"), httpclient.InferInput("INPUT1", [rows, 16], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
        client.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(REQUESTS)))

    send_invalid(url)


def send_invalid(url: str) -> None:
    """One request with an input the model does not have: 400, counted as reason INVALID."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url)
    bad = httpclient.InferInput("NOT_AN_INPUT", [1, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException, match="400"):
        client.infer("simple", [bad])
    client.close()


def dashboard_queries() -> list[tuple[str, str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            found.extend((panel["title"], t["refId"], t["expr"]) for t in panel.get("targets", []) if t.get("expr"))

    walk(board["panels"])
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[fx.ServerHandle, Prometheus, int]]:
    binary = prometheus_binary()
    with tempfile.TemporaryDirectory(prefix="deepserve-prom-") as tmp:
        workdir = Path(tmp)
        repo = fx.build_repository(workdir / "repo")
        metrics_port = fx.free_port()
        with fx.running_server(repo, extra_env={"DEEPSERVE_METRICS_PORT": str(metrics_port)}) as server:
            target = f"127.0.0.1:{metrics_port}"
            with running_prometheus(binary, target, workdir) as prometheus:
                # A first scrape before the traffic, so rates have a starting point. A counter series
                # appears with its first increment (the failure counter's reason label), and
                # Prometheus takes a new series' first sample as its start: fail once before it.
                send_invalid(server.http_url)
                first = 'deepserve_request_failure_total{job="deepserve", model="simple", reason="INVALID"}'
                wait_for(lambda: scalar_values(prometheus.query(first)) == [1.0], 15, "the first scrape")
                send_traffic(server.http_url)
                done = (f'sum(deepserve_request_success_total{{job="deepserve", model="simple"}}) >= {REQUESTS}'
                        f' and on() sum({first}) >= 2')
                wait_for(lambda: scalar_values(prometheus.query(done)), 15, "a scrape after the traffic")
                yield server, prometheus, metrics_port


def test_every_dashboard_query_runs(stack) -> None:
    _, prometheus, metrics_port = stack
    all_values = {"job": ".*", "instance": ".*", "model": ".*", "__rate_interval": RATE_WINDOW, "__interval": "1s"}
    one_target = {"job": "deepserve", "instance": f"127.0.0.1:{metrics_port}", "model": "simple",
                  "__rate_interval": RATE_WINDOW, "__interval": "1s"}
    queries = dashboard_queries()
    assert len(queries) > 20
    results: dict[tuple[str, str], dict] = {}
    failures = []
    for values in (all_values, one_target):
        for title, ref, expr in queries:
            body = prometheus.query(substitute(expr, values))
            if body.get("status") != "success":
                failures.append(f"{title} {ref}: {body.get('error')}\n  {expr}")
            results[(title, ref)] = body
    assert not failures, "\n".join(failures)

    def values_of(title: str, ref: str = "A") -> list[float]:
        got = scalar_values(results[(title, ref)])
        assert got, f"{title} {ref} returned no data: {results[(title, ref)]}"
        return got

    # The key ones have data, and it makes sense.
    (rate,) = values_of("Request rate by model")
    assert rate > 0
    for title, ref in [("Request latency p50 / p95 / p99", "C"), ("p99 latency", "A")]:
        (p99,) = values_of(title, ref)
        assert 0 < p99 < 10 and math.isfinite(p99)
    rows_per_execution, histogram_mean = values_of("Average batch size", "A"), values_of("Average batch size", "B")
    assert rows_per_execution[0] >= 1
    assert rows_per_execution[0] == pytest.approx(histogram_mean[0], rel=1e-6)
    (failures_per_s,) = values_of("Failure rate by reason")
    assert failures_per_s > 0
    assert values_of("Servers up") == [1.0]
    for title in ["Queue vs compute time (mean)", "Pending and in-flight requests", "Model load duration"]:
        values_of(title)


def test_dashboard_variables_have_values(stack) -> None:
    """Grafana's label_values(selector, label) variables, through the same API Grafana calls."""
    _, prometheus, metrics_port = stack
    board = json.loads(DASHBOARD.read_text())
    expected = {"job": "deepserve", "instance": f"127.0.0.1:{metrics_port}", "model": "simple"}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        definition = variable["definition"]
        assert definition.startswith("label_values(") and definition.endswith(")")
        selector, _, label = definition[len("label_values("):-1].rpartition(",")
        selector = substitute(selector.strip(), {"job": ".*", "instance": ".*", "model": ".*"})
        body = prometheus.get(f"/api/v1/label/{label.strip()}/values", **{"match[]": selector})
        assert body["status"] == "success"
        assert expected[variable["name"]] in body["data"], (variable["name"], body["data"])


def test_alert_rules_evaluate_without_errors(stack) -> None:
    _, prometheus, _ = stack
    expected = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}

    def evaluated() -> dict[str, dict] | None:
        rules = {r["name"]: r for g in prometheus.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]}
        if set(rules) != expected or any(r.get("lastEvaluation", "").startswith("0001") for r in rules.values()):
            return None
        return rules

    rules = wait_for(evaluated, 10, "every alert rule to be evaluated")
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # A healthy server on a light load raises none of them.
    firing = prometheus.get("/api/v1/alerts")["data"]["alerts"]
    assert [a for a in firing if a["state"] == "firing"] == []


def test_image_healthcheck_command(stack) -> None:
    """The Dockerfiles' HEALTHCHECK (exec form) succeeds on a ready server and fails without one."""
    from tests.unit.test_docker_files import DOCKERFILES, exec_form, parse_dockerfile

    server, _, _ = stack
    for path in DOCKERFILES.values():
        healthcheck = parse_dockerfile(path)[1][-1].all("HEALTHCHECK")[-1].args
        argv = exec_form(healthcheck[healthcheck.index("CMD") + len("CMD"):].strip())
        assert argv[0] == "python3"
        command = [sys.executable, *argv[1:]]
        ok = subprocess.run(command, env={"DEEPSERVE_HTTP_PORT": str(server.http_port)}, capture_output=True,
                            timeout=10, check=False)
        assert ok.returncode == 0, ok.stderr
        down = subprocess.run(command, env={"DEEPSERVE_HTTP_PORT": str(fx.free_port())}, capture_output=True,
                              timeout=10, check=False)
        assert down.returncode != 0
