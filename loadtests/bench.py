"""Every serving benchmark in one run, on this machine, written to ``docs/benchmarks.md``.

    .venv/bin/python -m loadtests.bench --out docs/benchmarks.md [--profile-dir /tmp/prof]

What it does, in order (each load point: ``--warmup`` s thrown away, then ``--duration`` s
measured, with ``loadtests.loadgen`` in this process, on the same cores as the server):

1. builds the benchmark repository with our own exporter (``models build-bench``) in a
   temp folder, plus ``resnet_bench_i2`` (resnet_bench with ``instance_group.count: 2``);
2. in-process ONNX Runtime with the server's own session (``loadtests.inprocess``):
   resnet_bench at batch 1, 8, 16, 32, 64; mlp_tiny at batch 1;
3. deepserve (HTTP only, binary tensors as tritonclient sends them): resnet_bench, mlp_tiny
   and their ``_nobatch`` twins at 1, 8, 32, 64 clients; resnet_bench_i2 at 64; mlp_tiny
   with JSON tensors at 32; with ``--profile-dir``, two extra profiled runs (py-spy);
4. the hand-written FastAPI endpoint (``loadtests.baselines.fastapi_naive``) on mlp_tiny,
   JSON and raw bytes, with ONNX Runtime's default session and with deepserve's options;
   with deepserve's options also raw bytes on both models at 1, 8, 32, 64 clients (the
   peers' table);
5. LitServe (``loadtests.baselines.litserve_onnx``, in ``--peer-python``'s venv) on both
   models, JSON list and base64-in-JSON, at 1, 8, 32, 64 clients;
6. KServe's Python model server (``loadtests.baselines.kserve_onnx``, in its own venv under
   ``--peers-root``) on both models, v2 JSON and v2 binary, at 1, 8, 32, 64 clients;
7. Ray Serve with ``@serve.batch`` (``loadtests.baselines.rayserve_onnx``, its own venv) on
   both models, JSON list, at 1, 8, 32, 64 clients;

then writes the raw figures as JSON (``--json``), the report (``loadtests.report``) and the
peers' plots (``loadtests/plots.py`` in the ``plots`` venv, into ``--img-dir``). The peers'
venvs come from ``.venv/bin/python -m loadtests.peers setup``; a missing one skips its phase.
Benchmarks, not tests: nothing is asserted; a missed target is reported as measured.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests import inprocess, peers, report, scenarios
from loadtests.loadgen import LoadConfig, Scenario, new_event_loop, probe, run_load
from loadtests.procs import ServerProcess, busy_cpu_s, free_port, own_cpu_s, wait_for_quiet

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CONCURRENCY = (1, 8, 32, 64)
MODELS = {"resnet_bench": (1, 3, 64, 64), "mlp_tiny": (1, 64)}  # per-request input shape
RESNET_BATCHES = (1, 8, 16, 32, 64)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.loop: asyncio.AbstractEventLoop = new_event_loop()
        self.repo = work / "repo"
        self.inputs = {m: np.random.default_rng(0).standard_normal(s).astype(np.float32) for m, s in MODELS.items()}
        self.expected: dict[str, np.ndarray] = {}
        self.data: dict = {"points": [], "inprocess": {}, "servers": {}, "profiles": {}, "configs": {}}
        self.extra_s = 0.0  # seconds spent waiting out other processes and redoing points

    # -- one load point ------------------------------------------------------------

    def load(self, server: ServerProcess, model: str, fmt: str, scenario: Scenario, concurrency: int,
             profile: str | None = None) -> dict:
        """Measure one point; redo it (up to ``--retries``) when other processes on the machine
        took more than ``--max-other-cores`` meanwhile, keeping the quietest attempt."""
        entry = {"server": server.name, "model": model, "format": fmt, "concurrency": concurrency,
                 "profiled": profile is not None}
        problem = self.loop.run_until_complete(probe(scenario))
        if problem is not None:
            entry["failed"] = problem
            print(f"  {server.name:<22} {model:<22} {fmt:<11} c={concurrency:<3} FAILED: {problem}", file=sys.stderr)
            self.data["points"].append(entry)
            return entry
        best: dict | None = None
        for attempt in range(1 + self.args.retries):
            if attempt:
                self._wait_quiet(server)
            result = self._measure(server, scenario, concurrency, profile)
            result["attempts"] = attempt + 1
            if best is None or result["other_cpu_cores"] < best["other_cpu_cores"]:
                best = result
            if best["other_cpu_cores"] <= self.args.max_other_cores or profile or self.extra_s_left() <= 0:
                break
        entry.update(best)
        print(f"  {server.name:<22} {model:<22} {fmt:<11} c={concurrency:<3} {entry['rps']:>8.1f} req/s  "
              f"p50 {entry['p50_ms']:>7.2f} ms  p99 {entry['p99_ms']:>7.2f} ms  err {entry['errors']}  "
              f"cpu srv {entry['server_cpu_cores']} gen {entry['loadgen_cpu_cores']} "
              f"other {entry['other_cpu_cores']} (x{entry['attempts']})", file=sys.stderr)
        self.data["points"].append(entry)
        return entry

    def _measure(self, server: ServerProcess, scenario: Scenario, concurrency: int, profile: str | None) -> dict:
        config = LoadConfig(concurrency, self.args.duration, self.args.warmup)
        spy = self._start_profile(server, profile, config) if profile else None
        server0, own0, busy0, t0 = server.cpu_s(), own_cpu_s(), busy_cpu_s(), time.perf_counter()
        result = self.loop.run_until_complete(run_load(scenario, config))
        elapsed = time.perf_counter() - t0
        entry = result.as_dict()
        server_cores, own_cores = (server.cpu_s() - server0) / elapsed, (own_cpu_s() - own0) / elapsed
        entry["server_cpu_cores"] = round(server_cores, 2)
        entry["loadgen_cpu_cores"] = round(own_cores, 2)
        entry["other_cpu_cores"] = round(max(0.0, (busy_cpu_s() - busy0) / elapsed - server_cores - own_cores), 2)
        if spy is not None:
            spy.wait()
            self.data["profiles"][profile] = {"raw": str(Path(self.args.profile_dir) / f"{profile}.txt"),
                                              "point": dict(entry)}
        return entry

    def extra_s_left(self) -> float:
        return self.args.max_extra_s - self.extra_s

    def _wait_quiet(self, *servers: ServerProcess) -> None:
        t0 = time.monotonic()
        quiet, load = wait_for_quiet(self.args.max_other_cores / 2, min(60.0, max(0.0, self.extra_s_left())), *servers)
        self.extra_s += time.monotonic() - t0 + self.args.duration + self.args.warmup
        if not quiet:
            print(f"  (other processes still use {load:.2f} cores)", file=sys.stderr)

    def _start_profile(self, server: ServerProcess, name: str, config: LoadConfig) -> subprocess.Popen:
        out = Path(self.args.profile_dir)
        out.mkdir(parents=True, exist_ok=True)
        seconds = max(1, int(config.warmup_s + config.duration_s - 1))
        cmd = [str(Path(PY).parent / "py-spy"), "record", "--pid", str(server.pid), "--duration", str(seconds),
               "--rate", "100", "--threads", "--nonblocking", "--format", "raw", "--output", str(out / f"{name}.txt")]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # -- phases --------------------------------------------------------------------

    def build_repository(self) -> None:
        subprocess.run([PY, "-m", "server.cli", "models", "build-bench", "--out", str(self.repo)], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
        src, dst = self.repo / "resnet_bench", self.repo / "resnet_bench_i2"
        shutil.copytree(src, dst)
        text = (src / "config.pbtxt").read_text()
        text = text.replace('name: "resnet_bench"', 'name: "resnet_bench_i2"', 1).replace("count: 1", "count: 2", 1)
        (dst / "config.pbtxt").write_text(text)
        for model_dir in sorted(self.repo.iterdir()):
            self.data["configs"][model_dir.name] = (model_dir / "config.pbtxt").read_text()

    def run_inprocess(self) -> None:
        for model in MODELS:
            runtime, options = inprocess.load_like_server(self.repo / model)
            self.expected[model] = runtime.execute({"input": self.inputs[model]})["logits"].copy()
            batches = RESNET_BATCHES if model == "resnet_bench" else (1,)
            points = []
            for batch in batches:
                point = self._inprocess_point(runtime, model, batch)
                points.append(point)
                print(f"  in-process {model:<14} batch {batch:<3} {point['rows_per_s']:>9.1f} rows/s  "
                      f"p50 {point['p50_ms']:.3f} ms  other {point['other_cpu_cores']} (x{point['attempts']})",
                      file=sys.stderr)
            self.data["inprocess"][model] = {"points": points, "session": _session_options(runtime, options)}
            runtime.unload()

    def _inprocess_point(self, runtime, model: str, batch: int) -> dict:
        best: dict | None = None
        for attempt in range(1 + self.args.retries):
            if attempt:
                self._wait_quiet()
            own0, busy0, t0 = own_cpu_s(), busy_cpu_s(), time.perf_counter()
            point = inprocess.measure(runtime, "input", self.inputs[model], batch, self.args.inprocess_duration).__dict__
            elapsed = time.perf_counter() - t0
            own = (own_cpu_s() - own0) / elapsed
            point.update(attempts=attempt + 1, own_cpu_cores=round(own, 2),
                         other_cpu_cores=round(max(0.0, (busy_cpu_s() - busy0) / elapsed - own), 2))
            if best is None or point["other_cpu_cores"] < best["other_cpu_cores"]:
                best = point
            if best["other_cpu_cores"] <= self.args.max_other_cores or self.extra_s_left() <= 0:
                break
        return best

    def run_deepserve(self) -> None:
        port = free_port()
        server = self._server("deepserve", [
            PY, "-m", "server.cli", "serve", "--model-repository", str(self.repo), "--host", "127.0.0.1",
            "--http-port", str(port), "--no-grpc", "--log-level", "warning",
        ], f"http://127.0.0.1:{port}/v2/health/ready")
        base = f"http://127.0.0.1:{port}"
        try:
            for model in MODELS:
                for name in (model, f"{model}_nobatch"):
                    scenario = scenarios.v2_binary(base, name, "input", "logits", self.inputs[model], self.expected[model])
                    for c in CONCURRENCY:
                        self.load(server, name, "v2-binary", scenario, c)
            scenario = scenarios.v2_binary(base, "resnet_bench_i2", "input", "logits", self.inputs["resnet_bench"],
                                           self.expected["resnet_bench"])
            self.load(server, "resnet_bench_i2", "v2-binary", scenario, 64)
            scenario = scenarios.v2_json(base, "mlp_tiny", "input", "logits", self.inputs["mlp_tiny"], self.expected["mlp_tiny"])
            self.load(server, "mlp_tiny", "v2-json", scenario, 32)
            if self.args.profile_dir:
                for model, c in (("resnet_bench", 64), ("mlp_tiny", 32), ("mlp_tiny_nobatch", 1)):
                    family = model.removesuffix("_nobatch")
                    scenario = scenarios.v2_binary(base, model, "input", "logits", self.inputs[family],
                                                   self.expected[family])
                    self._wait_quiet(server)
                    self.load(server, model, "v2-binary", scenario, c, profile=f"deepserve-{model}-c{c}")
        finally:
            server.stop()

    def run_fastapi(self) -> None:
        # (server, model, points per body format): the request-overhead section's points, and with
        # deepserve's session options raw bytes at every client count on both models (the peers' table;
        # /predict's pydantic body is 2-D, so resnet_bench only takes raw bytes).
        runs = (("fastapi-naive", "0", "mlp_tiny", {"json-list": (1, 32), "raw-bytes": (1, 32)}),
                ("fastapi-naive+ds-opts", "1", "mlp_tiny", {"json-list": (32,), "raw-bytes": CONCURRENCY}),
                ("fastapi-naive+ds-opts", "1", "resnet_bench", {"raw-bytes": CONCURRENCY}))
        for name, server_options, model, points in runs:
            port = free_port()
            server = self._server(name, [
                PY, "-m", "uvicorn", "loadtests.baselines.fastapi_naive:app", "--host", "127.0.0.1", "--port",
                str(port), "--log-level", "warning", "--no-access-log",
            ], f"http://127.0.0.1:{port}/health",
                env={"FASTAPI_NAIVE_MODEL": str(self.repo / model / "1" / "model.onnx"),
                     "FASTAPI_NAIVE_SERVER_OPTIONS": server_options})
            x, expected = self.inputs[model], self.expected[model]
            try:
                for fmt, scenario in (
                    ("json-list", scenarios.json_list(f"http://127.0.0.1:{port}/predict", model, x, expected)),
                    ("raw-bytes", scenarios.raw_bytes(f"http://127.0.0.1:{port}/predict_raw", model, x, expected)),
                ):
                    for c in points.get(fmt, ()):
                        self.load(server, model, fmt, scenario, c)
            finally:
                server.stop()

    def run_litserve(self) -> None:
        if not Path(self.args.peer_python).exists():
            print(f"  {self.args.peer_python} is missing: LitServe skipped", file=sys.stderr)
            return
        threads = self.data["inprocess"]["resnet_bench"]["session"]["intra_op_num_threads"]
        for model in MODELS:
            port = free_port()
            server = self._server("litserve", [
                self.args.peer_python, "loadtests/baselines/litserve_onnx.py", "--model",
                str(self.repo / model / "1" / "model.onnx"), "--host", "127.0.0.1", "--port", str(port),
                "--max-batch-size", "64", "--batch-timeout", "0.0005", "--intra-op-threads", str(threads),
            ], f"http://127.0.0.1:{port}/health")
            url = f"http://127.0.0.1:{port}/predict"
            try:
                for fmt, build in (("json-list", scenarios.json_list), ("json-b64", scenarios.json_b64)):
                    scenario = build(url, model, self.inputs[model], self.expected[model])
                    for c in CONCURRENCY:
                        self.load(server, model, fmt, scenario, c)
            finally:
                server.stop()

    def _peer_python(self, name: str) -> str | None:
        python = peers.python(name, Path(self.args.peers_root))
        if not python.exists():
            print(f"  {python} is missing (.venv/bin/python -m loadtests.peers setup {name}): {name} skipped",
                  file=sys.stderr)
            return None
        return str(python)

    def run_kserve(self) -> None:
        """KServe's Python server: v2 REST itself, so the same bodies as deepserve; no batcher."""
        python = self._peer_python("kserve")
        if python is None:
            return
        threads = self.data["inprocess"]["resnet_bench"]["session"]["intra_op_num_threads"]
        for model in MODELS:
            port, grpc_port = free_port(), free_port()
            server = self._server("kserve", [
                python, "loadtests/baselines/kserve_onnx.py", "--model", str(self.repo / model / "1" / "model.onnx"),
                "--model_name", model, "--http_port", str(port), "--grpc_port", str(grpc_port), "--enable_grpc",
                "false", "--workers", "1", "--enable_latency_logging", "false", "--intra-op-threads", str(threads),
            ], f"http://127.0.0.1:{port}/v2/models/{model}/ready")
            base = f"http://127.0.0.1:{port}"
            try:
                for fmt, build in (("v2-json", scenarios.v2_json), ("v2-binary", scenarios.v2_binary)):
                    scenario = build(base, model, "input", "logits", self.inputs[model], self.expected[model])
                    for c in CONCURRENCY:
                        self.load(server, model, fmt, scenario, c)
            finally:
                server.stop()

    def run_rayserve(self) -> None:
        """Ray Serve, one replica behind its HTTP proxy, ``@serve.batch`` with LitServe's settings."""
        python = self._peer_python("rayserve")
        if python is None:
            return
        threads = self.data["inprocess"]["resnet_bench"]["session"]["intra_op_num_threads"]
        for model in MODELS:
            port = free_port()
            server = self._server("rayserve", [
                python, "loadtests/baselines/rayserve_onnx.py", "--model", str(self.repo / model / "1" / "model.onnx"),
                "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", "64", "--batch-timeout", "0.0005",
                "--max-ongoing-requests", "128", "--intra-op-threads", str(threads),
                "--num-cpus", str(os.cpu_count() or 1),
            ], f"http://127.0.0.1:{port}/predict", env={"RAY_USAGE_STATS_ENABLED": "0"})
            url = f"http://127.0.0.1:{port}/predict"
            try:
                scenario = scenarios.json_list(url, model, self.inputs[model], self.expected[model])
                for c in CONCURRENCY:
                    self.load(server, model, "json-list", scenario, c)
            finally:
                server.stop()

    def write_plots(self, json_path: Path) -> None:
        """``loadtests/plots.py`` in the plots venv (matplotlib is no dependency of deepserve)."""
        python = self._peer_python("plots")
        if python is None:
            return
        done = subprocess.run([python, "loadtests/plots.py", str(json_path), "--out-dir", self.args.img_dir],
                              cwd=ROOT, capture_output=True, text=True, check=False)
        print(done.stderr.strip() or f"plots: exit {done.returncode}", file=sys.stderr)

    def _server(self, name: str, cmd: list[str], ready_url: str, env: dict | None = None) -> ServerProcess:
        log = self.work / f"{name}-{len(self.data['points'])}.log"
        server = ServerProcess(name, cmd, ready_url, env or {}, log, cwd=ROOT)
        server.start()
        shown = [c.replace(str(self.work), "$WORK").replace(PY, ".venv/bin/python") for c in cmd]
        shown = [c.replace(str(self.args.peers_root), "$PEERS") for c in shown]
        record = self.data["servers"].setdefault(name, {"cmds": [], "env": {}})
        record["cmds"].append(" ".join(shown))
        record["env"].update({k: v.replace(str(self.work), "$WORK") for k, v in (env or {}).items()})
        return server

    def metadata(self, argv: list[str]) -> None:
        import onnxruntime

        peer = subprocess.run([self.args.peer_python, "-c", "import litserve; print(litserve.__version__)"],
                              capture_output=True, text=True, check=False) if Path(self.args.peer_python).exists() else None
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
        self.data["meta"] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join([".venv/bin/python -m loadtests.bench", *argv]),
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "litserve": peer.stdout.strip() if peer and peer.returncode == 0 else None,
            "peers_root": str(self.args.peers_root),
            "peers": {name: peers.versions(name, Path(self.args.peers_root)) for name in ("kserve", "rayserve", "plots")},
            "commit": commit.stdout.strip(),
            "server_tree_dirty": bool(subprocess.run(["git", "status", "--porcelain", "server"], cwd=ROOT,
                                                     capture_output=True, text=True, check=False).stdout.strip()),
            "duration_s": self.args.duration,
            "warmup_s": self.args.warmup,
            "max_other_cores": self.args.max_other_cores,
            "retries": self.args.retries,
        }


def _session_options(runtime, options) -> dict:
    so = runtime._session.get_session_options()  # the session the server would build
    return {
        "intra_op_num_threads": so.intra_op_num_threads,
        "inter_op_num_threads": so.inter_op_num_threads,
        "execution_mode": str(so.execution_mode),
        "graph_optimization_level": str(so.graph_optimization_level),
        "allow_spinning": so.get_session_config_entry("session.intra_op.allow_spinning"),
        "providers": runtime.providers,
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks.md", help="the report (Markdown)")
    parser.add_argument("--json", default="loadtests/results/bench-latest.json", help="raw figures")
    parser.add_argument("--duration", type=float, default=7.0, help="measured seconds per load point")
    parser.add_argument("--warmup", type=float, default=2.0, help="discarded seconds before each point")
    parser.add_argument("--inprocess-duration", type=float, default=3.0)
    parser.add_argument("--peer-python", default=None,
                        help="LitServe's venv's python (default: litserve under --peers-root, else /work/peer-venv)")
    parser.add_argument("--peers-root", default=str(peers.ROOT), help="the peers' venvs (loadtests.peers setup)")
    parser.add_argument("--img-dir", default="docs/img", help="where the peers' plots go")
    parser.add_argument("--profile-dir", default=None, help="py-spy the server on two extra runs")
    parser.add_argument("--max-other-cores", type=float, default=0.2,
                        help="redo a point when other processes used more cores than this meanwhile")
    parser.add_argument("--retries", type=int, default=2, help="redos per point at most")
    parser.add_argument("--max-extra-s", type=float, default=300, help="time budget for waits and redos")
    parser.add_argument("--only", default="inprocess,deepserve,fastapi,litserve,kserve,rayserve",
                        help="phases to run")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.peer_python is None:
        mine = peers.python("litserve", Path(args.peers_root))
        args.peer_python = str(mine if mine.exists() else Path("/work/peer-venv/bin/python"))
    phases = set(args.only.split(","))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="deepserve-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.metadata(argv)
        print("building the benchmark repository", file=sys.stderr)
        bench.build_repository()
        quiet, load = wait_for_quiet(args.max_other_cores / 2, 120.0)
        bench.data["meta"]["quiet_at_start"] = {"quiet": quiet, "other_cpu_cores": round(load, 2)}
        bench.run_inprocess()  # always: it also yields the expected outputs
        for phase in ("deepserve", "fastapi", "litserve", "kserve", "rayserve"):
            if phase in phases:
                print(phase, file=sys.stderr)
                getattr(bench, f"run_{phase}")()
        bench.loop.close()
    bench.data["meta"]["wall_s"] = round(time.monotonic() - started)
    if args.profile_dir:
        from loadtests.profile_summary import summarize

        for profile in bench.data["profiles"].values():
            profile["summary"] = summarize(Path(profile["raw"]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(bench.data, indent=1, default=str))
    Path(args.out).write_text(report.render(bench.data))
    bench.write_plots(Path(args.json))
    print(f"wrote {args.out} and {args.json} in {bench.data['meta']['wall_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
