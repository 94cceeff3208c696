"""``POST /v1/detect`` under load vs the detector in-process, in one server, one run.

The issue's performance requirement, measured here: *with 32 concurrent clients uploading
640x480 JPEGs, detection throughput is at least 0.7 x the detector's in-process throughput
on pre-decoded tensors, measured in the same run*; and the p50 / p99 of ``/v1/detect`` at 1
and 32 clients, with where the time goes (decode, queue, network, NMS).

  (a) in-process: ``server.runtimes.onnxruntime.OnnxRuntime`` on the exported ``shapes``
      network, loaded with the options the server derives from its ``config.pbtxt``, fed
      the scenes already decoded and letterboxed, batches of 1, 4, 8, 16 (rows/s, one thread);
  (b) over HTTP: multipart JPEG uploads to ``/v1/detect`` (the ``shapes_detect`` ensemble:
      decode + letterbox -> network -> peaks + NMS), 1 client (p50 / p99) and 32 clients
      (req/s, p50 / p99), aiohttp, one keep-alive connection per client;
  (c) attribution: the server's statistics (Triton's statistics extension) of the ensemble
      and its three steps, diffed around every phase.

(a) and (b) alternate over ``--rounds`` rounds (default 3); the page reports the ratio
(b at 32 clients req/s) / (a best rows/s) against 0.7 and says whether it is met.

    .venv/bin/python -m loadtests.detect_bench --out docs/benchmarks-detect.md \\
        --json loadtests/results/detect-<date>.json
    .venv/bin/python -m loadtests.detect_bench --from-json loadtests/results/detect-<date>.json \\
        --out docs/benchmarks-detect.md                  # re-render the page, no run
    .venv/bin/python -m loadtests.detect_bench --untrained   # dry run: a seeded, untrained detector

It starts its own server on 127.0.0.1 (a temp repository); all traffic is loopback. Server
and load generator share the host's cores. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.detect_report import ENSEMBLE, NETWORK, STEPS, TARGET, headline, render  # noqa: F401 (re-exported)
from loadtests.procs import busy_cpu_s, own_cpu_s, tree_cpu_s
from loadtests.runinfo import (
    Phase,
    add_output_arguments,
    finish,
    note_edits,
    pool,
    quantiles,
    record,
    session_options,
    stats_delta,
    wait_for_quiet,
)

ROOT = Path(__file__).resolve().parents[1]
SEED = 31_337  # the bench's own scenes: neither shapes_data.TRAIN_SEED nor HELDOUT_SEED
WIDTH, HEIGHT = 640, 480
BATCHES = (1, 4, 8, 16)
MAX_ERROR_SHARE = 0.1  # a phase with more failed requests than this aborts the run
BOUNDARY = "deepserve-detect-bench-7f3a9c"


# ---- inputs ------------------------------------------------------------------------------

# The measured code, checked for uncommitted edits before and after a run.
WATCHED = ("server/", "models/shapes_detector.py", "models/shapes_data.py", "export/", "tests/integration/server_fixtures.py", "loadtests/procs.py", "loadtests/detect_bench.py")


class _SizedRng:
    """A ``numpy.random.Generator`` whose first ``integers`` draw (``make_scene``'s image
    size) answers ``(width, height)``; every other draw is the real generator's."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self._rng, self._size = rng, (width, height)

    def integers(self, *args, **kwargs):
        if self._size is not None:
            size, self._size = self._size, None
            return np.array(size)
        return self._rng.integers(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._rng, name)


def make_scenes(seed: int, count: int, width: int = WIDTH, height: int = HEIGHT) -> list:
    """``count`` scenes from ``shapes_data.make_scene``, drawn at ``width`` x ``height``."""
    from models.shapes_data import make_scene

    scenes = [make_scene(_SizedRng(np.random.default_rng([seed, i]), width, height)) for i in range(count)]
    for scene in scenes:
        if scene.image.shape != (height, width, 3):  # the generator changed how it draws its size
            raise RuntimeError(f"a scene came out {scene.image.shape}, not ({height}, {width}, 3)")
    return scenes


def multipart_body(jpeg: bytes, index: int) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"scene{index}.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


# ---- (a) in-process ------------------------------------------------------------------------


def load_like_server(model_dir: Path):
    """One instance of an entry (the ONNX network or a Python step), loaded by deepserve's own
    runtime classes with the options the server derives from the entry's ``config.pbtxt``."""
    from server import runtimes
    from server.repository.config import read_config
    from server.repository.model import LoadOptions, find_kind, instance_devices, model_file, runtime_options

    config = read_config(model_dir)
    cpu_instances = sum(1 for d in instance_devices(config) if d == "cpu")
    if "version" in inspect.signature(runtime_options).parameters:
        options = runtime_options(config, "1", "cpu", cpu_instances, LoadOptions())
    else:  # before model versions reached the options
        options = runtime_options(config, "cpu", cpu_instances, LoadOptions())
    kind = find_kind(config, model_dir / "1")
    runtime = runtimes.create(kind)
    runtime.load(model_file(kind, config, model_dir / "1"), options)
    return runtime, options


def inprocess_point(runtime, input_name: str, pixels: np.ndarray, batch: int, duration_s: float, server_pid: int) -> dict:
    """Back-to-back ``execute`` calls on batches of the pre-decoded scenes for ``duration_s``."""
    batches = [np.ascontiguousarray(pixels[i:i + batch]) for i in range(0, len(pixels) - batch + 1, batch)]
    for x in batches[:2]:
        runtime.execute({input_name: x})
    samples, rows = [], 0
    own0, busy0, server0 = own_cpu_s(), busy_cpu_s(), tree_cpu_s(server_pid)
    t0 = time.perf_counter()
    end, i = t0 + duration_s, 0
    while (started := time.perf_counter()) < end:
        x = batches[i % len(batches)]
        i += 1
        runtime.execute({input_name: x})
        samples.append((time.perf_counter() - started) * 1e3)
        rows += len(x)
    wall = time.perf_counter() - t0
    own, server = own_cpu_s() - own0, tree_cpu_s(server_pid) - server0
    samples.sort()
    return {
        "batch": batch, "calls": len(samples), "rows": rows, "seconds": wall, "rows_per_s": rows / wall,
        "p50_ms": statistics.median(samples), "p99_ms": samples[int(0.99 * (len(samples) - 1))],
        "own_cores": own / wall, "own_cpu_ms_per_row": own * 1e3 / rows, "server_cores": server / wall,
        "others_cores": max(0.0, (busy_cpu_s() - busy0 - own - server) / wall),
    }


def step_costs(pre, network, post, jpegs: list[bytes]) -> dict:
    """The server's three steps called in-process, one image at a time, in this thread:
    CPU ms per image of decode + letterbox and of peaks + NMS (``time.thread_time``: these
    steps run on the calling thread), wall ms of each, and the detections per image."""
    cpu = {"pre": 0.0, "post": 0.0}
    wall = {"pre": 0.0, "network": 0.0, "post": 0.0}
    counts = []
    for jpeg in jpegs:
        c0, w0 = time.thread_time(), time.perf_counter()
        out = pre.execute({"IMAGE": np.array([[jpeg]], dtype=object)})
        c1, w1 = time.thread_time(), time.perf_counter()
        maps = network.execute({"image": out["PIXELS"]})
        w2 = time.perf_counter()
        c2 = time.thread_time()
        answer = post.execute({"heatmap": maps["heatmap"], "size": maps["size"], "offset": maps["offset"],
                               "transform": out["TRANSFORM"]})
        c3, w3 = time.thread_time(), time.perf_counter()
        cpu["pre"] += c1 - c0
        cpu["post"] += c3 - c2
        wall["pre"] += w1 - w0
        wall["network"] += w2 - w1
        wall["post"] += w3 - w2
        counts.append(int(answer["count"][0, 0]))
    n = len(jpegs)
    return {"decode_cpu_ms": cpu["pre"] * 1e3 / n, "nms_cpu_ms": cpu["post"] * 1e3 / n,
            "decode_wall_ms": wall["pre"] * 1e3 / n, "network_wall_ms": wall["network"] * 1e3 / n,
            "nms_wall_ms": wall["post"] * 1e3 / n, "images": n, "counts": counts}


# ---- (b) over HTTP -------------------------------------------------------------------------


class Client:
    """aiohttp, one keep-alive connection per concurrent client, prebuilt multipart bodies."""

    def __init__(self, base_url: str, bodies: list[bytes], concurrency: int) -> None:
        import aiohttp

        self.url = f"{base_url}/v1/detect"
        self.stats_url = f"{base_url}/v2/models/stats"
        self.bodies = bodies
        self.headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency + 2, force_close=False),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def detect(self, index: int) -> bytes:
        async with self.session.post(self.url, data=self.bodies[index % len(self.bodies)], headers=self.headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
            return body

    async def snapshot(self) -> dict:
        async with self.session.get(self.stats_url) as resp:
            data = await resp.json()
        return {row["name"]: row for row in data["model_stats"]}

    async def close(self) -> None:
        await self.session.close()


async def sequential(client: Client, duration_s: float, start: int = 0) -> tuple[Phase, float]:
    phase, i = Phase(), start
    t0 = time.perf_counter()
    end = t0 + duration_s
    while time.perf_counter() < end:
        began = time.perf_counter()
        try:
            await client.detect(i)
            phase.samples_ms.append((time.perf_counter() - began) * 1e3)
        except Exception as exc:  # counted and reported
            phase.failed(exc)
        i += 1
    return phase, time.perf_counter() - t0


async def concurrent(client: Client, concurrency: int, settle_s: float, window_s: float, marks) -> tuple[Phase, float]:
    """``concurrency`` workers back to back; after ``settle_s`` a ``window_s`` window is measured
    (``marks(start|end)`` is awaited at its edges). (phase of the answers completed in the window, its length)."""
    phase = Phase()
    window = [float("inf"), float("inf")]
    stop = False

    async def worker(k: int) -> None:
        i = k
        while not stop:
            began = time.perf_counter()
            try:
                await client.detect(i)
                ok, exc = True, None
            except Exception as e:  # counted and reported
                ok, exc = False, e
            done = time.perf_counter()
            if window[0] <= done <= window[1]:
                if ok:
                    phase.samples_ms.append((done - began) * 1e3)
                else:
                    phase.failed(exc)
            i += concurrency

    tasks = [asyncio.ensure_future(worker(k)) for k in range(concurrency)]
    await asyncio.sleep(settle_s)
    await marks("start")
    window[0] = time.perf_counter()
    await asyncio.sleep(window_s)
    window[1] = time.perf_counter()
    await marks("end")
    stop = True
    await asyncio.gather(*tasks)
    return phase, window[1] - window[0]


# ---- checks ------------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1y1x2y2 boxes."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area = lambda x: (x[:, 2] - x[:, 0]).clip(0) * (x[:, 3] - x[:, 1]).clip(0)
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


async def check_answers(client: Client, scenes: list) -> dict:
    """Every scene once: answered, the right size, and boxes matching the drawn objects."""
    from models.shapes_data import CLASSES

    answered, sizes, found, matched_gt, matched_det, truth, counts = 0, set(), 0, 0, 0, 0, []
    for i, scene in enumerate(scenes):
        answer = json.loads(await client.detect(i))
        answered += 1
        sizes.add(f"{answer['width']}x{answer['height']}")
        dets = answer["detections"]
        found += len(dets)
        counts.append(len(dets))
        truth += len(scene.labels)
        if not dets or not len(scene.labels):
            continue
        boxes = np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in dets], np.float32)
        labels = np.array([CLASSES.index(d["label"]) if d["label"] in CLASSES else -1 for d in dets])
        hit = (_iou(scene.boxes, boxes) >= 0.5) & (scene.labels[:, None] == labels[None, :])
        matched_gt += int(hit.any(axis=1).sum())
        matched_det += int(hit.any(axis=0).sum())
    return {"images": len(scenes), "answered": answered, "sizes": ", ".join(sorted(sizes)), "detections": found,
            "ground_truth": truth, "recall_at_50": matched_gt / truth if truth else None,
            "precision_at_50": matched_det / found if found else None, "counts": counts}


# ---- the run -------------------------------------------------------------------------------


async def measure(base_url: str, server_pid: int, repo: Path, scenes: list, args: argparse.Namespace) -> dict:
    from models.shapes_data import letterbox

    size = args.input_size
    pixels = np.stack([letterbox(scene.image, size)[0] for scene in scenes])  # (N, 3, S, S): pre-decoded
    runtime, _options = load_like_server(repo / NETWORK)
    session = session_options(runtime)
    pre, _ = load_like_server(repo / STEPS[0])
    post, _ = load_like_server(repo / STEPS[2])
    jpegs = [scene.jpeg for scene in scenes]
    input_name = "image"
    bodies = [multipart_body(scene.jpeg, i) for i, scene in enumerate(scenes)]
    client = Client(base_url, bodies, args.concurrency)
    detect: dict = {"errors": 0, "error_messages": [], "stats": {"c1": {}, "cN": {}}}
    samples: dict[str, list[float]] = {"c1": [], "cN": []}
    rounds: list[dict] = []
    try:
        checks = await check_answers(client, scenes)
        # warm-up: connections, both pre instances, the batch shapes ONNX Runtime sees, the in-process session
        await sequential(client, 1.0)
        await concurrent(client, args.concurrency, 0.5, 2.0, _no_marks)
        for batch in BATCHES:
            inprocess_point(runtime, input_name, pixels, batch, 0.3, server_pid)
        quiet, budget = [], args.quiet_wait
        for index in range(args.rounds):
            seen = await wait_for_quiet(server_pid, args.quiet_cores, budget)
            budget = max(0.0, budget - seen["waited_s"])
            quiet.append(seen)
            order = ("a", "b") if index % 2 == 0 else ("b", "a")
            row: dict = {"round": index + 1, "order": " then ".join(order)}
            for part in order:
                if part == "a":
                    row["inprocess"] = {str(b): inprocess_point(runtime, input_name, pixels, b, args.inprocess_s, server_pid)
                                        for b in BATCHES}
                    costs = step_costs(pre, runtime, post, jpegs)
                    counts = costs.pop("counts")
                    row["steps"] = costs
                    if "same_count" not in checks:  # the in-process chain finds what /v1/detect found
                        checks["same_count"] = sum(a == b for a, b in zip(counts, checks["counts"], strict=True))
                    continue
                for key in ("c1", "cN"):
                    phase, stats, figures = await _http_phase(client, server_pid, key, args)
                    detect["errors"] += phase.errors
                    detect["error_messages"] = (detect["error_messages"] + phase.messages)[:5]
                    detect["stats"][key][index + 1] = stats
                    samples[key] += phase.samples_ms
                    row[key] = figures
            best = max(row["inprocess"].values(), key=lambda p: p["rows_per_s"])
            row["best_batch"], row["ratio"] = best["batch"], row["cN"]["rps"] / best["rows_per_s"]
            phases = [row["c1"], row["cN"], *row["inprocess"].values()]
            row["others_cores"] = sum(p["others_cores"] * p["seconds"] for p in phases) / sum(p["seconds"] for p in phases)
            rounds.append(row)
    finally:
        await client.close()
        for loaded in (runtime, pre, post):
            loaded.unload()
    by_batch = {}
    for b in BATCHES:
        points = [r["inprocess"][str(b)] for r in rounds]
        by_batch[str(b)] = {f: statistics.median(p[f] for p in points)
                            for f in ("rows_per_s", "p50_ms", "p99_ms", "own_cores", "own_cpu_ms_per_row", "server_cores")}
    best_batch = max(by_batch, key=lambda b: by_batch[b]["rows_per_s"])
    for key in ("c1", "cN"):
        fields = ("rps", "server_cores", "client_cores", "server_cpu_ms", "client_cpu_ms")
        detect[key] = {f: statistics.median(r[key][f] for r in rounds) for f in fields}
        detect[key].update(quantiles(samples[key]), samples=len(samples[key]),
                           errors=sum(r[key]["errors"] for r in rounds))
        detect["stats"][key] = {"by_round": detect["stats"][key], "pooled": pool(detect["stats"][key])}
    phases = [p for r in rounds for p in (r["c1"], r["cN"], *r["inprocess"].values())]
    wall = sum(p["seconds"] for p in phases)
    steps = {f: statistics.median(r["steps"][f] for r in rounds) for f in rounds[0]["steps"] if f != "images"}
    return {
        "checks": checks,
        "inprocess": {"by_batch": by_batch, "best_batch": int(best_batch),
                      "best_rows_per_s": by_batch[best_batch]["rows_per_s"], "session": session},
        "steps_inprocess": steps,
        "detect": detect,
        "rounds": rounds,
        "others_cores": sum(p["others_cores"] * p["seconds"] for p in phases) / wall,
        "quiet_wait": quiet,
        "measured_s": wall,
    }


async def _no_marks(_edge: str) -> None:
    return None


async def _http_phase(client: Client, server_pid: int, key: str, args: argparse.Namespace) -> tuple[Phase, dict, dict]:
    """One measured phase: 1 client for ``latency_s``, or ``concurrency`` clients over a window."""
    marks: dict[str, tuple] = {}

    async def mark(edge: str) -> None:  # the CPU readings sit at the window's edges, the snapshots outside them
        read = lambda: (tree_cpu_s(server_pid), own_cpu_s(), busy_cpu_s(), time.perf_counter())
        if edge == "start":
            snapshot = await client.snapshot()
            marks[edge] = (snapshot, *read())
        else:
            cpu = read()
            marks[edge] = (*cpu, await client.snapshot())

    if key == "c1":
        await mark("start")
        phase, elapsed = await sequential(client, args.latency_s)
        await mark("end")
        attempted = len(phase.samples_ms) + phase.errors
    else:
        phase, elapsed = await concurrent(client, args.concurrency, args.settle_s, args.load_s, mark)
        attempted = len(phase.samples_ms) + phase.errors
    if phase.errors > MAX_ERROR_SHARE * max(1, attempted):
        raise RuntimeError(f"{key}: {phase.errors} of {attempted} requests failed; first: {phase.messages[:1]}")
    before, server0, client0, busy0, t0 = marks["start"]
    server1, client1, busy1, t1, after = marks["end"]
    wall = t1 - t0
    server_s, client_s = server1 - server0, client1 - client0
    done = max(1, attempted)
    figures = {
        **quantiles(phase.samples_ms),
        "requests": attempted, "errors": phase.errors, "seconds": wall,
        "rps": len(phase.samples_ms) / elapsed,
        "server_cores": server_s / wall, "client_cores": client_s / wall,
        "server_cpu_ms": server_s * 1e3 / done, "client_cpu_ms": client_s * 1e3 / done,
        "others_cores": max(0.0, (busy1 - busy0 - server_s - client_s) / wall),
    }
    return phase, stats_delta(before, after), figures


# ---- setup and the command line ------------------------------------------------------------


def _weights(args: argparse.Namespace, tmp: Path) -> tuple[Path, bool]:
    """(the weights file, whether it is the trained one); an untrained, seeded detector in
    ``tmp`` with ``--untrained``. The family reads its input size from ``shapes_detector.WEIGHTS``,
    so that module attribute is pointed at the file for this process (nothing is written to models/)."""
    import torch

    from models import shapes_detector

    if args.untrained:
        torch.manual_seed(0)
        path = tmp / "untrained_shapes_detector.safetensors"
        shapes_detector.save(shapes_detector.ShapesDetector(), path)
    else:
        path = Path(args.weights) if args.weights else shapes_detector.WEIGHTS
        if not path.exists():
            raise SystemExit(f"no weights at {path}: train them (python -m models.train_shapes), or --untrained for a dry run")
    shapes_detector.WEIGHTS = path
    return path, not args.untrained


def build_repository(dest: Path, weights: Path) -> int:
    """``shapes`` (the ONNX network) and the ``shapes_detect`` ensemble; returns the input size."""
    from export.default_repository import export_family_entry
    from export.families import get_family
    from export.pipelines import write_detect_pipeline
    from models import shapes_detector

    family = get_family("shapes")
    export_family_entry(dest, family, NETWORK, weights=weights, force=True)
    size = int(family.spec.inputs[0].dims[-1])
    write_detect_pipeline(dest, ENSEMBLE, NETWORK, size, tuple(shapes_detector.LABELS))
    return size


def config_summary(model_dir: Path) -> dict:
    """What the page says about an entry's scheduling, read back from its ``config.pbtxt``."""
    from server.repository.config import read_config

    c = read_config(model_dir)
    db = c.dynamic_batching if c.HasField("dynamic_batching") else None
    return {"max_batch_size": c.max_batch_size, "dynamic_batching": db is not None,
            "preferred": list(db.preferred_batch_size) if db is not None else [],
            "delay_us": db.max_queue_delay_microseconds if db is not None else 0,
            "instances": sum(g.count or 1 for g in c.instance_group) or 1}


def run(args: argparse.Namespace) -> dict:
    from tests.integration import server_fixtures as fx

    wall0 = time.perf_counter()
    results: dict = {
        **record("loadtests.detect_bench", WATCHED, args.json),
    }
    with tempfile.TemporaryDirectory(prefix="deepserve-detect-") as tmp:
        weights, trained = _weights(args, Path(tmp))
        t = time.perf_counter()
        args.input_size = build_repository(Path(tmp) / "repo", weights)
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        scenes = make_scenes(args.seed, args.images)
        scenes_s = time.perf_counter() - t
        results["settings"] = {
            "rounds": args.rounds, "concurrency": args.concurrency, "latency_s": args.latency_s, "load_s": args.load_s,
            "settle_s": args.settle_s, "inprocess_s": args.inprocess_s, "batches": list(BATCHES), "images": args.images,
            "image_size": f"{WIDTH}x{HEIGHT}", "seed": args.seed, "target": TARGET,
            "mean_jpeg_bytes": statistics.fmean(len(s.jpeg) for s in scenes),
            "weights": {"path": str(weights.relative_to(ROOT)) if weights.is_relative_to(ROOT) else "a temp file (untrained)",
                        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:12], "trained": trained,
                        "input_size": args.input_size},
            "client": "aiohttp " + _version("aiohttp") + (" on uvloop" if _uvloop() else ""),
            "setup_s": {"export": export_s, "scenes": scenes_s},
            "configs": {name: config_summary(Path(tmp) / "repo" / name) for name in STEPS},
        }
        with fx.running_server(Path(tmp) / "repo", wait_for="ready", timeout_s=120) as server:
            coroutine = measure(f"http://{server.http_url}", server.pid, Path(tmp) / "repo", scenes, args)
            loop = _uvloop()
            if loop is not None:
                with asyncio.Runner(loop_factory=loop) as runner:
                    results.update(runner.run(coroutine))
            else:
                results.update(asyncio.run(coroutine))
            results["server_log"] = [line for line in server.log().splitlines() if line.strip()][-50:]
    results["total_s"] = time.perf_counter() - wall0
    note_edits(results, WATCHED)
    return results


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _uvloop():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a) and (b)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-s", type=float, default=6.0, help="1-client phase length per round")
    parser.add_argument("--load-s", type=float, default=12.0, help="measured window of the concurrent phase per round")
    parser.add_argument("--settle-s", type=float, default=2.0, help="concurrent load before the window opens")
    parser.add_argument("--inprocess-s", type=float, default=2.0, help="in-process seconds per batch size per round")
    parser.add_argument("--images", type=int, default=64, help="fresh 640x480 scenes, cycled")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--weights", help="detector weights (default: models/weights/shapes_detector.safetensors)")
    parser.add_argument("--untrained", action="store_true", help="a seeded, untrained detector in a temp file (dry run)")
    add_output_arguments(parser, quiet_wait_s=45.0)
    args = parser.parse_args()

    finish(args, run, render)


if __name__ == "__main__":
    main()
