"""Soak (issue #13): mixed traffic at 70 % of saturation for 30 minutes; memory, errors, p99 drift.

One server (``python -m server.cli serve``, started by ``loadtests.procs.ServerProcess`` on
127.0.0.1, free ports) on a temp copy of the default repository. The mix, per request drawn
at random (seeded) with these weights (``MIX``):

  * ``http_digits``   v2 HTTP infer on ``digits``, binary tensor extension (httpx);
  * ``grpc_digits``   gRPC ModelInfer on ``digits`` (``tritonclient.grpc.aio``);
  * ``classify``      ``POST /v1/classify``, one PNG (multipart), top_k 3 (the ensemble);
  * ``generate``      ``POST /v1/images/generations``, ``digits_diffusion``, n=1, 10 steps;
  * ``bad``           a request the server must refuse with a 4xx (wrong shape, unknown model,
                      not an image, n=0, malformed JSON): counted as *expected* errors.

First a saturation probe: closed-loop clients of the same mix at rising concurrency
(``--probe-levels``, ``--probe-s`` each); the best answered requests/s is *saturation*. Then an
open loop: requests scheduled at a fixed rate, ``--load`` (0.7) x saturation, for
``--duration-s`` (1800). At most ``--max-outstanding`` requests are in flight; an arrival that
finds them all busy is not sent and is counted as *shed by the client* (nothing queues in the
client). Every minute: requests sent and shed (by send time), answers by status, unexpected
errors (5xx, a wrong status, connection errors, timeouts) and latency p50 / p99 (by answer
time), the server's RSS (VmRSS summed over its process tree), the server's
``deepserve_request_failure`` counters from ``/metrics``, the 1-minute load average and the
cores other processes used.

    .venv/bin/python -m loadtests.soak --json loadtests/results/soak-<date>.json --out docs/benchmarks-soak.md
    .venv/bin/python -m loadtests.soak --from-json loadtests/results/soak-<date>.json --out docs/benchmarks-soak.md

All traffic is loopback. The load generator shares the host's cores with the server (and with
whatever else runs there). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.procs import ServerProcess, _tree, busy_cpu_s, free_port, own_cpu_s, tree_cpu_s
from loadtests.runinfo import add_output_arguments, finish, note_edits, quantiles, record
from loadtests.soak_report import render

ROOT = Path(__file__).resolve().parents[1]
SEED = 1313
MIX = {"http_digits": 0.40, "grpc_digits": 0.28, "classify": 0.24, "generate": 0.03, "bad": 0.05}
GENERATE_STEPS = 10
TIMEOUT_S = 30.0
GENERATE_TIMEOUT_S = 60.0
WATCHED = ("server/", "export/", "models/weights/", "loadtests/procs.py", "loadtests/soak.py")


# ---- the requests ----------------------------------------------------------------------------


class Unexpected(Exception):
    """A good request that was not answered 200, or a bad one answered 2xx / 5xx."""


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


class Traffic:
    def __init__(self, http_url: str, grpc_url: str, connections: int) -> None:
        import httpx
        import tritonclient.grpc.aio as grpcaio
        import tritonclient.http as httpclient
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.x = (digits.images[:64] / 16.0).astype(np.float32).reshape(-1, 1, 1, 8, 8)
        self.pngs = [_png(np.kron(img / 16.0, np.ones((4, 4)))) for img in digits.images[:16]]
        self.http = httpx.AsyncClient(base_url=http_url, timeout=TIMEOUT_S,
                                      limits=httpx.Limits(max_connections=connections,
                                                          max_keepalive_connections=connections))
        self.grpc = grpcaio.InferenceServerClient(grpc_url)
        self.grpcaio = grpcaio
        self.httpclient = httpclient
        self.bodies = []
        for x in self.x[:16]:
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            out = httpclient.InferRequestedOutput("logits", binary_data=True)
            body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], [out])
            self.bodies.append((body, json_size))
        self.bad_kinds = ["wrong_shape", "unknown_model", "not_an_image", "n_zero", "malformed_json"]

    async def close(self) -> None:
        await self.http.aclose()
        await self.grpc.close()

    async def send(self, kind: str, i: int) -> tuple[int, str]:
        """One request of ``kind``: (status, detail); raises on an unexpected answer."""
        return await getattr(self, kind)(i)

    async def http_digits(self, i: int) -> tuple[int, str]:
        body, json_size = self.bodies[i % len(self.bodies)]
        resp = await self.http.post("/v2/models/digits/infer", content=body,
                                    headers={"Inference-Header-Content-Length": str(json_size),
                                             "Content-Type": "application/octet-stream"})
        if resp.status_code != 200:
            raise Unexpected(f"HTTP {resp.status_code}: {resp.text[:200]}")
        header = resp.headers.get("Inference-Header-Content-Length")
        result = self.httpclient.InferenceServerClient.parse_response_body(
            resp.content, header_length=int(header) if header else None)
        if result.as_numpy("logits").shape != (1, 10):
            raise Unexpected(f"logits shape {result.as_numpy('logits').shape}")
        return 200, ""

    async def grpc_digits(self, i: int) -> tuple[int, str]:
        tensor = self.grpcaio.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(self.x[i % len(self.x)])
        try:
            result = await self.grpc.infer("digits", [tensor], client_timeout=TIMEOUT_S)
        except Exception as exc:  # InferenceServerException: the gRPC status is the answer
            raise Unexpected(f"gRPC {exc}"[:300]) from None
        if result.as_numpy("logits").shape != (1, 10):
            raise Unexpected(f"logits shape {result.as_numpy('logits').shape}")
        return 200, ""

    async def classify(self, i: int) -> tuple[int, str]:
        files = {"file": ("d.png", self.pngs[i % len(self.pngs)], "image/png")}
        resp = await self.http.post("/v1/classify", files=files, data={"top_k": "3"})
        if resp.status_code != 200 or len(resp.json()["predictions"]) != 3:
            raise Unexpected(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return 200, ""

    async def generate(self, i: int) -> tuple[int, str]:
        body = {"prompt": str(i % 10), "model": "digits_diffusion", "n": 1, "seed": SEED + i, "steps": GENERATE_STEPS}
        resp = await self.http.post("/v1/images/generations", json=body, timeout=GENERATE_TIMEOUT_S)
        if resp.status_code != 200 or not resp.json()["data"][0]["b64_json"]:
            raise Unexpected(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return 200, ""

    async def bad(self, i: int) -> tuple[int, str]:
        which = self.bad_kinds[i % len(self.bad_kinds)]
        if which == "wrong_shape":
            body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 7], "datatype": "FP32", "data": [0.0] * 56}]}
            resp = await self.http.post("/v2/models/digits/infer", json=body)
        elif which == "unknown_model":
            resp = await self.http.post("/v2/models/no_such_model/infer", json={"inputs": []})
        elif which == "not_an_image":
            resp = await self.http.post("/v1/classify", files={"file": ("x", b"hello, this is text", "text/plain")})
        elif which == "n_zero":
            resp = await self.http.post("/v1/images/generations", json={"prompt": "3", "model": "digits_diffusion", "n": 0})
        else:
            resp = await self.http.post("/v2/models/digits/infer", content=b'{"inputs": [',
                                        headers={"Content-Type": "application/json"})
        if not 400 <= resp.status_code < 500:
            raise Unexpected(f"bad request {which} answered HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.status_code, which


# ---- bookkeeping -------------------------------------------------------------------------------


class Window:
    """What happened in one minute (or one probe level)."""

    def __init__(self) -> None:
        self.sent = 0
        self.shed = 0
        self.by_status: dict[str, int] = {}
        self.expected_4xx = 0
        self.unexpected = 0
        self.unexpected_by_kind: dict[str, int] = {}
        self.latency: dict[str, list[float]] = {k: [] for k in MIX}

    def answered(self) -> int:
        return sum(self.by_status.values())

    def figures(self) -> dict:
        ok = [v for k, v in self.latency.items() if k != "bad" for v in v]
        fast = [v for k, v in self.latency.items() if k not in ("bad", "generate") for v in v]
        return {
            "sent": self.sent, "shed": self.shed, "answered": self.answered(),
            "by_status": dict(sorted(self.by_status.items())),
            "expected_4xx": self.expected_4xx, "unexpected": self.unexpected,
            "unexpected_by_kind": self.unexpected_by_kind,
            "p50_ms": quantiles(ok)["p50_ms"], "p99_ms": quantiles(ok)["p99_ms"],
            "fast_p50_ms": quantiles(fast)["p50_ms"], "fast_p99_ms": quantiles(fast)["p99_ms"],
            "by_kind": {k: {"n": len(v), **{q: quantiles(v)[q] for q in ("p50_ms", "p99_ms")}}
                        for k, v in self.latency.items()},
        }


class Recorder:
    def __init__(self) -> None:
        self.window = Window()
        self.errors: list[str] = []
        self.samples: list[tuple[float, str, float]] = []  # (monotonic answer time, kind, ms) of good answers
        self.keep_samples = False

    async def one(self, traffic: Traffic, kind: str, i: int) -> None:
        began = time.perf_counter()
        w = self.window
        try:
            status, _ = await traffic.send(kind, i)
        except Unexpected as exc:
            self._unexpected(kind, "wrong answer", str(exc))
            return
        except Exception as exc:  # connection errors, timeouts, anything else
            self._unexpected(kind, type(exc).__name__, f"{type(exc).__name__}: {exc}")
            return
        ms = (time.perf_counter() - began) * 1e3
        w = self.window  # the minute it was answered in
        w.by_status[str(status)] = w.by_status.get(str(status), 0) + 1
        if kind == "bad":
            w.expected_4xx += 1
        else:
            w.latency[kind].append(ms)
            if self.keep_samples:
                self.samples.append((time.monotonic(), kind, ms))

    def _unexpected(self, kind: str, status: str, message: str) -> None:
        w = self.window
        w.unexpected += 1
        w.unexpected_by_kind[kind] = w.unexpected_by_kind.get(kind, 0) + 1
        key = "grpc-error" if kind == "grpc_digits" else (message.split(":")[0].replace("HTTP ", "") if message.startswith("HTTP ") else status)
        w.by_status[key] = w.by_status.get(key, 0) + 1
        if len(self.errors) < 20:
            self.errors.append(f"{kind}: {message}"[:300])


def rss_kib(root: int) -> tuple[int, int]:
    """(VmRSS of the server process tree, VmRSS of the server process itself), KiB."""
    total, own = 0, 0
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib = int(line.split()[1])
                    total += kib
                    own = kib if pid == root else own
    return total, own


async def failure_counters(traffic: Traffic) -> dict:
    """``deepserve_request_failure_total`` by model and reason, from ``/metrics`` (summed)."""
    try:
        resp = await traffic.http.get("/metrics", timeout=10)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    out: dict[str, float] = {}
    for line in resp.text.splitlines():
        if line.startswith("deepserve_request_failure_total{"):
            labels, value = line.rsplit(" ", 1)
            parts = dict(p.split("=", 1) for p in labels[labels.index("{") + 1:-1].split(",") if "=" in p)
            key = f"{parts.get('model', '?').strip(chr(34))}/{parts.get('reason', '?').strip(chr(34))}"
            out[key] = out.get(key, 0) + float(value)
        elif line.startswith("deepserve_request_success_total{"):
            out["_success_total"] = out.get("_success_total", 0) + float(line.rsplit(" ", 1)[1])
    return out


# ---- phases ---------------------------------------------------------------------------------


def draw(rng: random.Random) -> str:
    return rng.choices(list(MIX), weights=list(MIX.values()))[0]


async def closed_loop(traffic: Traffic, rec: Recorder, concurrency: int, seconds: float, rng: random.Random,
                      counter: list[int]) -> None:
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            counter[0] += 1
            rec.window.sent += 1
            await rec.one(traffic, draw(rng), counter[0])

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def probe(traffic: Traffic, server_pid: int, args: argparse.Namespace, rng: random.Random, counter: list[int]) -> dict:
    rec = Recorder()
    await closed_loop(traffic, rec, 4, args.warmup_s, rng, counter)  # warm-up, discarded
    levels = []
    for c in args.probe_levels:
        rec.window = Window()
        t0, s0, busy0, own0 = time.perf_counter(), tree_cpu_s(server_pid), busy_cpu_s(), own_cpu_s()
        await closed_loop(traffic, rec, c, args.probe_s, rng, counter)
        elapsed = time.perf_counter() - t0
        server_s, client_s = tree_cpu_s(server_pid) - s0, own_cpu_s() - own0
        f = rec.window.figures()
        good = f["answered"] - f["expected_4xx"]
        levels.append({"concurrency": c, "seconds": elapsed, "rps": f["answered"] / elapsed, "good_rps": good / elapsed,
                       "sent": f["sent"], "answered": f["answered"], "unexpected": f["unexpected"],
                       "p50_ms": f["p50_ms"], "p99_ms": f["p99_ms"], "fast_p99_ms": f["fast_p99_ms"],
                       "server_cores": server_s / elapsed, "client_cores": client_s / elapsed,
                       "others_cores": max(0.0, (busy_cpu_s() - busy0 - server_s - client_s) / elapsed)})
        print(f"probe c={c}: {levels[-1]['rps']:.1f} req/s p99 {f['p99_ms']} ms", file=sys.stderr, flush=True)
    best = max(levels, key=lambda p: p["rps"])
    return {"levels": levels, "saturation_rps": best["rps"], "at_concurrency": best["concurrency"],
            "errors": rec.errors}


async def soak(traffic: Traffic, server_pid: int, rate: float, args: argparse.Namespace, rng: random.Random,
               counter: list[int]) -> dict:
    rec = Recorder()
    rec.keep_samples = True
    minutes: list[dict] = []
    outstanding: set[asyncio.Task] = set()
    start = time.monotonic()
    end = start + args.duration_s
    interval = 1.0 / rate
    stop_sampling = asyncio.Event()

    def snapshot() -> dict:
        total, own = rss_kib(server_pid)
        return {"t": time.monotonic(), "server_cpu_s": tree_cpu_s(server_pid), "client_cpu_s": own_cpu_s(),
                "busy_s": busy_cpu_s(), "rss_kib": total, "rss_main_kib": own}

    first_snap = snapshot()
    first_failures = await failure_counters(traffic)
    baseline = {"rss_mib": first_snap["rss_kib"] / 1024, "rss_main_mib": first_snap["rss_main_kib"] / 1024,
                "failures": first_failures}

    async def sampler() -> None:
        prev, prev_fail = first_snap, first_failures
        minute = 0
        while True:
            target = start + 60.0 * (minute + 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), max(0.0, min(target, end) - time.monotonic()))
            w, rec.window = rec.window, Window()
            now = snapshot()
            fails = await failure_counters(traffic)
            elapsed = now["t"] - prev["t"]
            server_s, client_s = now["server_cpu_s"] - prev["server_cpu_s"], now["client_cpu_s"] - prev["client_cpu_s"]
            f = w.figures()
            delta = {k: v - prev_fail.get(k, 0) for k, v in fails.items() if isinstance(v, float) and v - prev_fail.get(k, 0)}
            minutes.append({
                "minute": minute + 1, "seconds": elapsed, **f,
                "outstanding_at_end": len(outstanding),
                "rss_mib": now["rss_kib"] / 1024, "rss_main_mib": now["rss_main_kib"] / 1024,
                "metrics_failures": {k: v for k, v in delta.items() if k != "_success_total"},
                "metrics_success": delta.get("_success_total", 0),
                "loadavg_1m": os.getloadavg()[0],
                "server_cores": server_s / elapsed, "client_cores": client_s / elapsed,
                "others_cores": max(0.0, (now["busy_s"] - prev["busy_s"] - server_s - client_s) / elapsed),
            })
            m = minutes[-1]
            print(f"minute {m['minute']}: sent {m['sent']} shed {m['shed']} unexpected {m['unexpected']} "
                  f"p99 {m['p99_ms'] and round(m['p99_ms'], 1)} ms rss {m['rss_mib']:.1f} MiB load {m['loadavg_1m']:.2f}",
                  file=sys.stderr, flush=True)
            prev, prev_fail = now, fails
            minute += 1
            if stop_sampling.is_set() or time.monotonic() >= end - 0.5:
                return

    sampling = asyncio.create_task(sampler())
    next_t = start
    while True:
        next_t += interval
        if next_t >= end:
            break
        delay = next_t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(outstanding) >= args.max_outstanding:
            rec.window.shed += 1
            continue
        counter[0] += 1
        rec.window.sent += 1
        task = asyncio.create_task(rec.one(traffic, draw(rng), counter[0]))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    sent_s = time.monotonic() - start
    if outstanding:  # answers still due belong to the last minute
        await asyncio.wait(set(outstanding), timeout=GENERATE_TIMEOUT_S + 5)
    stop_sampling.set()
    await sampling
    # p99 over the first and the last five minutes, pooled samples (not a mean of minute p99s)
    t_first, t_last = start + 300.0, time.monotonic() - 300.0
    pooled: dict = {}
    for name, pick in (("first5", lambda t: t <= t_first), ("last5", lambda t: t >= t_last)):
        chosen = [(k, ms) for t, k, ms in rec.samples if pick(t)]
        pooled[name] = {"all": quantiles([ms for _, ms in chosen]),
                        "fast": quantiles([ms for k, ms in chosen if k != "generate"]),
                        **{k: quantiles([ms for kk, ms in chosen if kk == k]) for k in MIX if k != "bad"}}
    return {"baseline": baseline, "minutes": minutes, "pooled": pooled, "sending_s": sent_s,
            "wall_s": time.monotonic() - start, "errors": rec.errors}


async def measure(server: ServerProcess, http_url: str, grpc_url: str, args: argparse.Namespace) -> dict:
    traffic = Traffic(http_url, grpc_url, args.http_connections)
    rng = random.Random(SEED)
    counter = [0]
    try:
        probed = await probe(traffic, server.pid, args, rng, counter)
        rate = args.rate or args.load * probed["saturation_rps"]
        print(f"saturation {probed['saturation_rps']:.1f} req/s; soak at {rate:.1f} req/s for {args.duration_s} s",
              file=sys.stderr, flush=True)
        await asyncio.sleep(args.settle_s)
        soaked = await soak(traffic, server.pid, rate, args, rng, counter)
    finally:
        await traffic.close()
    return {"probe": probed, "planned_rps": rate, **soaked}


def build_repository(dest: Path) -> list[str]:
    from export.default_repository import build_default_repository

    build_default_repository(dest)
    return sorted(p.name for p in dest.iterdir() if p.is_dir())


def run(args: argparse.Namespace) -> dict:
    wall0 = time.perf_counter()
    results: dict = {**record("loadtests.soak", WATCHED, args.json)}
    results["settings"] = {
        "duration_s": args.duration_s, "load": args.load, "rate_override": args.rate, "mix": MIX,
        "max_outstanding": args.max_outstanding, "http_connections": args.http_connections, "probe_levels": list(args.probe_levels), "probe_s": args.probe_s,
        "warmup_s": args.warmup_s, "generate_steps": GENERATE_STEPS, "timeout_s": TIMEOUT_S,
        "generate_timeout_s": GENERATE_TIMEOUT_S, "seed": SEED,
        "loadavg_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="deepserve-soak-") as tmp:
        repo = Path(tmp) / "repo"
        results["settings"]["models"] = build_repository(repo)
        http_port, grpc_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--log-level", "warning"]
        log_path = Path(tmp) / "server.log"
        server = ServerProcess("deepserve", cmd, f"http://127.0.0.1:{http_port}/v2/health/ready", log_path=log_path, cwd=ROOT)
        results["settings"]["server_cmd"] = " ".join(["python", *cmd[1:]]).replace(str(repo), "$TMP/repo")
        server.start(timeout_s=300)
        try:
            results.update(asyncio.run(measure(server, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", args)))
            results["server_alive_at_end"] = server.proc.poll() is None
        finally:
            server.stop()
            results["server_log"] = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-50:]
    results["loadavg_at_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - wall0
    note_edits(results, WATCHED)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=1800.0, help="the open-loop soak")
    parser.add_argument("--load", type=float, default=0.7, help="share of the probed saturation rate")
    parser.add_argument("--rate", type=float, default=None, help="requests/s to soak at (skips the share)")
    parser.add_argument("--max-outstanding", type=int, default=64, help="requests in flight at most; past it, shed")
    parser.add_argument("--http-connections", type=int, default=16,
                        help="keep-alive HTTP connections (httpx pool; a request past them waits for one, timed)")
    parser.add_argument("--probe-levels", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--probe-s", type=float, default=8.0, help="seconds per probe level")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=3.0, help="pause between the probe and the soak")
    add_output_arguments(parser, quiet_wait_s=0.0)
    args = parser.parse_args()
    finish(args, run, render)


if __name__ == "__main__":
    main()
