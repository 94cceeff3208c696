"""How throughput scales with ``--frontend-processes`` (issue #9), and what a 16-core host
would give, projected from the measured CPU per request.

For ``mlp_tiny`` (1x64, 32 clients) and ``resnet_bench`` (1x3x64x64, 64 clients), over
HTTP v2 binary (``loadtests.loadgen``, one keep-alive connection per client) and over gRPC
(``grpc_load``: ``ModelInfer`` with the tensor in ``raw_input_contents``, one grpc.aio
channel, so one TCP connection, per client), the server runs as today
(``--frontend-processes 0``: HTTP and gRPC in the model process) and with 1 and 2 frontend
processes (they serve both protocols, sharing both ports); one server per N serves both, each
protocol is measured while the other is idle, and the configurations (and the protocol order)
alternate round by round. Around each measured window the CPU time of every server thread is
read from ``/proc``: the frontend processes, the model process's event loop (its main
thread: IPC, the service, the batcher's loop; with N = 0 also HTTP and gRPC's Python side)
and the model process's other threads (runtime execution: ONNX Runtime, the batcher's worker
threads; with N = 0 also gRPC's C-core threads). Divided by the requests answered in the
window: CPU per request, by part. The established connections on the measured port are
counted per server process at the start of the window (how the kernel spread them); before
measuring, the run checks that every frontend process listens on both ports (the server
reports ready only then; a server from before that change was ready once one answered, and
connections opened earlier all went to that one).

The 16-core projection (``project``): the model process's loop is one thread, so it caps
throughput at 1 / (its CPU per request); everything else spreads over the cores, so the
cores cap it at 16 / (total server CPU per request); the number of frontend processes
needed is that throughput x the frontend CPU per request. It assumes what is measured here
at this batch size holds there (more cores mostly grow batches, which makes the runtime's
share smaller, so the runtime term is conservative) and that the load generator runs on
other machines.

    .venv/bin/python -m server.cli models build-bench --out /tmp/benchrepo   # mlp_tiny, resnet_bench
    .venv/bin/python -m loadtests.frontend_scaling --repo /tmp/benchrepo \\
        --json loadtests/results/frontend-scaling-<date>.json --out docs/benchmarks-frontends.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import numpy as np

from loadtests import loadgen, locust_payloads, runinfo, scenarios
from loadtests.procs import ServerProcess, busy_cpu_s, free_port, own_cpu_s, tree_cpu_s

MODULE = "loadtests.frontend_scaling"
PAGE = "docs/benchmarks-frontends.md"
WATCHED = ("server", "loadtests/frontend_scaling.py", "loadtests/loadgen.py", "loadtests/locust_payloads.py")
MODELS = {"mlp_tiny": ((1, 64), 32), "resnet_bench": ((1, 3, 64, 64), 64)}  # input shape, clients
PROCESSES = (0, 1, 2)
PROTOCOLS = ("http", "grpc")
TARGET_CORES = 16
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


# -- CPU by part ------------------------------------------------------------------------


def _stat_cpu(path: Path) -> float:
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def cpu_parts(pid: int) -> dict[str, float]:
    """CPU seconds so far: the model process's main thread (its event loop), its other
    threads (runtimes, worker threads), and its children (the frontend processes; the
    multiprocessing resource tracker is counted there too, it does nothing per request)."""
    loop = _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))
    threads = 0.0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = []
    for tid in tids:
        if tid != pid:
            threads += _stat_cpu(Path(f"/proc/{pid}/task/{tid}/stat"))
    frontends = sum(tree_cpu_s(child) for child in _children(pid))
    return {"model_loop": loop, "model_threads": threads, "frontends": frontends}


def connections(port: int, pids: list[int], state: str = "01") -> list[int]:
    """TCP sockets on local ``port`` held by each of ``pids``, established ones (state ``01``) or
    listening ones (``0A``): ``/proc/net/tcp*`` matched to the processes' descriptors by inode."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for fields in (line.split() for line in lines):
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        n = 0
        for fd in fds:
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
            except OSError:
                continue
        counts.append(n)
    return counts


def wait_for_frontends(server: ServerProcess, ports: dict[str, int], processes: int, timeout_s: float = 60.0) -> None:
    """Until each of the N frontend processes listens on both ports (a ready server does; one
    from before readiness waited for every frontend might not yet, and connections opened
    before the others listen all go to the first)."""
    deadline = time.monotonic() + timeout_s
    while processes:
        children = _children(server.pid)
        if all(sum(n > 0 for n in connections(port, children, "0A")) >= processes for port in ports.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: not all {processes} frontend processes listen after {timeout_s:.0f} s")
        time.sleep(0.1)


# -- one measurement ------------------------------------------------------------------------


def server_for(repo: Path, processes: int, log_dir: Path) -> tuple[ServerProcess, dict[str, int]]:
    """The server with N frontend processes, serving HTTP and gRPC; (server, port by protocol)."""
    ports = {"http": free_port(), "grpc": free_port()}
    cmd = [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
           "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--log-level", "warning",
           "--frontend-processes", str(processes)]
    server = ServerProcess(f"deepserve-fp{processes}", cmd, f"http://127.0.0.1:{ports['http']}/v2/health/ready",
                           log_path=log_dir / f"fp{processes}.log", cwd=runinfo.ROOT)
    return server, ports


async def grpc_load(target: str, model: str, x: np.ndarray, expected: np.ndarray,
                    config: loadgen.LoadConfig) -> loadgen.LoadResult:
    """``loadgen.run_load`` over gRPC: ``config.concurrency`` closed-loop clients, each on its own
    grpc.aio channel (``grpc.use_local_subchannel_pool``: channels do not share a connection),
    sending one prebuilt ``ModelInferRequest``; the same window, and the same error rules (a
    failed call or a malformed reply is an error, the first answer is compared with ``expected``)."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    request = locust_payloads.grpc_infer_request(x, model, "input", "logits")
    now = time.perf_counter()
    window = loadgen._Window(start=now + config.warmup_s, end=now + config.warmup_s + config.duration_s)

    def decode(reply) -> np.ndarray:
        (out,) = reply.outputs
        if out.name != "logits" or out.datatype != "FP32" or len(reply.raw_output_contents) != 1:
            raise ValueError(f"unexpected output {out.name} {out.datatype}, {len(reply.raw_output_contents)} raw")
        output = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(tuple(out.shape))
        if output.shape != expected.shape:
            raise ValueError(f"output shape {output.shape}, expected {expected.shape}")
        return output

    async def client() -> None:
        async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            first = True
            while (sent := time.perf_counter()) < window.end:
                problem = None
                try:
                    output = decode(await infer(request, timeout=config.request_timeout_s, wait_for_ready=first))
                except grpc.RpcError as exc:
                    problem = f"gRPC {exc.code().name}: {exc.details()}"[:300]
                except (ValueError, TypeError) as exc:
                    problem = f"malformed reply: {exc}"
                if first and problem is None:
                    first = False
                    if not np.allclose(output, expected, atol=1e-3, rtol=1e-3):
                        problem = f"wrong answer: max |error| {float(np.max(np.abs(output - expected))):.3g}"
                window.record(sent, time.perf_counter(), problem)

    await asyncio.gather(*(client() for _ in range(config.concurrency)))
    return loadgen.LoadResult(f"{model} grpc", config.concurrency, config.duration_s, sorted(window.latencies),
                              window.errors, window.error_samples)


async def measure(server: ServerProcess, processes: int, port: int, load: Awaitable[loadgen.LoadResult],
                  duration_s: float, warmup_s: float) -> dict:
    """Drive ``load`` (its warm-up and window: ``warmup_s``, ``duration_s``) and read the server's
    CPU by part and its connections on ``port`` around the window."""
    load = asyncio.ensure_future(load)
    await asyncio.sleep(warmup_s)
    t0, parts0, busy0, own0 = time.perf_counter(), cpu_parts(server.pid), busy_cpu_s(), own_cpu_s()
    held = connections(port, [server.pid, *_children(server.pid)])
    await asyncio.sleep(duration_s)
    elapsed = time.perf_counter() - t0
    parts1, busy1, own1 = cpu_parts(server.pid), busy_cpu_s(), own_cpu_s()
    result = await load
    cpu = {k: parts1[k] - parts0[k] for k in parts0}
    server_cpu = sum(cpu.values())
    answered = result.completed
    return {
        **result.as_dict(),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "server_cores": round(server_cpu / elapsed, 3),
        "client_cores": round((own1 - own0) / elapsed, 3),
        "others_cores": round(max(0.0, (busy1 - busy0) - server_cpu - (own1 - own0)) / elapsed, 3),
        "cpu_ms_per_request": {k: round(1e3 * v / answered, 4) if answered else None for k, v in cpu.items()},
        # by process that serves the port: the model process (N = 0) or the N frontends (the
        # largest N counts: the multiprocessing resource tracker is a child too, and holds none)
        "connections": sorted(held, reverse=True)[: max(1, processes)],
    }


def run(args: argparse.Namespace) -> dict:
    results = runinfo.record(MODULE, WATCHED, args.json)
    results.update({"repo": str(args.repo), "duration_s": args.duration, "warmup_s": args.warmup,
                    "rounds": args.rounds, "models": {m: {"shape": list(s), "clients": c} for m, (s, c) in MODELS.items()},
                    "protocols": list(PROTOCOLS), "runs": []})
    started = time.monotonic()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    loop = loadgen.new_event_loop()
    try:
        for round_ in range(args.rounds):
            order = PROCESSES if round_ % 2 == 0 else tuple(reversed(PROCESSES))
            protocols = PROTOCOLS if round_ % 2 == 0 else tuple(reversed(PROTOCOLS))
            for processes in order:
                server, ports = server_for(args.repo, processes, log_dir)
                server.start()
                try:
                    wait_for_frontends(server, ports, processes)
                    for model, (shape, clients) in MODELS.items():
                        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                        scenario = scenarios.v2_binary(f"http://127.0.0.1:{ports['http']}", model, "input", "logits", x,
                                                       expected=None)
                        scenario = loop.run_until_complete(scenarios.learn_expected(scenario))
                        config = loadgen.LoadConfig(clients, args.duration, args.warmup)
                        for protocol in protocols:
                            load = (loadgen.run_load(scenario, config) if protocol == "http" else
                                    grpc_load(f"127.0.0.1:{ports['grpc']}", model, x, scenario.expected, config))
                            row = loop.run_until_complete(
                                measure(server, processes, ports[protocol], load, args.duration, args.warmup))
                            row.update({"model": model, "protocol": protocol, "frontend_processes": processes,
                                        "round": round_})
                            results["runs"].append(row)
                            print(f"round {round_} fp={processes} {model} {protocol}: {row['rps']:.0f} req/s, "
                                  f"{row['errors']} errors, connections {row['connections']}, "
                                  f"cpu ms/req {row['cpu_ms_per_request']}, others {row['others_cores']:.2f} cores",
                                  file=sys.stderr, flush=True)
                finally:
                    server.stop()
    finally:
        loop.close()
    runinfo.note_edits(results, WATCHED)
    results["total_s"] = time.monotonic() - started
    results["measured_s"] = len(results["runs"]) * args.duration
    results["others_cores"] = statistics.fmean(r["others_cores"] for r in results["runs"])
    return results


# -- summary and projection -----------------------------------------------------------------


def protocol(row: dict) -> str:
    return row.get("protocol", "http")  # results from before gRPC was measured: HTTP only


def summary(results: dict) -> dict:
    """Medians over rounds: {(model, protocol): {frontend processes: figures}}."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for model in results["models"]:
        for proto in PROTOCOLS:
            by_n = {}
            for processes in PROCESSES:
                rows = [r for r in results["runs"]
                        if r["model"] == model and protocol(r) == proto and r["frontend_processes"] == processes]
                if rows:
                    by_n[processes] = _medians(rows)
            if by_n:
                out[(model, proto)] = by_n
    return out


def _medians(rows: list[dict]) -> dict:
    """Medians over rounds of one (model, protocol, N); ``connections``: the most uneven round's spread."""
    med = lambda f: statistics.median(f(r) for r in rows)  # noqa: E731
    parts = {k: med(lambda r, k=k: r["cpu_ms_per_request"][k] or 0.0) for k in rows[0]["cpu_ms_per_request"]}
    spread = max((r["connections"] for r in rows if r.get("connections")), key=max, default=None)
    return {
        "rps": med(lambda r: r["rps"]), "p50_ms": med(lambda r: r["p50_ms"]), "p99_ms": med(lambda r: r["p99_ms"]),
        "errors": sum(r["errors"] for r in rows), "server_cores": med(lambda r: r["server_cores"]),
        "client_cores": med(lambda r: r["client_cores"]), "others_cores": med(lambda r: r["others_cores"]),
        "cpu_ms": parts, "total_ms": sum(parts.values()), "rounds": len(rows), "connections": spread,
    }


def _busy(row: dict) -> float:
    return row["server_cores"] + row["client_cores"] + row["others_cores"]


def project(cpu_ms: dict, cores: int = TARGET_CORES) -> dict:
    """Throughput on ``cores`` from CPU per request by part (ms): the model loop's one thread
    caps it at 1000 / loop ms; the cores at cores x 1000 / total ms."""
    loop_ms, total_ms = cpu_ms["model_loop"], sum(cpu_ms.values())
    loop_cap = 1e3 / loop_ms if loop_ms else float("inf")
    core_cap = cores * 1e3 / total_ms if total_ms else float("inf")
    rps = min(loop_cap, core_cap)
    frontends_needed = rps * cpu_ms["frontends"] / 1e3
    return {"loop_cap_rps": loop_cap, "core_cap_rps": core_cap, "rps": rps,
            "bound": "model process event loop" if loop_cap < core_cap else f"{cores} cores",
            "frontend_cores": frontends_needed, "loop_busy": rps * loop_ms / 1e3}


def _label(proto: str) -> str:
    return {"http": "HTTP", "grpc": "gRPC"}.get(proto, proto)


def _spread(r: dict) -> str:
    return "+".join(str(n) for n in r["connections"]) if r.get("connections") else "n/a"


def render(results: dict) -> str:
    s = summary(results)
    grpc = any(proto == "grpc" for _, proto in s)
    lines = runinfo.page_header(
        results, "Frontend processes: scaling and a 16-core projection (issue #9)", "frontend_scaling", PAGE,
        "; the load generator (one Python process, uvloop + aiohttp" + (", grpc.aio" if grpc else "")
        + ") takes a core of its own under load",
        "server starts and warm-ups",
    )
    lines += [
        "",
        f"`--frontend-processes N` runs the {'HTTP and gRPC frontends' if grpc else 'HTTP frontend'} in N processes "
        f"that share the {'ports' if grpc else 'port'} "
        "(SO_REUSEPORT) and hand requests to the model process over a Unix socket, tensors in "
        "shared memory (`server/ingress/`, docs/design.md \"Process model\"). N = 0 is today's "
        "single-process server. Each figure is the median of "
        f"{results['rounds']} rounds of {results['duration_s']:g} s (after {results['warmup_s']:g} s of warm-up), "
        + ("HTTP v2 with binary tensors (one keep-alive connection per client) and gRPC (`ModelInfer`, tensors in "
           "`raw_input_contents`, one channel and so one TCP connection per client), with the same clients; one "
           "server per N serves both protocols, and each is measured while the other is on but idle."
           if grpc else "HTTP v2 with binary tensors, gRPC off."),
        "",
        "## Measured on this machine",
        "",
        "CPU per request is server CPU in the measured window over the requests answered in it: the frontend "
        "processes, the model process's event loop (main thread), and its other threads (runtime execution"
        + ("; with N = 0 also gRPC's C-core threads" if grpc else "") + ")."
        + (" Connections: the established connections on the measured port held by each process serving it "
           "(the model process for N = 0, else each frontend), in the most uneven round: how the kernel "
           "spread them." if grpc else ""),
        "",
        "| model | protocol | clients | N | req/s | vs N=0 | p50 ms | p99 ms | errors | frontends ms/req "
        "| model loop ms/req | runtime threads ms/req | server ms/req | server cores | client cores "
        "| other load cores | connections |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, proto), by_n in s.items():
        base = by_n.get(0, {}).get("rps")
        for n, r in by_n.items():
            c = r["cpu_ms"]
            lines.append(
                f"| {model} | {_label(proto)} | {results['models'][model]['clients']} | {n} | {r['rps']:,.0f} | "
                f"{runinfo.times(runinfo.div(r['rps'], base))} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                f"{c['frontends']:.3f} | {c['model_loop']:.3f} | {c['model_threads']:.3f} | {r['total_ms']:.3f} | "
                f"{r['server_cores']:.2f} | {r['client_cores']:.2f} | {r['others_cores']:.2f} | {_spread(r)} |"
            )
    cores = results["machine"].get("cores") or 0
    lines += ["", f"From 1 to 2 frontend processes on these {cores} cores:", ""]
    for (model, proto), by_n in s.items():
        one, two = by_n.get(1), by_n.get(2)
        if one is None or two is None:
            continue
        lines.append(
            f"* **{model}, {_label(proto)}**: {one['rps']:,.0f} -> {two['rps']:,.0f} req/s "
            f"({runinfo.times(runinfo.div(two['rps'], one['rps']))}); server cores {one['server_cores']:.2f} -> "
            f"{two['server_cores']:.2f}, load generator {one['client_cores']:.2f} -> {two['client_cores']:.2f} cores; "
            f"with other load, {_busy(one):.2f} -> {_busy(two):.2f} of {cores} cores busy"
            + (f"; connections by frontend {_spread(two)}." if two.get("connections") else ".")
        )
    busiest = max((_busy(r) for by_n in s.values() for r in by_n.values()), default=0.0)
    if cores and busiest >= 0.85 * cores:
        lines += [
            "",
            f"Server, load generator and other load together use up to {busiest:.2f} of the {cores} cores, so a "
            "second frontend process has no idle core to run on: this machine cannot show the scaling itself, "
            "only what a request costs in each part. That is what the projection below is built from.",
        ]
    lines += [
        "",
        f"## Projection to {TARGET_CORES} cores",
        "",
        "From the CPU per request measured with 2 frontend processes (and, for comparison, today's single "
        f"process): throughput = min(1000 / model-loop ms, {TARGET_CORES} x 1000 / server ms). The model "
        "process's loop is one thread whatever N is; frontends needed = throughput x frontend ms / 1000. "
        "The load generator is assumed to run elsewhere; runtime CPU per request is taken as measured (at "
        f"{TARGET_CORES} cores batches grow, so this term is an upper bound). A loop cap is the loop at 100% busy; "
        "a loop that busy queues, so read the projected figures as ceilings (about 80-90% of them is what a loop "
        "sustains with acceptable latency).",
        "",
        "| model | protocol | process model | model loop ms/req | server ms/req | loop cap req/s | core cap req/s | "
        "projected req/s | bound | frontend processes busy (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for (model, proto), by_n in s.items():
        single = by_n.get(0)
        multi = by_n.get(2) or by_n.get(1)
        for label, r in (("single process (N=0)", single), (f"N frontends ({'2' if 2 in by_n else '1'} measured)", multi)):
            if r is None:
                continue
            p = project(r["cpu_ms"])
            busy = "-" if label.startswith("single") else f"{p['frontend_cores']:.1f}"
            lines.append(
                f"| {model} | {_label(proto)} | {label} | {r['cpu_ms']['model_loop']:.3f} | {r['total_ms']:.3f} | "
                f"{p['loop_cap_rps']:,.0f} | {p['core_cap_rps']:,.0f} | {p['rps']:,.0f} | {p['bound']} | {busy} |"
            )
    lines += ["", "Reading it:", ""]
    for (model, proto), by_n in s.items():
        single, multi = by_n.get(0), by_n.get(2) or by_n.get(1)
        if single is None or multi is None:
            continue
        ps, pm = project(single["cpu_ms"]), project(multi["cpu_ms"])
        lines.append(
            f"* **{model}, {_label(proto)}**: today's single process is bound by its one event loop at about "
            f"{ps['rps']:,.0f} req/s on any host (its loop does {_label(proto)} and the model work: "
            f"{single['cpu_ms']['model_loop']:.3f} ms a request). "
            f"With the frontends split out, the model loop costs {multi['cpu_ms']['model_loop']:.3f} ms a request "
            f"(IPC, service, batcher), so {TARGET_CORES} cores would give about {pm['rps']:,.0f} req/s "
            f"({runinfo.times(runinfo.div(pm['rps'], ps['rps']))} the single process; bound by the {pm['bound']}), "
            f"with frontend processes busy for about {pm['frontend_cores']:.1f} cores: "
            f"`--frontend-processes {max(1, int(-(-pm['frontend_cores'] // 0.8)))}` at 80% each."
        )
    lines += [
        "",
        "What is not measured here: a real 16-core host (kernel connection spreading with SO_REUSEPORT, "
        "memory bandwidth, the model loop's behaviour at its cap), a GPU runtime (the runtime threads' CPU "
        "would mostly go, which makes the model loop the bound sooner), "
        + ("HTTP and gRPC load at once (each protocol is measured while the other is idle; with N >= 1 the "
           "frontend processes serve both, so they share the frontends' cores and the one model loop)."
           if grpc else "gRPC (it stays in the model process and adds to its loop)."),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("/tmp/benchrepo"),
                        help="the benchmark repository (python -m server.cli models build-bench --out DIR)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--log-dir", default="/tmp/deepserve-frontend-scaling")
    parser.add_argument("--json", help="write the raw results here (default loadtests/results/frontend-scaling-<date>.json)")
    parser.add_argument("--out", help="write the Markdown page here (e.g. docs/benchmarks-frontends.md)")
    parser.add_argument("--from-json", metavar="FILE", help="render the page from this results file; run nothing")
    args = parser.parse_args()
    if args.json is None and not args.from_json:
        args.json = f"loadtests/results/frontend-scaling-{datetime.date.today().isoformat()}.json"
    runinfo.finish(args, run, render)


if __name__ == "__main__":
    main()
