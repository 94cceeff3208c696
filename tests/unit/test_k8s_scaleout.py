"""Scale-out manifests: deepserve as a KServe custom predictor (docker/kserve/), the HPAs on
per-pod custom metrics and prometheus-adapter's rules (docker/k8s/hpa-custom-metrics.yaml,
docker/k8s/prometheus-adapter-rules.yaml), and their guide in docs/deployment.md.

No cluster, no network. What is checked, and how:

* schema-based, always (``kubernetes-validate``, PyPI, the Kubernetes 1.30 OpenAPI schemas, strict:
  unknown fields fail): the HPAs and the ConfigMap, and the InferenceService's predictor as a
  Pod (KServe's PredictorSpec inlines a PodSpec: every field but KServe's own, listed below, must
  be a PodSpec field, its containers real Containers);
* schema-based where the CRDs are on the machine: the InferenceService and the Prometheus
  Operator's PodMonitor / ServiceMonitor against their CustomResourceDefinitions'
  openAPIV3Schema (strict, like ``kubectl apply --validate=strict``). Nothing is downloaded: point
  ``DEEPSERVE_K8S_CRDS`` at CRD files or folders (``os.pathsep``-separated), e.g. KServe's
  ``charts/kserve-crd/templates/`` and prometheus-operator's ``example/prometheus-operator-crd/``;
  without them that test skips and says so;
* structural, always: KServe's conventions (container ``kserve-container``, first port the HTTP
  port 8080, gRPC port named ``h2c``, ``STORAGE_URI``, Standard / RawDeployment mode, external
  autoscaler), the predictor's command line parsed by the real ``deepserve serve`` CLI, probe
  paths that are real routes, the labels KServe gives predictor pods against the PodMonitor's
  selector, HPA targets and metric names against the adapter's rules, and every metric a rule
  reads against what the server exports;
* PromQL: the adapter's queries, rendered from its templates, parse with ``promtool check rules``
  and give the expected per-pod values on synthetic series with ``promtool test rules`` (Debian's
  ``prometheus``; skips naming it when missing);
* ``kubectl kustomize docker/kserve`` renders (kubectl >= 1.27; skips when missing).

Not checked here: anything a cluster does (KServe's webhooks and controller, the adapter serving
the custom metrics API, the HPA acting on it).
"""

from __future__ import annotations

import os
import re
import shutil
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.unit.test_docker_files import ENTRYPOINT, exported_metric_names, run_tool, settings_env_names, tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s"
KSERVE = ROOT / "docker" / "kserve"
INFERENCE_SERVICE = KSERVE / "inferenceservice.yaml"
KSERVE_HPA = KSERVE / "hpa.yaml"
KSERVE_POD_MONITOR = KSERVE / "podmonitor.yaml"
CUSTOM_HPA = K8S / "hpa-custom-metrics.yaml"
ADAPTER_RULES = K8S / "prometheus-adapter-rules.yaml"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
KUBERNETES_VERSION = "1.30.0"  # as tests/unit/test_docker_files.py
CRD_PATH_VARIABLE = "DEEPSERVE_K8S_CRDS"

# KServe's defaults and names (pkg/constants in kserve/kserve): the predictor container's name, the
# HTTP port it expects, where storage is mounted, the labels and Deployment name of predictor pods.
KSERVE_CONTAINER = "kserve-container"
KSERVE_HTTP_PORT = 8080
KSERVE_MODEL_MOUNT = "/mnt/models"
KSERVE_STANDARD_MODES = {"RawDeployment", "Standard"}  # Standard is RawDeployment's name since KServe 0.16

# PredictorSpec fields that are KServe's own (ComponentExtensionSpec, model formats, storage); the
# rest of a predictor is a PodSpec.
KSERVE_PREDICTOR_FIELDS = {
    "annotations", "autoScaling", "batcher", "canaryTrafficPercent", "containerConcurrency",
    "deploymentStrategy", "huggingface", "labels", "lightgbm", "logger", "maxReplicas", "minReplicas",
    "model", "name", "onnx", "paddle", "pmml", "pytorch", "scaleMetric", "scaleMetricType", "scaleTarget",
    "sklearn", "storageContainerName", "storageUris", "tensorflow", "timeout", "triton", "workerSpec",
    "xgboost",
}

# Custom metrics the HPAs scale on, per pod (the adapter rules' `as` names).
HPA_METRICS = ["deepserve_pending_requests", "deepserve_request_duration_seconds_p99"]
ADAPTER_METRICS = {
    "deepserve_pending_requests": "deepserve_pending_requests",
    "deepserve_generation_requests_waiting": "deepserve_generation_requests_waiting",
    "deepserve_request_duration_seconds_p99": "deepserve_request_duration_seconds_bucket",
}


def load(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


def inference_service() -> dict:
    return load(INFERENCE_SERVICE)


def predictor_container() -> dict:
    (container,) = inference_service()["spec"]["predictor"]["containers"]
    return container


def adapter_rules() -> list[dict]:
    config = load(ADAPTER_RULES)["data"]["config.yaml"]
    return yaml.safe_load(config)["rules"]


def rule_for(metric: str) -> dict:
    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == metric]
    return rule


def series_name(rule: dict) -> str:
    return re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)


def serve_params(argv: list[str]) -> dict:
    """The parameters the real `deepserve serve` CLI parses out of argv (click raises on bad flags)."""
    import typer

    from server.cli import app

    serve = typer.main.get_command(app).commands["serve"]
    with serve.make_context("serve", list(argv)) as ctx:
        return dict(ctx.params)


# -- schema-based: Kubernetes' own kinds -----------------------------------------------------------


def k8s_validate():
    return pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate").validate


@pytest.mark.parametrize("path", [CUSTOM_HPA, ADAPTER_RULES, KSERVE_HPA], ids=lambda p: p.name)
def test_builtin_kinds_match_kubernetes_schemas(path: Path) -> None:
    doc = load(path)
    assert doc["kind"] in {"HorizontalPodAutoscaler", "ConfigMap"}
    k8s_validate()(doc, KUBERNETES_VERSION, strict=True)


def test_predictor_is_a_valid_pod_spec() -> None:
    """KServe's PredictorSpec = its own fields + an inlined PodSpec: validate the PodSpec part as
    a Pod against Kubernetes' schema (strict), so the containers, probes, volumes, security
    contexts and tolerations are schema-checked without KServe's CRD."""
    validate = k8s_validate()
    isvc = inference_service()
    predictor = isvc["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    assert "containers" in pod_spec
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": pod_spec}
    validate(pod, KUBERNETES_VERSION, strict=True)


# -- schema-based where the CRDs are on the machine --------------------------------------------------


def crd_files() -> list[Path]:
    files = []
    for entry in filter(None, os.environ.get(CRD_PATH_VARIABLE, "").split(os.pathsep)):
        path = Path(entry)
        files += sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"}) if path.is_dir() else [path]
    return files


@cache
def crd_schemas() -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema of every CustomResourceDefinition in crd_files()."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schemas = {}
    for path in crd_files():
        for doc in yaml.load_all(path.read_text(), Loader=loader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                for version in spec["versions"]:
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict(schema: object) -> object:
    """An openAPIV3Schema where objects with declared properties reject unknown fields (the API
    server prunes them, `kubectl apply --validate=strict` rejects them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k in {"properties", "items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"}
           else v for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def custom_resources() -> list[tuple[Path, dict]]:
    paths = sorted(KSERVE.glob("*.yaml")) + [K8S / "servicemonitor.yaml", K8S / "podmonitor.yaml"]
    return [(p, d) for p in paths for d in yaml.safe_load_all(p.read_text())
            if d and d["apiVersion"].split("/")[0].endswith((".kserve.io", "monitoring.coreos.com"))]


def test_custom_resources_match_crd_schemas() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    checked, missing = [], []
    for path, doc in custom_resources():
        group, version = doc["apiVersion"].split("/")
        schema = crd_schemas().get((group, version, doc["kind"]))
        if schema is None:
            missing.append(f"{doc['apiVersion']} {doc['kind']} ({path.relative_to(ROOT)})")
            continue
        validator = jsonschema.Draft4Validator(strict(schema))
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{path.relative_to(ROOT)} does not match the {doc['kind']} CRD:\n" + "\n".join(errors)
        checked.append(doc["kind"])
    if missing:
        pytest.skip(f"no CustomResourceDefinition on this machine for {', '.join(missing)} (set {CRD_PATH_VARIABLE} to "
                    f"CRD files or folders; nothing is downloaded); schema-checked: {checked or 'none'}. "
                    "Structural checks of those kinds run in the other tests of this file")


# -- structural: the InferenceService --------------------------------------------------------------


def test_inference_service_is_a_kserve_custom_predictor() -> None:
    isvc = inference_service()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    annotations = isvc["metadata"]["annotations"]
    # Knative mode allows a single container port: HTTP, gRPC and metrics need Standard mode.
    assert annotations["serving.kserve.io/deploymentMode"] in KSERVE_STANDARD_MODES
    # KServe makes no HPA of its own: the one in docker/kserve/hpa.yaml scales the predictor.
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"

    predictor = isvc["spec"]["predictor"]
    assert not set(predictor) & (KSERVE_PREDICTOR_FIELDS - {"minReplicas", "maxReplicas"}), \
        "a custom predictor: no model format, storageUris or KServe scaling fields"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    container = predictor_container()
    assert container["name"] == KSERVE_CONTAINER, "KServe honours STORAGE_URI only on kserve-container"
    assert container["image"].split(":")[0] == "deepserve"


def test_predictor_command_line_parses_with_kserve_ports() -> None:
    container = predictor_container()
    assert container["command"] == ENTRYPOINT[:2], "the image's entrypoint, without its --model-repository"
    params = serve_params(container["args"])
    assert str(params["model_repository"]) == KSERVE_MODEL_MOUNT
    assert params["http_port"] == KSERVE_HTTP_PORT

    ports = container["ports"]
    assert ports[0] == {"name": "http1", "containerPort": params["http_port"], "protocol": "TCP"}, \
        "KServe's Service publishes the first container port on port 80: the HTTP (v2) port"
    named = {p["name"]: p["containerPort"] for p in ports}
    assert named["h2c"] == params["grpc_port"], "KServe (and Knative) find gRPC by the port name h2c"
    assert named["metrics"] == params["metrics_port"]
    assert len(set(named.values())) == len(ports)
    assert all(p["protocol"] == "TCP" for p in ports)


def test_predictor_environment_storage_and_resources() -> None:
    container = predictor_container()
    env = {e["name"]: e for e in container["env"]}
    for name in env:
        assert name in settings_env_names() | {"STORAGE_URI", "PROTOCOL"}, f"{name} is neither KServe's nor deepserve's"
    for flag in ("MODEL_REPOSITORY", "HTTP_PORT", "GRPC_PORT", "METRICS_PORT"):
        assert f"DEEPSERVE_{flag}" not in env, "the ports and repository are flags in args, not variables"
    assert env["PROTOCOL"]["value"] == "v2"
    assert env["DEEPSERVE_CPU_THREADS"]["valueFrom"]["resourceFieldRef"]["containerName"] == KSERVE_CONTAINER

    # The model repository: docker/k8s/pvc.yaml's claim, mounted by KServe at /mnt/models.
    storage = env["STORAGE_URI"]["value"]
    claim = re.fullmatch(r"pvc://([a-z0-9-]+)(/.*)?", storage)
    assert claim and claim.group(1) == load(K8S / "pvc.yaml")["metadata"]["name"], storage
    assert KSERVE_MODEL_MOUNT not in {m["mountPath"] for m in container.get("volumeMounts", [])}, \
        "KServe mounts /mnt/models itself"

    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) >= {"cpu", "memory"}
    predictor = inference_service()["spec"]["predictor"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    assert predictor["securityContext"]["runAsNonRoot"] is True

    # Draining fits the grace period: preStop sleep + drain timeout < terminationGracePeriodSeconds.
    sleep = int(re.search(r"sleep (\d+)", container["lifecycle"]["preStop"]["exec"]["command"][-1]).group(1))
    drain_timeout = float(env["DEEPSERVE_DRAIN_TIMEOUT_SECONDS"]["value"])
    assert sleep + drain_timeout < predictor["terminationGracePeriodSeconds"]


def test_predictor_probes() -> None:
    from server.frontends.http.v2 import router

    routes = {route.path for route in router.routes}
    container = predictor_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    http = serve_params(container["args"])["http_port"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, probe
        assert get["port"] in {http, container["ports"][0]["name"]}, f"{probe} must probe the HTTP port"


def kserve_pod_labels() -> dict[str, str]:
    """The labels KServe puts on predictor pods: the InferenceService's, plus its own two."""
    isvc = inference_service()
    return {**isvc["metadata"].get("labels", {}), **isvc["spec"]["predictor"].get("labels", {}),
            "serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"}


def test_kserve_pods_are_apart_from_the_plain_deployment() -> None:
    """KServe copies the InferenceService's labels onto its pods: they must not fall under
    docker/k8s's Service or monitors, or both deployments in one namespace would mix."""
    labels = kserve_pod_labels()
    for path, selector in (("service.yaml", ("spec", "selector")),
                           ("servicemonitor.yaml", ("spec", "selector", "matchLabels")),
                           ("podmonitor.yaml", ("spec", "selector", "matchLabels"))):
        doc = load(K8S / path)
        for key in selector:
            doc = doc[key]
        assert not doc.items() <= labels.items(), f"docker/k8s/{path} would select the KServe pods"


def test_kserve_pod_monitor_selects_the_predictor() -> None:
    monitor = load(KSERVE_POD_MONITOR)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= kserve_pod_labels().items()
    container_ports = {p["name"] for p in predictor_container()["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in container_ports and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == load(K8S / "podmonitor.yaml")["metadata"]["labels"]["release"]


# -- structural: HPAs and prometheus-adapter rules -------------------------------------------------


def test_hpas_scale_on_the_adapter_metrics() -> None:
    isvc = inference_service()
    targets = {
        CUSTOM_HPA: load(K8S / "deployment.yaml")["metadata"]["name"],
        KSERVE_HPA: f"{isvc['metadata']['name']}-predictor",  # the Deployment KServe makes in Standard mode
    }
    adapter_names = {r["name"]["as"] for r in adapter_rules()}
    for path, deployment in targets.items():
        hpa = load(path)
        assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
        metrics = hpa["spec"]["metrics"]
        assert all(m["type"] == "Pods" for m in metrics), path.name
        names = [m["pods"]["metric"]["name"] for m in metrics]
        assert names == HPA_METRICS, path.name
        assert set(names) <= adapter_names, f"{path.name}: no adapter rule serves {set(names) - adapter_names}"
        for metric in metrics:
            assert metric["pods"]["target"]["type"] == "AverageValue", path.name
        assert "deepserve_generation_requests_waiting" in path.read_text(), "the generation queue, as a comment"
        assert hpa["spec"]["behavior"] == load(K8S / "hpa.yaml")["spec"]["behavior"], path.name

    # The plain Deployment's custom-metrics HPA takes the place of hpa.yaml's: same name.
    assert load(CUSTOM_HPA)["metadata"]["name"] == load(K8S / "hpa.yaml")["metadata"]["name"]
    # The KServe one has the InferenceService's bounds.
    kserve_hpa, predictor = load(KSERVE_HPA)["spec"], isvc["spec"]["predictor"]
    assert (kserve_hpa["minReplicas"], kserve_hpa["maxReplicas"]) == (predictor["minReplicas"], predictor["maxReplicas"])
    assert load(KSERVE_HPA)["spec"]["metrics"] == load(CUSTOM_HPA)["spec"]["metrics"]


def test_adapter_rules_read_real_metrics() -> None:
    config_map = load(ADAPTER_RULES)
    assert config_map["kind"] == "ConfigMap" and set(config_map["data"]) == {"config.yaml"}
    rules = adapter_rules()
    assert {r["name"]["as"]: series_name(r) for r in rules} == ADAPTER_METRICS
    exported = exported_metric_names()
    for rule in rules:
        series = series_name(rule)
        assert series in exported, f"{series} is not exported by the server"
        assert re.search(rule["name"]["matches"], series), rule["name"]
        # Per pod: the series must carry the namespace and pod labels the monitors give them.
        assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
        assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
        query = rule["metricsQuery"]
        for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert template in query, f"{rule['name']['as']}: {template} missing"
        assert set(re.findall(r"<<[^>]*>>", query)) <= {"<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"}
    assert "histogram_quantile(0.99," in rule_for("deepserve_request_duration_seconds_p99")["metricsQuery"]


# -- PromQL with promtool ------------------------------------------------------------------------

POD_MATCHERS = 'namespace="serving",pod=~"deepserve-a|deepserve-b"'


def rendered(rule: dict) -> str:
    """The metricsQuery as the adapter sends it for `pods/*` in namespace `serving` (Go templates
    with << >> delimiters: the three fields used here)."""
    query = (rule["metricsQuery"].replace("<<.Series>>", series_name(rule))
             .replace("<<.LabelMatchers>>", POD_MATCHERS).replace("<<.GroupBy>>", "pod"))
    assert "<<" not in query
    return query


def write_recording_rules(path: Path) -> int:
    rules = [{"record": f"adapter:{r['name']['as']}", "expr": rendered(r)} for r in adapter_rules()]
    path.write_text(yaml.safe_dump({"groups": [{"name": "prometheus-adapter", "rules": rules}]}, sort_keys=False))
    return len(rules)


def test_adapter_promql_parses(tmp_path: Path) -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    path = tmp_path / "adapter_rules.yml"
    count = write_recording_rules(path)
    result = run_tool([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout


# Two pods of the namespace and one elsewhere. deepserve-a: 10 + 6 requests pending over two models,
# 100 requests a minute all between 0.25 s and 0.5 s (p99 = 0.25 + 0.99 * 0.25 = 0.4975 s), 4 sequences
# waiting; deepserve-b: idle (p99 NaN -> 0); other/deepserve-x: busy, never counted.
ADAPTER_TESTS = """
rule_files: [adapter_rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'deepserve_pending_requests{namespace="serving", pod="deepserve-a", model="m", version="1"}'
        values: '10x15'
      - series: 'deepserve_pending_requests{namespace="serving", pod="deepserve-a", model="n", version="1"}'
        values: '6x15'
      - series: 'deepserve_pending_requests{namespace="serving", pod="deepserve-b", model="m", version="1"}'
        values: '0x15'
      - series: 'deepserve_pending_requests{namespace="other", pod="deepserve-x", model="m", version="1"}'
        values: '99x15'
      - series: 'deepserve_generation_requests_waiting{namespace="serving", pod="deepserve-a", model="textgen", version="1"}'
        values: '4x15'
      - series: 'deepserve_request_duration_seconds_bucket{namespace="serving", pod="deepserve-a", model="m", version="1", le="0.25"}'
        values: '0x15'
      - series: 'deepserve_request_duration_seconds_bucket{namespace="serving", pod="deepserve-a", model="m", version="1", le="0.5"}'
        values: '0+100x15'
      - series: 'deepserve_request_duration_seconds_bucket{namespace="serving", pod="deepserve-a", model="m", version="1", le="+Inf"}'
        values: '0+100x15'
      - series: 'deepserve_request_duration_seconds_bucket{namespace="serving", pod="deepserve-b", model="m", version="1", le="0.25"}'
        values: '7x15'
      - series: 'deepserve_request_duration_seconds_bucket{namespace="serving", pod="deepserve-b", model="m", version="1", le="0.5"}'
        values: '7x15'
      - series: 'deepserve_request_duration_seconds_bucket{namespace="serving", pod="deepserve-b", model="m", version="1", le="+Inf"}'
        values: '7x15'
      - series: 'deepserve_request_duration_seconds_bucket{namespace="other", pod="deepserve-x", model="m", version="1", le="+Inf"}'
        values: '0+100x15'
    promql_expr_test:
      - expr: adapter:deepserve_pending_requests
        eval_time: 10m
        exp_samples:
          - labels: 'adapter:deepserve_pending_requests{pod="deepserve-a"}'
            value: 16
          - labels: 'adapter:deepserve_pending_requests{pod="deepserve-b"}'
            value: 0
      - expr: adapter:deepserve_generation_requests_waiting
        eval_time: 10m
        exp_samples:
          - labels: 'adapter:deepserve_generation_requests_waiting{pod="deepserve-a"}'
            value: 4
      - expr: adapter:deepserve_request_duration_seconds_p99
        eval_time: 10m
        exp_samples:
          - labels: 'adapter:deepserve_request_duration_seconds_p99{pod="deepserve-a"}'
            value: 0.4975
          - labels: 'adapter:deepserve_request_duration_seconds_p99{pod="deepserve-b"}'
            value: 0
"""


def test_adapter_queries_on_synthetic_series(tmp_path: Path) -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    write_recording_rules(tmp_path / "adapter_rules.yml")
    tests = tmp_path / "adapter_test.yml"
    tests.write_text(ADAPTER_TESTS)
    result = run_tool([promtool, "test", "rules", str(tests)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- kustomize -------------------------------------------------------------------------------------


def test_kserve_kustomization(tmp_path: Path) -> None:
    kustomization = load(KSERVE / "kustomization.yaml")
    assert {load(KSERVE / r)["kind"] for r in kustomization["resources"]} == {
        "InferenceService", "HorizontalPodAutoscaler", "PodMonitor"}
    assert {p.name for p in KSERVE.glob("*.yaml")} == {*kustomization["resources"], "kustomization.yaml"}
    assert {i["name"] for i in kustomization["images"]} == {predictor_container()["image"].split(":")[0]}

    kubectl = tool("kubectl", "kubectl >= 1.27 renders kustomizations offline; Debian's kubernetes-client 1.20 is too old")
    # Render a copy whose image points elsewhere: the images transformer reaches the predictor container.
    copy = tmp_path / "kserve"
    shutil.copytree(KSERVE, copy)
    text = (copy / "kustomization.yaml").read_text()
    (copy / "kustomization.yaml").write_text(text.replace("newTag: gpu", "newTag: v9").replace(
        "newName: deepserve", "newName: registry.example.com/deepserve"))
    result = run_tool([kubectl, "kustomize", str(copy)])
    assert result.returncode == 0, result.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(result.stdout) if d}
    assert set(docs) == {"InferenceService", "HorizontalPodAutoscaler", "PodMonitor"}
    (container,) = docs["InferenceService"]["spec"]["predictor"]["containers"]
    assert container["image"] == "registry.example.com/deepserve:v9"


# -- the guide -------------------------------------------------------------------------------------


def scale_out_section() -> str:
    text = DEPLOYMENT_DOC.read_text()
    start = text.index("## Scale-out: KServe and autoscaling")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_guide_covers_the_files_and_metrics() -> None:
    section = scale_out_section()
    for path in (INFERENCE_SERVICE, KSERVE_HPA, KSERVE_POD_MONITOR, CUSTOM_HPA, ADAPTER_RULES):
        assert str(path.relative_to(ROOT)) in section, path.name
    for name in (*ADAPTER_METRICS, "deepserve_request_duration_seconds_bucket", "vllm:num_requests_waiting", "h2c",
                 "/v2/health/ready", "/v2/health/live", "--http-port", "--grpc-port", "STORAGE_URI"):
        assert name in section, name
    assert "vllm:num_requests_waiting" in exported_metric_names()


def test_guide_helm_values_match_the_config_map() -> None:
    """The Helm values snippet in the guide carries the ConfigMap's rules, unchanged."""
    blocks = re.findall(r"```yaml\n(.*?)```", scale_out_section(), re.S)
    values = [v for v in map(yaml.safe_load, blocks) if isinstance(v, dict) and "rules" in v]
    assert len(values) == 1, "one Helm values block (rules.custom) in the guide"
    assert values[0]["rules"]["custom"] == adapter_rules()
