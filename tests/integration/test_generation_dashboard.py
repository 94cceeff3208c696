"""A real Prometheus scrapes a real deepserve, and every query of the generation dashboard runs.

The same stack as ``test_prometheus_scrape`` (its ``stack`` fixture: the tiny ``simple`` model on
its own metrics port, Debian's ``prometheus`` scraping it every second; skipped with a reason when
Prometheus is not installed). No generation model is loaded there, so the generation families are
registered without children: every PromQL expression in
``docker/grafana/dashboards/generation.json`` (Grafana variables substituted) must still go
through Prometheus' HTTP API without an error, the ``or vector(0)`` stats must answer 0, and every
metric a query names must be a family in the server's /metrics exposition (its ``# TYPE`` line).
"""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.integration import test_prometheus_scrape as scrape
from tests.integration.test_prometheus_scrape import RATE_WINDOW, scalar_values, substitute
from tests.unit.test_docker_files import GENERATION_DASHBOARD, dashboard, dashboard_targets

pytestmark = pytest.mark.timeout(60)

# The scrape test's module fixture (a server, Prometheus scraping it, some traffic), one per module.
stack = scrape.stack

SAMPLE_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def exposition_families(metrics_port: int) -> dict[str, str]:
    """{family name: type} from the server's /metrics text (the names Prometheus' samples carry:
    counters with _total, histograms without _bucket / _sum / _count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return dict(re.findall(r"^# TYPE (\S+) (\w+)$", text, flags=re.MULTILINE))


def family_of(sample_name: str, families: dict[str, str]) -> str | None:
    if sample_name in families:
        return sample_name
    base = SAMPLE_SUFFIX.sub("", sample_name)
    return base if families.get(base) == "histogram" else None


def test_generation_families_are_exported_without_a_generation_model(stack) -> None:
    _, _, metrics_port = stack
    families = exposition_families(metrics_port)
    generation = {name: kind for name, kind in families.items() if name.startswith(("deepserve_generation_", "vllm:"))}
    assert generation == {
        "deepserve_generation_time_to_first_token_seconds": "histogram",
        "deepserve_generation_time_per_output_token_seconds": "histogram",
        "deepserve_generation_e2e_request_latency_seconds": "histogram",
        "deepserve_generation_prompt_tokens_total": "counter",
        "deepserve_generation_output_tokens_total": "counter",
        "deepserve_generation_requests_running": "gauge",
        "deepserve_generation_requests_waiting": "gauge",
        "deepserve_generation_kv_cache_usage_ratio": "gauge",
        "deepserve_generation_prefix_cache_queries_total": "counter",
        "deepserve_generation_prefix_cache_hits_total": "counter",
        "deepserve_generation_preemptions_total": "counter",
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
    }


def test_every_generation_dashboard_query_runs(stack) -> None:
    _, prometheus, metrics_port = stack
    families = exposition_families(metrics_port)
    queries = dashboard_targets(GENERATION_DASHBOARD)
    assert len(queries) >= 20
    all_values = {"job": ".*", "instance": ".*", "model": ".*", "__rate_interval": RATE_WINDOW, "__interval": "1s"}
    one_target = {"job": "deepserve", "instance": f"127.0.0.1:{metrics_port}", "model": "textgen",
                  "__rate_interval": RATE_WINDOW, "__interval": "1s"}
    failures, unknown = [], []
    for title, ref, expr in queries:
        names = set(re.findall(r"\b(deepserve_[a-z0-9_]+|vllm:[a-z0-9_]+)", expr))
        assert names, f"{title} {ref} names no metric: {expr}"
        unknown += [f"{title} {ref}: {n}" for n in sorted(names) if family_of(n, families) is None]
        for values in (all_values, one_target):
            body = prometheus.query(substitute(expr, values))
            if body.get("status") != "success":
                failures.append(f"{title} {ref}: {body.get('error')}\n  {expr}")
                continue
            if "or vector(0)" in expr:
                # No generation model here: the stat falls back to 0 instead of "No data".
                assert scalar_values(body) == [0.0], (title, ref, body)
    assert not failures, "\n".join(failures)
    assert not unknown, "not in the server's /metrics:\n" + "\n".join(unknown)


def test_generation_dashboard_variables_resolve(stack) -> None:
    """Grafana's label_values(selector, label) variables, through the API Grafana calls: job and
    instance list the server; model lists generation models (none on this server), and its
    selector names a family the server exports."""
    _, prometheus, metrics_port = stack
    families = exposition_families(metrics_port)
    expected = {"job": ["deepserve"], "instance": [f"127.0.0.1:{metrics_port}"], "model": []}
    variables = [v for v in dashboard(GENERATION_DASHBOARD)["templating"]["list"] if v["type"] == "query"]
    assert [v["name"] for v in variables] == ["job", "instance", "model"]
    for variable in variables:
        definition = variable["definition"]
        assert definition.startswith("label_values(") and definition.endswith(")")
        selector, _, label = definition[len("label_values("):-1].rpartition(",")
        metric = re.match(r"[a-z_:][a-z0-9_:]*", selector.strip()).group(0)
        assert family_of(metric, families), (variable["name"], metric)
        selector = substitute(selector.strip(), {"job": ".*", "instance": ".*", "model": ".*"})
        body = prometheus.get(f"/api/v1/label/{label.strip()}/values", **{"match[]": selector})
        assert body["status"] == "success"
        assert body["data"] == expected[variable["name"]], (variable["name"], body["data"])
