"""The transcription scheduler: a recording in, text with timings out.

One request is a whole audio file (WAV, FLAC, OGG, MP3 bytes). The scheduler decodes it to
mono at the network's rate, cuts it at pauses into chunks no longer than the network's
window (``server.pipelines.audio.split_chunks``), computes each chunk's log-mel features,
sends the chunk through the acoustic network's own model (its dynamic batcher, so chunks of
one request and of many requests share batches), decodes the CTC output (greedy, or beam
search over a word list) with absolute timings, and stitches the chunks back in order.

Fairness: a request keeps at most ``max_inflight_chunks`` chunks at the network at once, so
a short request's one chunk joins the next batch instead of waiting behind every chunk of a
long file. Memory stays bounded the same way: features exist only for chunks in flight. A
recording's first chunk goes first twice: at the network (its highest priority level) and
on the ``stage_threads`` thread(s) that compute every chunk's features and CTC decoding
(``stage_pool.PriorityPool``): a short request's stages wait for at most the stage running,
never for a long file's queued ones, and do not share the GIL with them. The pool's wait is
reported as the ``features_queue`` / ``ctc_queue`` steps.

Chunks are padded with the silence value of the features to a multiple of ``pad_seconds``,
so chunks of similar length have the same shape and batch together (the batcher only
concatenates equal shapes); the padded tail's output frames are dropped.

Decoded chunks are reported as they finish, in order: ``stream`` yields one response per
chunk (the decoupled form, for server-sent events and gRPC streams); ``infer`` returns the
whole transcript.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from server.core.errors import InvalidInput, ModelError, QueueFull, Unavailable
from server.pipelines import audio, ctc
from server.pipelines.audio_features import FEATURE_FLOOR, log_mel
from server.scheduling.base import Job, Outputs
from server.scheduling.stage_pool import PriorityPool

AUDIO_INPUT = "audio"
# optional request tensors: (datatype, meaning)
REQUEST_OPTIONS = {
    "beam_width": "INT32",  # 0: greedy; > 0: beam search (over the word list when the model has one)
    "chunking": "BYTES",  # JSON: OpenAI's chunking_strategy fields (threshold, silence_duration_ms, ...)
}
OUTPUTS = {
    "text": "BYTES",  # the transcript (for a stream: this chunk's text)
    "transcript": "BYTES",  # JSON: duration, words (word, start, end, confidence), chunk bounds
}


class Network(Protocol):
    """What the scheduler needs of the acoustic model: ``run`` through its batcher."""

    async def run(self, inputs: Outputs, deadline_s: float | None = None, priority: int | None = None) -> Outputs: ...


@dataclass(frozen=True)
class TranscriberConfig:
    network: str  # the acoustic model's name in the repository
    network_version: str = ""  # "" = its latest
    input_name: str = "features"
    output_name: str = "logits"
    alphabet: str = "_ 'abcdefghijklmnopqrstuvwxyz"  # index 0: the CTC blank
    sample_rate: int = 16000
    hop_seconds: float = 0.01  # one feature frame
    chunking: audio.ChunkPolicy = field(default_factory=audio.ChunkPolicy)
    pad_seconds: float = 2.5  # chunk features are padded up to a multiple of this
    default_beam_width: int = 0
    max_beam_width: int = 64
    vocabulary: frozenset[str] | None = None
    oov_penalty: float = -6.0  # beam search: log-domain cost of a word outside the vocabulary
    max_inflight_chunks: int = 2  # per request
    stage_threads: int = 1  # threads for the chunks' features and CTC decoding, first chunks first
    # (the loader's default: half the cores)
    max_requests: int = 64  # requests being transcribed at once; more are refused (503)
    limits: audio.AudioLimits = field(default_factory=audio.AudioLimits)


class TranscriptionObserver(Protocol):
    """Where the scheduler's measurements go (the model's telemetry implements it)."""

    def step_done(self, step: str, duration_s: float) -> None: ...

    def transcribed(self, audio_seconds: float, wall_seconds: float, chunks: int) -> None: ...


@dataclass(frozen=True)
class ChunkResult:
    index: int
    chunk: audio.Chunk
    decoded: ctc.Decoded


class Transcriber:
    """The scheduler of a ``scheduler: "transcription"`` model."""

    def __init__(self, config: TranscriberConfig, resolve: Callable[[str, str], Network],
                 observer: TranscriptionObserver) -> None:
        self.config = config
        self._resolve = resolve
        self._observer = observer
        self._active = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._stages = PriorityPool(config.stage_threads, "transcription-stage")

    # -- the Scheduler protocol ------------------------------------------------------------

    def start(self) -> None:
        pass

    async def aclose(self) -> None:
        self._closing = True
        await self._idle.wait()
        self._stages.shutdown()

    async def infer(self, job: Job) -> Outputs:
        """The whole transcript: the stream's last response."""
        responses = [outputs async for outputs in self.stream(job)]
        return responses[-1]

    async def stream(self, job: Job) -> AsyncIterator[Outputs]:
        """One response per chunk, in order, then the whole transcript (``final``). Where
        two chunks overlap (a cut with no pause), each keeps the words whose middle falls on
        its side of the overlap's middle, so the chunks' texts add up to the whole."""
        started = time.perf_counter()
        words: list[ctc.Word] = []
        chunks: list[audio.Chunk] = []
        duration = 0.0
        async for result, duration in self._chunks(job):
            chunks.append(result.chunk)
            words.extend(result.decoded.words)
            yield self._outputs(result.decoded, duration, [result.chunk], final=False)
        self._observer.transcribed(duration, time.perf_counter() - started, len(chunks))
        whole = ctc.Decoded(" ".join(w.text for w in words), tuple(words))
        yield self._outputs(whole, duration, chunks, final=True)

    def check_steps(self, get) -> None:
        """At load, once the network is loaded: it takes (batch, time, mels) and returns
        (batch, frames, characters) with one score per alphabet entry."""
        network = get(self.config.network, self.config.network_version)
        where = f"transcription network '{self.config.network}'"
        ins = {s.name: s for s in network.inputs}
        outs = {s.name: s for s in network.outputs}
        spec_in, spec_out = ins.get(self.config.input_name), outs.get(self.config.output_name)
        if spec_in is None or spec_out is None:
            raise InvalidInput(f"{where} must take '{self.config.input_name}' and return '{self.config.output_name}'; "
                               f"it takes {sorted(ins)} and returns {sorted(outs)}")
        if network.decoupled:
            raise InvalidInput(f"{where} must not be decoupled")
        if len(spec_in.shape) != 3 or len(spec_out.shape) != 3:
            raise InvalidInput(f"{where}: expected features (batch, time, mels) and logits (batch, frames, chars), "
                               f"not {list(spec_in.shape)} and {list(spec_out.shape)}")
        if spec_out.shape[-1] not in (-1, len(self.config.alphabet)):
            raise InvalidInput(f"{where} scores {spec_out.shape[-1]} characters; the alphabet parameter has "
                               f"{len(self.config.alphabet)}")

    # -- the work --------------------------------------------------------------------------

    def _outputs(self, decoded: ctc.Decoded, duration: float, chunks: list[audio.Chunk], final: bool) -> Outputs:
        rate = self.config.sample_rate
        transcript = {
            "text": decoded.text,
            "duration": round(duration, 3),
            "final": final,
            "chunks": [[round(c.start / rate, 3), round(c.end / rate, 3)] for c in chunks],
            "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                       "confidence": round(w.confidence, 4)} for w in decoded.words],
        }
        return {"text": np.array([decoded.text.encode()], dtype=object),
                "transcript": np.array([json.dumps(transcript).encode()], dtype=object)}

    def _options(self, job: Job) -> tuple[bytes, int, audio.ChunkPolicy]:
        data = job.inputs.get(AUDIO_INPUT)
        if data is None or data.size != 1:
            raise InvalidInput(f"input '{AUDIO_INPUT}' must hold one element: the audio file's bytes")
        raw = data.reshape(-1)[0]
        if not isinstance(raw, bytes | bytearray | np.bytes_):
            raise InvalidInput(f"input '{AUDIO_INPUT}' must be BYTES (the file's bytes)")
        beam = self.config.default_beam_width
        if "beam_width" in job.inputs:
            beam = int(job.inputs["beam_width"].reshape(-1)[0])
            if not 0 <= beam <= self.config.max_beam_width:
                raise InvalidInput(f"beam_width must be between 0 (greedy) and {self.config.max_beam_width}, not {beam}")
        policy = self.config.chunking
        if "chunking" in job.inputs:
            text = job.inputs["chunking"].reshape(-1)[0]
            try:
                fields = json.loads(text) if text else {}
            except ValueError:
                raise InvalidInput("chunking must be a JSON object (OpenAI's chunking_strategy)") from None
            if not isinstance(fields, dict):
                raise InvalidInput("chunking must be a JSON object (OpenAI's chunking_strategy)")
            policy = audio.chunk_policy_from({k: str(v) for k, v in fields.items() if k != "type"}, policy)
        return bytes(raw), beam, policy

    async def _timed(self, stage: str, func, *args, priority: int | None = None):
        """A CPU stage on a worker thread; its wall time is the stage's. With a ``priority``
        it runs on the stage pool (0: a recording's first chunk, 1: its later chunks);
        without, on the loop's executor (decoding and splitting, once per request)."""
        start = time.perf_counter()
        if priority is None:
            result = await asyncio.to_thread(func, *args)
            self._observer.step_done(stage, time.perf_counter() - start)
        else:
            result, compute = await self._stages.run(priority, _clocked, func, *args)
            self._observer.step_done(f"{stage}_queue", max(0.0, time.perf_counter() - start - compute))
            self._observer.step_done(stage, compute)
        return result

    async def _chunks(self, job: Job) -> AsyncIterator[tuple[ChunkResult, float]]:
        """Each chunk's decoded result in order, with the recording's duration."""
        if self._closing:
            raise Unavailable("the model is being unloaded", retry_after_s=1.0)
        if self._active >= self.config.max_requests:
            raise QueueFull(f"{self._active} transcriptions are in progress; retry later", retry_after_s=1.0)
        self._active += 1
        self._idle.clear()
        try:
            data, beam, policy = self._options(job)
            cfg = self.config
            samples = await self._timed("decode", audio.decode_audio, data, cfg.sample_rate, cfg.limits)
            duration = len(samples) / cfg.sample_rate
            chunks = await self._timed("split", audio.split_chunks, samples, cfg.sample_rate, policy)
            network = self._resolve(cfg.network, cfg.network_version)
            deadline = None if job.budget_s is None else time.monotonic() + job.budget_s
            window = asyncio.Semaphore(cfg.max_inflight_chunks)

            cuts = overlap_cuts(chunks, cfg.sample_rate)

            async def one(index: int, chunk: audio.Chunk) -> ChunkResult:
                async with window:
                    decoded = await self._chunk(network, samples, chunk, beam, deadline, first=index == 0)
                return ChunkResult(index, chunk, keep_between(decoded, *cuts[index]))

            tasks = [asyncio.ensure_future(one(i, c)) for i, c in enumerate(chunks)]
            try:
                for task in tasks:
                    yield await task, duration
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _chunk(self, network: Network, samples: np.ndarray, chunk: audio.Chunk, beam: int,
                     deadline: float | None, first: bool = False) -> ctc.Decoded:
        cfg = self.config
        rank = 0 if first else 1
        features = await self._timed("features", log_mel, samples[chunk.start : chunk.end], priority=rank)
        valid = len(features)
        if valid == 0:
            return ctc.Decoded("", ())
        step = max(1, round(cfg.pad_seconds / cfg.hop_seconds))
        padded = -(-valid // step) * step
        feed = np.full((1, padded, features.shape[1]), FEATURE_FLOOR, np.float32)
        feed[0, :valid] = features
        start = time.perf_counter()
        budget = None if deadline is None else max(0.0, deadline - time.monotonic())
        # A recording's first chunk asks for the network's highest priority level (a model with
        # priority_levels queues it ahead of other recordings' later chunks; with one level it
        # changes nothing): a short request is not kept behind a long one's queued chunks.
        out = await network.run({cfg.input_name: feed}, budget, priority=1 if first else None)
        self._observer.step_done("network", time.perf_counter() - start)
        logits = out.get(cfg.output_name)
        if logits is None or logits.ndim != 3 or logits.shape[0] != 1 or logits.shape[2] != len(cfg.alphabet):
            shape = None if logits is None else list(logits.shape)
            raise ModelError(f"the network answered '{cfg.output_name}' of shape {shape}; expected "
                             f"[1, frames, {len(cfg.alphabet)}]")
        stride = max(1, round(padded / logits.shape[1]))  # feature frames per output frame
        keep = min(logits.shape[1], -(-valid // stride))
        frame_seconds = cfg.hop_seconds * stride
        offset = chunk.start / cfg.sample_rate
        if beam > 0:
            return await self._timed("ctc", ctc.beam_decode, logits[0, :keep], cfg.alphabet, frame_seconds, offset,
                                     beam, cfg.vocabulary, cfg.oov_penalty, priority=rank)
        return await self._timed("ctc", ctc.greedy_decode, logits[0, :keep], cfg.alphabet, frame_seconds, offset,
                                 priority=rank)


def _clocked(func, *args):
    """``func(*args)`` and the seconds it took (on the thread that ran it)."""
    start = time.perf_counter()
    result = func(*args)
    return result, time.perf_counter() - start


def overlap_cuts(chunks: list[audio.Chunk], rate: int) -> list[tuple[float, float]]:
    """Per chunk, the span (seconds) whose words it keeps: all of it, except that where it
    overlaps a neighbour the overlap is shared at its middle."""
    cuts = []
    for i, chunk in enumerate(chunks):
        left, right = chunk.start / rate, chunk.end / rate
        if i > 0 and chunks[i - 1].end > chunk.start:
            left = (chunk.start + chunks[i - 1].end) / 2 / rate
        if i + 1 < len(chunks) and chunks[i + 1].start < chunk.end:
            right = (chunks[i + 1].start + chunk.end) / 2 / rate
        cuts.append((left, right))
    return cuts


def keep_between(decoded: ctc.Decoded, left: float, right: float) -> ctc.Decoded:
    """The words whose middle lies in [left, right)."""
    words = tuple(w for w in decoded.words if left <= (w.start + w.end) / 2 < right)
    if len(words) == len(decoded.words):
        return decoded
    return ctc.Decoded(" ".join(w.text for w in words), words)
