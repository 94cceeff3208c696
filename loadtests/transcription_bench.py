"""Transcription of long recordings: real-time factor at 1 stream, throughput at 8, one run.

The issue's requirement (#12), measured here: *real-time factor (processing time / audio
duration) at 1 stream and at 8 concurrent streams of long audio; RTF <= 0.05 at 1 stream;
aggregate throughput (audio seconds per wall second) at 8 streams >= 3x that of one
stream; where the time goes.*

  * recordings  K espeak-ng recordings of 2-3 minutes (vocabulary sentences, one training
                voice each, pauses between sentences), synthesized once per run into the
                temp dir, sent as FLAC at espeak-ng's 22,050 Hz (the server resamples);
  * phases      1, 4 and 8 streams: n clients (asyncio + httpx, one keep-alive connection
                each), each sending its share of recordings back to back to
                ``POST /v1/audio/transcriptions`` (model ``speech``, json);
  * figures     per request RTF = client latency / recording duration (p50 per phase);
                throughput = audio seconds answered / phase wall seconds; the server's
                ``/metrics`` scraped around each phase: stage histogram sums (decode,
                split, features, network, ctc), ``speech_ctc``'s queue / compute / batch
                size; CPU of the server / client / others (``/proc``).

Rounds run every level once, the order reversed every other round; the page reports
medians over rounds. In-process references (once, after the rounds): the decode stage
split into decoding and resampling, and the same ONNX network on the same chunks, one
chunk per call vs batched.

    .venv/bin/python -m loadtests.transcription_bench --out docs/benchmarks-transcription.md \\
        --json loadtests/results/transcription-<date>.json
    .venv/bin/python -m loadtests.transcription_bench --from-json loadtests/results/transcription-<date>.json \\
        --out docs/benchmarks-transcription.md           # re-render the page, no run
    .venv/bin/python -m loadtests.transcription_bench --recordings 2 --seconds 20 --requests 1 \\
        --rounds 1 --levels 1 2 --quiet-wait 0           # smoke test

It starts its own server on 127.0.0.1 (a temp repository); all traffic is loopback. Server
and load generator share the host's cores. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtests.procs import busy_cpu_s, own_cpu_s, tree_cpu_s
from loadtests.runinfo import (
    Phase,
    add_output_arguments,
    finish,
    load_network,
    note_edits,
    package_version,
    record,
    session_options,
    wait_for_quiet,
)
from loadtests.transcription_report import LEVELS, MODEL, NETWORK, STAGES, TARGET_RTF, TARGET_SPEEDUP, headline, render  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
SEED = 121_212  # the bench's own sentences and voices; no training split uses it
ROUTE = "/v1/audio/transcriptions"
SOURCE_RATE = 22_050  # espeak-ng's own rate: the server resamples
PAUSE_S = (0.4, 1.2)  # silence between sentences
MAX_REQUEST_BYTES = 64 * 2**20
MAX_ERROR_SHARE = 0.1  # a phase with more failed requests than this aborts the run
INPROCESS_BATCH = 8
SHORT_S = (2.5, 3.5)  # the fairness probe's short request (the "3-second request")

# The measured code, checked for uncommitted edits before and after a run.
WATCHED = ("server/", "export/", "models/speech_ctc.py", "models/weights/speech_ctc.safetensors",
           "tests/integration/server_fixtures.py", "loadtests/procs.py", "loadtests/transcription_bench.py")


# ---- the recordings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    data: bytes  # FLAC
    seconds: float
    transcript: str  # normalized reference
    voice: str
    sentences: int


def _speak(text: str, voice: str, speed_wpm: int, pitch: int) -> np.ndarray:
    import subprocess

    import soundfile

    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    x, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    if rate != SOURCE_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz; the bench expects {SOURCE_RATE}")
    return x if x.ndim == 1 else x.mean(axis=1)


def synthesize(index: int, seconds: float, words: list[str], voices: list[str]) -> Recording:
    """Sentences in one voice, joined with pauses, until ``seconds`` of audio."""
    import soundfile

    from models.speech_text import make_sentence

    rng = np.random.default_rng(SEED + index)
    voice = voices[int(rng.integers(0, len(voices)))]
    speed, pitch = int(rng.integers(150, 191)), int(rng.integers(30, 71))
    parts, texts, total = [], [], 0
    while total < seconds * SOURCE_RATE:
        text, transcript = make_sentence(rng, words)
        speech = _speak(text, voice, speed, pitch)
        pause = np.zeros(int(rng.uniform(*PAUSE_S) * SOURCE_RATE), np.float32)
        parts += [speech, pause]
        texts.append(transcript)
        total += len(speech) + len(pause)
    samples = np.concatenate(parts)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SOURCE_RATE, format="FLAC", subtype="PCM_16")
    return Recording(buffer.getvalue(), len(samples) / SOURCE_RATE, " ".join(texts), voice, len(texts))


def make_recordings(count: int, seconds: float, cache: Path) -> list[Recording]:
    """``count`` recordings, synthesized two at a time (the cores are shared), cached in ``cache``."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from models.speech_data import voices
    from models.speech_text import load_vocab

    words, pool = load_vocab(), voices(unseen=False)

    def one(i: int) -> Recording:
        key = hashlib.sha256(f"{SEED}-{i}-{seconds}".encode()).hexdigest()[:12]
        path, meta = cache / f"rec-{key}.flac", cache / f"rec-{key}.json"
        if path.exists() and meta.exists():
            m = json.loads(meta.read_text())
            return Recording(path.read_bytes(), m["seconds"], m["transcript"], m["voice"], m["sentences"])
        r = synthesize(i, seconds, words, pool)
        path.write_bytes(r.data)
        meta.write_text(json.dumps({"seconds": r.seconds, "transcript": r.transcript, "voice": r.voice,
                                    "sentences": r.sentences}))
        return r

    cache.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(2) as pool_:
        return list(pool_.map(one, range(count)))


# ---- the server's metrics -------------------------------------------------------------------------


def scrape(text: str) -> dict[tuple[str, str, str], float]:
    """``/metrics`` as {(sample name, model, step): value}, summed over other labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, s.labels.get("model", ""), s.labels.get("step", ""))
            out[key] = out.get(key, 0.0) + s.value
    return out


def metrics_delta(before: dict, after: dict) -> dict:
    """What the server recorded between two scrapes: stage sums and counts of ``speech``,
    queue / compute / batch size of ``speech_ctc``, audio seconds and RTF of ``speech``."""
    def d(name: str, model: str, step: str = "") -> float:
        key = (name, model, step)
        return after.get(key, 0.0) - before.get(key, 0.0)

    hist = "deepserve_ensemble_step_duration_seconds"
    stages = {s: {"sum_s": d(f"{hist}_sum", MODEL, s), "count": int(d(f"{hist}_count", MODEL, s))} for s in STAGES}
    network = {
        "queue_s": d("deepserve_queue_duration_seconds_sum", NETWORK),
        "queued": int(d("deepserve_queue_duration_seconds_count", NETWORK)),
        "compute_s": d("deepserve_compute_duration_seconds_sum", NETWORK),
        "batches": int(d("deepserve_compute_duration_seconds_count", NETWORK)),
        "batch_rows": d("deepserve_batch_size_sum", NETWORK),
    }
    server = {
        "audio_s": d("deepserve_audio_seconds_total", MODEL),
        "rtf_sum": d("deepserve_transcription_real_time_factor_sum", MODEL),
        "rtf_count": int(d("deepserve_transcription_real_time_factor_count", MODEL)),
    }
    return {"stages": stages, "network": network, "server": server}


# ---- over HTTP ------------------------------------------------------------------------------------


class Client:
    def __init__(self, base_url: str, connections: int) -> None:
        import httpx

        self.http = httpx.AsyncClient(base_url=base_url, timeout=600.0,
                                      limits=httpx.Limits(max_connections=connections,
                                                          max_keepalive_connections=connections))

    async def transcribe(self, recording: Recording) -> dict:
        files = {"file": ("recording.flac", recording.data, "audio/flac")}
        resp = await self.http.post(ROUTE, files=files, data={"model": MODEL, "response_format": "json"})
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.json()

    async def metrics(self) -> dict:
        resp = await self.http.get("/metrics")
        resp.raise_for_status()
        return scrape(resp.text)

    async def close(self) -> None:
        await self.http.aclose()


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(reference, hypothesis or "<empty>"))


async def streams(client: Client, recordings: list[Recording], level: int, per_client: int,
                  first: int) -> tuple[Phase, dict, float]:
    """``level`` clients, each sending ``per_client`` recordings back to back: (latencies,
    per-request figures, seconds). Client ``c``'s ``j``-th request is recording
    ``first + c + j * level`` (mod K), so concurrent requests carry different recordings."""
    phase = Phase()
    done: dict = {"rtf": [], "audio_s": 0.0, "wer": [], "duration_mismatch_s": 0.0}

    async def one_client(c: int) -> None:
        for j in range(per_client):
            rec = recordings[(first + c + j * level) % len(recordings)]
            began = time.perf_counter()
            try:
                body = await client.transcribe(rec)
            except Exception as exc:  # counted and reported
                phase.failed(exc)
                continue
            latency = time.perf_counter() - began
            phase.samples_ms.append(latency * 1e3)
            done["rtf"].append(latency / rec.seconds)
            done["audio_s"] += rec.seconds
            done["wer"].append(word_error_rate(rec.transcript, body.get("text", "")))
            seen = float(body.get("usage", {}).get("seconds", rec.seconds))
            done["duration_mismatch_s"] = max(done["duration_mismatch_s"], abs(seen - rec.seconds))

    started = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(level)))
    return phase, done, time.perf_counter() - started


async def phase_point(client: Client, server_pid: int, recordings: list[Recording], level: int, per_client: int,
                      first: int) -> tuple[Phase, dict]:
    before = await client.metrics()
    server0, client0, busy0 = tree_cpu_s(server_pid), own_cpu_s(), busy_cpu_s()
    phase, done, wall = await streams(client, recordings, level, per_client, first)
    server_s, client_s = tree_cpu_s(server_pid) - server0, own_cpu_s() - client0
    others = max(0.0, (busy_cpu_s() - busy0 - server_s - client_s) / wall)
    after = await client.metrics()
    count = level * per_client
    if phase.errors > MAX_ERROR_SHARE * count:
        raise RuntimeError(f"{level} streams: {phase.errors} of {count} requests failed; first: {phase.messages[:1]}")
    figures = {
        "level": level, "requests": count, "answered": len(phase.samples_ms), "errors": phase.errors,
        "wall_s": wall, "audio_s": done["audio_s"], "rtf": done["rtf"], "latency_ms": phase.samples_ms,
        "wer": statistics.median(done["wer"]) if done["wer"] else None,
        "duration_mismatch_s": done["duration_mismatch_s"],
        "server_cores": server_s / wall, "client_cores": client_s / wall, "others_cores": others,
        **metrics_delta(before, after),
    }
    return phase, figures


# ---- in-process references -----------------------------------------------------------------------


def decode_split(recordings: list[Recording]) -> dict:
    """The decode stage without and with the resample, in this process (best of 3 each)."""
    from server.pipelines.audio import decode_audio

    def best(rate: int) -> float:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for r in recordings:
                decode_audio(r.data, rate)
            runs.append(time.perf_counter() - t0)
        return min(runs)

    return {"recordings": len(recordings), "audio_s": sum(r.seconds for r in recordings), "source_rate": SOURCE_RATE,
            "decode_s": best(SOURCE_RATE), "decode_resample_s": best(16_000)}






def chunk_features(recordings: list[Recording], pad_seconds: float = 2.5) -> list[np.ndarray]:
    """Each chunk's log-mel features, padded as the scheduler pads them: (1, frames, mels)."""
    from server.pipelines import audio
    from server.pipelines.audio_features import FEATURE_FLOOR, log_mel

    out = []
    step = round(pad_seconds / 0.01)
    for r in recordings:
        samples = audio.decode_audio(r.data, 16_000)
        for chunk in audio.split_chunks(samples, 16_000):
            f = log_mel(samples[chunk.start : chunk.end])
            padded = np.full((1, -(-len(f) // step) * step, f.shape[1]), FEATURE_FLOOR, np.float32)
            padded[0, : len(f)] = f
            out.append(padded)
    return out


def network_reference(model_dir: Path, recordings: list[Recording]) -> dict:
    """The same chunks through the ONNX network: one per call, then up to INPROCESS_BATCH
    equal-shape chunks per call (best of 2 each)."""
    runtime, _ = load_network(model_dir)
    try:
        feats = chunk_features(recordings)
        by_shape: dict[tuple, list[np.ndarray]] = {}
        for f in feats:
            by_shape.setdefault(f.shape, []).append(f)
        batches = [np.concatenate(group[i : i + INPROCESS_BATCH]) for group in by_shape.values()
                   for i in range(0, len(group), INPROCESS_BATCH)]
        for x in [group[0] for group in by_shape.values()] + batches:  # warm-up: every shape once
            runtime.execute({"features": x})

        def best(inputs: list[np.ndarray]) -> float:
            runs = []
            for _ in range(2):
                t0 = time.perf_counter()
                for x in inputs:
                    runtime.execute({"features": x})
                runs.append(time.perf_counter() - t0)
            return min(runs)

        return {"chunks": len(feats), "audio_s": sum(r.seconds for r in recordings), "batch": INPROCESS_BATCH,
                "calls": len(batches), "batch1_s": best(feats), "batched_s": best(batches),
                "session": session_options(runtime)}
    finally:
        runtime.unload()


# ---- the run --------------------------------------------------------------------------------------


def long_and_short(recordings: list[Recording], minutes: float, cache: Path) -> tuple[Recording, Recording]:
    """A recording of ``minutes`` (the long ones, repeated, as one FLAC) and a short one of
    about 3 s (one sentence, another voice) for the fairness probe."""
    import soundfile

    from models.speech_data import voices
    from models.speech_text import load_vocab

    parts, total = [], 0.0
    while total < minutes * 60:
        samples, rate = soundfile.read(io.BytesIO(recordings[len(parts) % len(recordings)].data), dtype="float32")
        parts.append(samples)
        total += len(samples) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, np.concatenate(parts), rate, format="FLAC", subtype="PCM_16")
    long = Recording(buffer.getvalue(), total, "", "several", 0)
    # one sentence, the first of this seed's that lasts 2.5-3.5 s with its trailing pause
    words, seen = load_vocab(), voices(unseen=False)
    short = next(r for i in range(1000, 1200) if SHORT_S[0] <= (r := synthesize(i, 0.1, words, seen)).seconds <= SHORT_S[1])
    return long, short


async def fairness(client: Client, long: Recording, short: Recording, requests: int) -> dict:
    """The short request's latency alone, then while the long one is being transcribed."""
    alone, loaded = [], []
    for _ in range(requests):
        began = time.perf_counter()
        await client.transcribe(short)
        alone.append(time.perf_counter() - began)
    long_task = asyncio.ensure_future(client.transcribe(long))
    began_long = time.perf_counter()
    await asyncio.sleep(1.0)  # the long request is decoded and its chunks are at the network
    for _ in range(requests):
        began = time.perf_counter()
        await client.transcribe(short)
        loaded.append(time.perf_counter() - began)
    overlapped = not long_task.done()
    await long_task
    return {"short_s": short.seconds, "long_s": long.seconds, "alone_s": alone, "loaded_s": loaded,
            "long_latency_s": time.perf_counter() - began_long, "all_short_inside_long": overlapped}


def per_client(level: int, args: argparse.Namespace) -> int:
    """Requests per client: ``--requests`` at 1 stream, ``--per-client`` above."""
    return args.requests if level == 1 else args.per_client


async def measure(base_url: str, server_pid: int, recordings: list[Recording], args: argparse.Namespace,
                  probe: tuple[Recording, Recording] | None = None) -> dict:
    levels = sorted(set(args.levels) | {1})
    client = Client(base_url, max(levels) + 2)
    rounds: list[dict] = []
    errors: list[str] = []
    quiet, budget, first = [], args.quiet_wait, 0
    try:
        await streams(client, recordings, 1, 1, 0)  # warm-up: connection, first ONNX runs
        await streams(client, recordings, max(levels), 1, 1)
        for index in range(args.rounds):
            seen = await wait_for_quiet(server_pid, args.quiet_cores, budget)
            budget = max(0.0, budget - seen["waited_s"])
            quiet.append(seen)
            order = levels if index % 2 == 0 else levels[::-1]
            row: dict = {"round": index + 1, "order": " then ".join(map(str, order)), "phases": {}}
            busy0, ours0, t0 = busy_cpu_s(), tree_cpu_s(server_pid) + own_cpu_s(), time.perf_counter()
            for level in order:
                phase, figures = await phase_point(client, server_pid, recordings, level, per_client(level, args), first)
                first += 1
                row["phases"][str(level)] = figures
                errors = (errors + phase.messages)[:5]
            wall = time.perf_counter() - t0
            row["seconds"] = wall
            row["others_cores"] = max(0.0, (busy_cpu_s() - busy0 - (tree_cpu_s(server_pid) + own_cpu_s() - ours0)) / wall)
            rounds.append(row)
        fair = None if probe is None else await fairness(client, *probe, args.fairness_requests)
    finally:
        await client.close()
    measured = sum(r["seconds"] for r in rounds)
    return {"rounds": rounds, "error_messages": errors, "quiet_wait": quiet, "measured_s": measured, "fairness": fair,
            "others_cores": sum(r["others_cores"] * r["seconds"] for r in rounds) / measured if measured else 0.0}


def run(args: argparse.Namespace) -> dict:
    from export.default_repository import build_speech_entries
    from tests.integration import server_fixtures as fx

    wall0 = time.perf_counter()
    results: dict = {**record("loadtests.transcription_bench", WATCHED, args.json)}
    levels = sorted(set(args.levels) | {1})
    weights = ROOT / "models" / "weights" / "speech_ctc.safetensors"
    with tempfile.TemporaryDirectory(prefix="deepserve-transcription-") as tmp:
        t = time.perf_counter()
        recordings = make_recordings(args.recordings, args.seconds, Path(tmp) / "audio")
        synth_s = time.perf_counter() - t
        repo = Path(tmp) / "repo"
        t = time.perf_counter()
        build_speech_entries(repo)
        build_s = time.perf_counter() - t
        results["settings"] = {
            "rounds": args.rounds, "levels": levels, "targets": {"rtf": TARGET_RTF, "speedup": TARGET_SPEEDUP},
            "requests": {str(lv): lv * per_client(lv, args) for lv in levels},
            "route": ROUTE, "format": "FLAC (16-bit)", "source_rate": SOURCE_RATE, "pause_s": list(PAUSE_S),
            "seconds_per_recording": args.seconds, "seed": SEED, "max_request_bytes": MAX_REQUEST_BYTES,
            "model_sha256": hashlib.sha256((repo / NETWORK / "1" / "model.onnx").read_bytes()).hexdigest()[:12],
            "weights": {"path": str(weights.relative_to(ROOT)),
                        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:12]} if weights.exists() else None,
            "client": "httpx " + package_version("httpx") + ", asyncio",
            "beam_width": _beam_width(repo / MODEL / "config.pbtxt"),
            "setup_s": {"synthesize": synth_s, "build_repository": build_s},
        }
        results["recordings"] = [{"seconds": r.seconds, "bytes": len(r.data), "voice": r.voice,
                                  "sentences": r.sentences, "words": len(r.transcript.split())} for r in recordings]
        extra = ("--max-request-bytes", str(MAX_REQUEST_BYTES))
        with fx.server_process(repo, extra_args=extra, timeout_s=300) as (server, _proc):
            probe = long_and_short(recordings, args.fairness_minutes, Path(tmp)) if args.fairness_minutes else None
            results.update(asyncio.run(measure(f"http://{server.http_url}", server.pid, recordings, args, probe)))
            results["server_log"] = [line for line in server.log().splitlines() if line.strip()][-50:]
        if args.inprocess:
            results["inprocess"] = {"decode": decode_split(recordings),
                                    "network": network_reference(repo / NETWORK, recordings[: args.inprocess])}
    results["total_s"] = time.perf_counter() - wall0
    note_edits(results, WATCHED)
    return results


def _beam_width(config: Path) -> int:
    """The served decoder: the transcription model's ``beam_width`` parameter (0: greedy)."""
    import re

    found = re.search(r'key: "beam_width" value: \{ string_value: "(\d+)" \}', config.read_text())
    return int(found.group(1)) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds (order reversed every other one); medians are reported")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent streams (1 is always run)")
    parser.add_argument("--recordings", type=int, default=8, help="distinct recordings synthesized")
    parser.add_argument("--seconds", type=float, default=150.0, help="length of each recording (s)")
    parser.add_argument("--requests", type=int, default=8, help="sequential requests in a 1-stream phase")
    parser.add_argument("--per-client", type=int, default=2, help="requests per client above 1 stream")
    parser.add_argument("--inprocess", type=int, default=4,
                        help="recordings for the in-process network reference (the decode split uses all); 0: skip both")
    parser.add_argument("--fairness-minutes", type=float, default=10.0,
                        help="the long recording of the fairness probe (0: skip the probe)")
    parser.add_argument("--fairness-requests", type=int, default=15,
                        help="short requests alone, then during the long one (their p50s are compared)")
    add_output_arguments(parser, quiet_wait_s=60.0)
    args = parser.parse_args()

    finish(args, run, render)


if __name__ == "__main__":
    main()
