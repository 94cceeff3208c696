"""The transcription scheduler over a fake acoustic network: chunks in order with absolute
times, overlap shared once, a short request not stuck behind a long one, bad requests refused.

The fake network spells "hi" at the first frames of every chunk, so each chunk's word tells
where the scheduler thinks the chunk starts."""

from __future__ import annotations

import asyncio
import io
import json
import os

import numpy as np
import pytest
import soundfile

from server.core.errors import InvalidInput, QueueFull
from server.pipelines.audio import Chunk, ChunkPolicy
from server.pipelines.ctc import Decoded, Word
from server.scheduling.base import Job
from server.scheduling.transcription import Transcriber, TranscriberConfig, keep_between, overlap_cuts

RATE = 16000
ALPHABET = "_ 'abcdefghijklmnopqrstuvwxyz"
STRIDE = 3  # feature frames per output frame, as the shipped model


class FakeNetwork:
    """(1, T, mels) -> (1, ceil(T / 3), chars) log-probs spelling "hi" at the start; records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.priorities: list[tuple[str, int | None]] = []
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def calls_reach(self, n: int) -> None:
        while len(self.calls) < n:
            self.called.clear()
            await self.called.wait()

    async def run(self, inputs, deadline_s=None, priority=None):
        features = inputs["features"]
        self.calls.append((tag(features), features.shape[1]))
        self.priorities.append((tag(features), priority))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        frames = -(-features.shape[1] // STRIDE)
        logits = np.full((1, frames, len(ALPHABET)), -20.0, np.float32)
        logits[0, :, 0] = 0.0
        for frame, char in ((0, "h"), (1, "i")):
            logits[0, frame, :] = -20.0
            logits[0, frame, ALPHABET.index(char)] = 0.0
        return {"logits": logits}


def tag(features: np.ndarray) -> str:
    """Which recording of the fairness test a chunk came from: its 2 s bursts ("long") or its
    one 0.8 s burst ("short"), by the chunk's length (padding to a frame multiple only)."""
    return "long" if features.shape[1] > 150 else "short"


class Observer:
    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.done: list[tuple[float, int]] = []

    def step_done(self, step, duration_s):
        self.steps[step] = self.steps.get(step, 0) + 1

    def transcribed(self, audio_seconds, wall_seconds, chunks):
        self.done.append((audio_seconds, chunks))


def wav(bursts: list[tuple[float, float]], total: float) -> bytes:
    """A tone during each (start, end) second span, silence elsewhere."""
    samples = np.zeros(int(total * RATE), np.float32)
    t = np.arange(len(samples)) / RATE
    for start, end in bursts:
        span = (t >= start) & (t < end)
        samples[span] = 0.5 * np.sin(2 * np.pi * 440 * t[span])
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, RATE, format="WAV")
    return buffer.getvalue()


def job(data: bytes, **extra) -> Job:
    inputs = {"audio": np.array([data], dtype=object), **extra}
    return Job(inputs, rows=1)


def transcriber(network: FakeNetwork, **config) -> tuple[Transcriber, Observer]:
    observer = Observer()
    settings = TranscriberConfig(network="net", alphabet=ALPHABET, pad_seconds=0.03,
                                 chunking=ChunkPolicy(max_seconds=4.0), **config)
    return Transcriber(settings, lambda _name, _version: network, observer), observer


def transcript(outputs) -> dict:
    return json.loads(outputs["transcript"][0])


async def test_chunks_come_back_in_order_with_absolute_times() -> None:
    scheduler, observer = transcriber(FakeNetwork())
    # three 1 s bursts with 1.5 s pauses, packed into chunks of at most 4 s
    data = wav([(0.5, 1.5), (3.0, 4.0), (5.5, 6.5)], total=7.0)
    out = transcript(await scheduler.infer(job(data)))
    assert out["final"] and out["duration"] == pytest.approx(7.0)
    chunks = out["chunks"]
    assert len(chunks) >= 2 and all(a[1] <= b[0] for a, b in zip(chunks, chunks[1:], strict=False))
    starts = [w["start"] for w in out["words"]]
    assert out["text"] == " ".join(["hi"] * len(chunks))
    # each "hi" sits at its chunk's first output frame: the chunk's real start, not a nominal window
    assert starts == pytest.approx([c[0] for c in chunks], abs=0.031)
    assert observer.done == [(pytest.approx(7.0), len(chunks))]
    assert {"decode", "split", "features_queue", "features", "network", "ctc_queue", "ctc"} <= set(observer.steps)


async def test_the_stream_says_each_chunk_then_the_whole() -> None:
    scheduler, _ = transcriber(FakeNetwork())
    data = wav([(0.5, 1.5), (3.0, 4.0), (5.5, 6.5)], total=7.0)
    responses = [transcript(r) async for r in scheduler.stream(job(data))]
    *parts, final = responses
    assert [r["final"] for r in responses] == [False] * len(parts) + [True]
    assert " ".join(p["text"] for p in parts) == final["text"] and len(parts) == len(final["chunks"])


async def test_silence_is_an_empty_transcript() -> None:
    scheduler, _ = transcriber(FakeNetwork())
    out = transcript(await scheduler.infer(job(wav([], total=2.0))))
    assert out["text"] == "" and out["words"] == [] and out["chunks"] == []


def test_overlapping_chunks_share_their_overlap_at_its_middle() -> None:
    chunks = [Chunk(0, 15 * RATE), Chunk(14 * RATE, 29 * RATE), Chunk(30 * RATE, 31 * RATE)]
    assert overlap_cuts(chunks, RATE) == [(0.0, 14.5), (14.5, 29.0), (30.0, 31.0)]
    words = (Word("a", 13.9, 14.3, 1.0), Word("b", 14.4, 14.8, 1.0), Word("c", 14.9, 15.0, 1.0))
    first, second = keep_between(Decoded("a b c", words), 0.0, 14.5), keep_between(Decoded("a b c", words), 14.5, 29.0)
    assert first.text == "a" and second.text == "b c"  # every word once: b's middle (14.6) is past 14.5


async def test_a_short_request_is_not_queued_behind_a_long_one() -> None:
    network = FakeNetwork()
    network.gate = asyncio.Event()
    scheduler, _ = transcriber(network, max_inflight_chunks=2)
    long = wav([(0.5 + 3 * i, 2.5 + 3 * i) for i in range(10)], total=31.0)
    short = wav([(0.2, 1.0)], total=1.2)
    long_task = asyncio.ensure_future(scheduler.infer(job(long)))
    await network.calls_reach(2)  # the long request has its window of chunks at the network
    short_task = asyncio.ensure_future(scheduler.infer(job(short)))
    await network.calls_reach(3)
    network.gate.set()
    await asyncio.gather(long_task, short_task)
    order = [t for t, _ in network.calls]
    # the long file has >= 6 chunks, but only 2 were ahead of the short request's one
    assert order.count("long") >= 6 and order.index("short") == 2, order
    # each recording's first chunk asks for the highest priority level, its later ones for the default
    # (chunks compute their features concurrently: the first chunk need not be the first call)
    long_priorities = sorted((p for t, p in network.priorities if t == "long"), key=lambda p: p is None)
    assert long_priorities == [1] + [None] * (order.count("long") - 1)
    assert [p for t, p in network.priorities if t == "short"] == [1]


@pytest.mark.parametrize("inputs, words", [
    ({"audio": np.array([b""], dtype=object)}, "empty"),
    ({"audio": np.array([b"RIFF....WAVEfmt nonsense"], dtype=object)}, "audio"),
    ({"audio": np.array([b"x", b"y"], dtype=object)}, "one element"),
])
async def test_bad_audio_is_invalid_input(inputs, words) -> None:
    scheduler, _ = transcriber(FakeNetwork())
    with pytest.raises(InvalidInput, match=words):
        await scheduler.infer(Job(inputs, rows=1))


async def test_bad_options_are_invalid_input() -> None:
    scheduler, _ = transcriber(FakeNetwork())
    data = wav([(0.2, 1.0)], total=1.2)
    with pytest.raises(InvalidInput, match="beam_width"):
        await scheduler.infer(job(data, beam_width=np.array([1000], np.int32)))
    with pytest.raises(InvalidInput, match="chunking"):
        await scheduler.infer(job(data, chunking=np.array([b"{not json"], dtype=object)))
    with pytest.raises(InvalidInput, match="threshold"):
        await scheduler.infer(job(data, chunking=np.array([b'{"threshold": 7}'], dtype=object)))


async def test_beyond_max_requests_is_refused_at_once() -> None:
    network = FakeNetwork()
    network.gate = asyncio.Event()
    scheduler, _ = transcriber(network, max_requests=1)
    first = asyncio.ensure_future(scheduler.infer(job(wav([(0.2, 1.0)], total=1.2))))
    await network.calls_reach(1)
    with pytest.raises(QueueFull):
        await scheduler.infer(job(wav([(0.2, 1.0)], total=1.2)))
    network.gate.set()
    assert transcript(await first)["text"] == "hi"


def test_config_reads_the_decoder_parameters(tmp_path) -> None:
    from server.repository.transcriber import transcriber_config

    (tmp_path / "words.txt").write_text("hi\nthere\n")
    base = {"network": "net", "alphabet": ALPHABET, "vocabulary": "words.txt", "beam_width": "32"}
    config = transcriber_config({**base, "oov_penalty": "-9"}, tmp_path)
    assert (config.default_beam_width, config.oov_penalty, config.vocabulary) == (32, -9.0, frozenset({"hi", "there"}))
    assert transcriber_config(base, tmp_path).oov_penalty == TranscriberConfig("net").oov_penalty
    assert transcriber_config({**base, "stage_threads": "3"}, tmp_path).stage_threads == 3
    assert transcriber_config(base, tmp_path).stage_threads == max(1, (os.cpu_count() or 1) // 2)
    for bad in ("3", "cheap"):
        with pytest.raises((InvalidInput, ValueError), match="oov_penalty|could not convert"):
            transcriber_config({**base, "oov_penalty": bad}, tmp_path)
