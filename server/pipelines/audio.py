"""Audio for speech models: encoded bytes in, mono float32 at the model's rate out, and long
recordings split at pauses into chunks a model can take.

    bytes (WAV, FLAC, OGG/Vorbis, OGG/Opus, MP3, AIFF, ... whatever libsndfile reads)
      -> header only (channels, rate, frames): absurd files refused before any decoding
      -> blocks of BLOCK_FRAMES frames, float32 (BLOCK_FRAMES, channels)
      -> mean over channels (downmix)                          (BLOCK_FRAMES,)
      -> soxr HQ streaming resampler to `rate`                 (about BLOCK_FRAMES * rate / in_rate,)
      -> concatenated, clipped to [-1, 1]                      (n,) float32

Memory is one block of the input plus twice the output: a 10-minute 48 kHz stereo file
never exists as a float32 array of its own, not even downmixed.

A truncated file (the header promises more than the bytes hold, or the decoder loses sync
part-way) is decoded as far as it goes (to within SALVAGE_FRAMES): the part that decodes is
transcribed, as ffmpeg would; only a file of which not one frame decodes is refused.

:func:`split_chunks` is an energy voice-activity detector: frame RMS in dB, pauses of at
least ``min_silence_seconds`` are cut points, chunks are packed greedily up to
``max_seconds``; see its docstring for the picture.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from server.core.errors import InvalidInput

BLOCK_FRAMES = 1 << 17  # frames decoded at a time (8 MiB for 16 channels of float32)
SALVAGE_FRAMES = 1024  # the last, failing block of a truncated file is read again this finely
FORMATS = "WAV, FLAC, OGG (Vorbis or Opus) or MP3"
# A frame quieter than this (dBFS RMS; a full-scale sine is -3 dBFS) is silence whatever
# the loudest frame is, so a recording of hiss or digital near-silence is no speech at all.
SILENCE_FLOOR_DB = -60.0


@dataclass(frozen=True)
class AudioLimits:
    """What :func:`decode_audio` accepts; anything outside is an ``InvalidInput``."""

    max_bytes: int = 25 * 1024 * 1024  # OpenAI's limit on /v1/audio/transcriptions
    max_seconds: float = 3600.0
    max_channels: int = 16
    min_rate: int = 1000
    max_rate: int = 384_000


def decode_audio(data: bytes, rate: int = 16000, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """WAV, FLAC, OGG/Vorbis, OGG/Opus, MP3 (any format libsndfile reads) bytes -> float32 mono
    ``(n,)`` at ``rate``, in [-1, 1].

    Raises ``InvalidInput`` for empty or oversized bytes, bytes that are not audio, a header
    out of ``limits`` (channels, sample rate, duration), audio without a single frame, and
    NaN or infinite samples. A truncated file gives the part that decodes.
    """
    import soundfile as sf

    if rate <= 0:
        raise ValueError(f"the output rate must be positive, not {rate}")
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise InvalidInput(f"the audio file is empty; send {FORMATS} bytes")
    if len(data) > limits.max_bytes:
        raise InvalidInput(
            f"the audio file is {len(data)} bytes; at most {limits.max_bytes} bytes "
            f"({limits.max_bytes / 2**20:g} MiB) are accepted: split or compress it"
        )
    try:
        sound = sf.SoundFile(io.BytesIO(data))
    except sf.SoundFileError as exc:  # libsndfile's reason, without the BytesIO's repr
        reason = str(getattr(exc, "error_string", exc)).strip()
        raise InvalidInput(f"the audio cannot be decoded ({reason}); send {FORMATS} bytes") from None
    with sound:
        _check_header(sound.channels, sound.samplerate, sound.frames, limits)
        mono = _decode_mono(sound, rate, limits)
    np.clip(mono, -1.0, 1.0, out=mono)  # float files may exceed full scale; resampling overshoots a little
    return mono


def _check_header(channels: int, samplerate: int, frames: int, limits: AudioLimits) -> None:
    if not 1 <= channels <= limits.max_channels:
        raise InvalidInput(f"the audio has {channels} channels; 1 to {limits.max_channels} are accepted")
    if not limits.min_rate <= samplerate <= limits.max_rate:
        raise InvalidInput(
            f"the audio's sample rate is {samplerate} Hz; {limits.min_rate} to {limits.max_rate} Hz are accepted"
        )
    if frames <= 0:
        raise InvalidInput("the audio has no samples (0 frames)")
    if frames / samplerate > limits.max_seconds:
        raise InvalidInput(_too_long(frames / samplerate, limits))


def _too_long(seconds: float, limits: AudioLimits) -> str:
    return f"the audio lasts {seconds:.1f} s; at most {limits.max_seconds:g} s are accepted: split it"


def _decode_mono(sound, rate: int, limits: AudioLimits) -> np.ndarray:
    """All frames of an open ``SoundFile``, block by block: downmixed, resampled to ``rate``
    (soxr HQ, streaming: the same samples as one ``soxr.resample`` call)."""
    import soxr

    max_frames = int(limits.max_seconds * sound.samplerate)  # the header's count can be an estimate (MP3)
    resampler = soxr.ResampleStream(sound.samplerate, rate, 1, dtype="float32", quality="HQ")
    parts: list[np.ndarray] = []
    total = 0
    for block in _blocks(sound):
        if not np.isfinite(block).all():
            raise InvalidInput("the audio contains NaN or infinite samples")
        total += len(block)
        if total > max_frames:
            raise InvalidInput(_too_long(total / sound.samplerate, limits))
        mono = block.mean(axis=1, dtype=np.float32)
        parts.append(mono if sound.samplerate == rate else resampler.resample_chunk(mono, last=False))
    if total == 0:
        raise InvalidInput(f"the audio file is truncated: not one frame decodes; send a complete {FORMATS} file")
    if sound.samplerate != rate:
        parts.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.concatenate(parts)


def _blocks(sound) -> Iterator[np.ndarray]:
    """The file's frames as float32 ``(frames, channels)`` blocks (one buffer, reused).

    Where decoding fails part-way (a truncated file, lost sync), the failed block is read
    again in SALVAGE_FRAMES pieces up to the first that fails, and the file ends there.
    """
    import soundfile as sf

    buffer = np.empty((BLOCK_FRAMES, sound.channels), dtype=np.float32)
    done = 0
    while True:
        try:
            block = sound.read(BLOCK_FRAMES, dtype="float32", always_2d=True, out=buffer)
        except sf.LibsndfileError:
            break
        if len(block):
            yield block
        done += len(block)
        if len(block) < BLOCK_FRAMES:
            return
    try:
        sound.seek(done)
        while len(piece := sound.read(SALVAGE_FRAMES, dtype="float32", always_2d=True, out=buffer[:SALVAGE_FRAMES])):
            yield piece
    except sf.LibsndfileError:
        return


# --- splitting long recordings --------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Samples ``[start, end)`` of the whole recording, at the rate it was split at."""

    start: int
    end: int


@dataclass(frozen=True)
class ChunkPolicy:
    """How :func:`split_chunks` cuts a recording.

    A frame is silent when its RMS is below ``loudest frame's dB + silence_db`` or below
    ``SILENCE_FLOOR_DB`` (-60 dBFS), whichever is higher. ``padding_seconds`` of the silence
    around speech is kept on each side (at most up to the middle of a pause); silence beyond
    it, leading and trailing silence included, is dropped.
    """

    max_seconds: float = 15.0  # a chunk never exceeds this
    min_silence_seconds: float = 0.3  # a pause at least this long is a cut point
    silence_db: float = -35.0  # relative to the loudest frame
    overlap_seconds: float = 1.0  # a hard cut (no pause) starts the next chunk this much earlier
    frame_seconds: float = 0.02
    padding_seconds: float = 0.3  # silence kept before and after speech
    join_seconds: float = 0.8  # runs further apart than this are never packed into one chunk

    def __post_init__(self) -> None:
        if not 0 < self.frame_seconds <= self.min_silence_seconds:
            raise ValueError("ChunkPolicy: need 0 < frame_seconds <= min_silence_seconds")
        if not 0 <= self.overlap_seconds < self.max_seconds:
            raise ValueError("ChunkPolicy: need 0 <= overlap_seconds < max_seconds")
        if self.padding_seconds < 0 or self.silence_db > 0 or self.join_seconds < 0:
            raise ValueError("ChunkPolicy: need padding_seconds >= 0 and silence_db <= 0")


def split_chunks(samples: np.ndarray, rate: int = 16000, policy: ChunkPolicy = ChunkPolicy()) -> list[Chunk]:
    """Chunks of at most ``policy.max_seconds`` covering the speech of ``samples`` (n,), in order.

        samples   ....SSSSSSSS.....SSSSS..........SSSSSSSSSSSSSSSSSSSSSSSS....
        speech        [------)     [---)          [----------------------)
        chunks      [-----------|-------)       [-----------)
                                                        [-----------)     (hard cut, overlap)
                    ^ padding   ^ middle of the pause

    - A recording no longer than ``max_seconds`` with any speech is one chunk, all of it.
    - Silence only (or empty) gives ``[]``: there is nothing to transcribe.
    - Speech runs separated by pauses shorter than ``min_silence_seconds`` are one run.
      Runs are packed greedily into a chunk while it stays within ``max_seconds`` and the
      pause before the next run is at most ``join_seconds`` (so the network is not fed long
      silences, where an acoustic model may hallucinate characters); the cut
      between two chunks is the middle sample of the pause (or ``padding_seconds`` after /
      before the speech, where the pause is longer than twice the padding).
    - A run longer than ``max_seconds`` is cut hard every ``max_seconds``, each next chunk
      starting ``overlap_seconds`` before the previous one's end.
    """
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"split_chunks takes mono samples (n,), not shape {samples.shape}")
    n = len(samples)
    runs = _speech_runs(samples, rate, policy)
    if not runs:
        return []
    max_len = int(policy.max_seconds * rate)
    if n <= max_len:
        return [Chunk(0, n)]
    pad = int(round(policy.padding_seconds * rate))
    bounds = []  # (a, b): each run widened by the padding, never past the middle of a pause
    for i, (s, e) in enumerate(runs):
        left = 0 if i == 0 else (runs[i - 1][1] + s) // 2
        right = n if i == len(runs) - 1 else (e + runs[i + 1][0]) // 2
        bounds.append((max(s - pad, left), min(e + pad, right)))
    return _pack(bounds, runs, max_len, int(policy.overlap_seconds * rate), int(policy.join_seconds * rate))


def _speech_runs(samples: np.ndarray, rate: int, policy: ChunkPolicy) -> list[tuple[int, int]]:
    """``[start, end)`` sample ranges of speech (frame-aligned), pauses shorter than
    ``min_silence_seconds`` merged away."""
    n = len(samples)
    frame = max(1, int(round(policy.frame_seconds * rate)))
    full = n // frame
    frames = samples[: full * frame].reshape(full, frame)  # a view: no copy of a long recording
    power = np.einsum("ij,ij->i", frames, frames) / frame
    if n % frame:  # the last, partial frame
        tail = samples[full * frame :]
        power = np.append(power, np.dot(tail, tail) / len(tail))
    if len(power) == 0:
        return []
    db = 10.0 * np.log10(power.astype(np.float64) + 1e-20)  # (n_frames,) mean power in dBFS
    threshold = max(float(db.max()) + policy.silence_db, SILENCE_FLOOR_DB)
    loud = np.concatenate(([False], db >= threshold, [False])).astype(np.int8)
    edges = np.diff(loud)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # frame indices
    if len(starts) == 0:
        return []
    min_gap = int(math.ceil(policy.min_silence_seconds * rate / frame - 1e-9))  # in frames
    keep = np.concatenate(([True], starts[1:] - ends[:-1] >= min_gap))  # a run that starts after a real pause
    starts, ends = starts[keep], np.append(ends[np.flatnonzero(keep)[1:] - 1], ends[-1])
    return [(int(s) * frame, min(int(e) * frame, n)) for s, e in zip(starts, ends, strict=True)]


def _pack(bounds: list[tuple[int, int]], runs: list[tuple[int, int]], max_len: int, overlap: int,
          join: int) -> list[Chunk]:
    """Greedy packing of padded runs into chunks of at most ``max_len`` samples, joining two
    runs only when the pause between them is at most ``join`` samples."""
    chunks: list[Chunk] = []
    i, start = 0, bounds[0][0]
    while i < len(bounds):
        if bounds[i][1] - start > max_len:  # this run alone does not fit: hard cut
            chunks.append(Chunk(start, start + max_len))
            start += max_len - overlap
            continue
        j = i
        while j + 1 < len(bounds) and bounds[j + 1][1] - start <= max_len and runs[j + 1][0] - runs[j][1] <= join:
            j += 1
        chunks.append(Chunk(start, bounds[j][1]))
        i = j + 1
        if i < len(bounds):
            start = bounds[i][0]
    return chunks


# --- OpenAI's chunking_strategy ----------------------------------------------------------------

_FIELDS = ("type", "threshold", "silence_duration_ms", "prefix_padding_ms", "max_chunk_seconds")


def chunk_policy_from(params: Mapping[str, str], default: ChunkPolicy = ChunkPolicy()) -> ChunkPolicy:
    """A policy from OpenAI's ``chunking_strategy`` server_vad fields (strings or numbers):

    =======================  ===========================================================
    ``type``                 ``server_vad`` or ``auto`` (``auto``: ``default`` as it is)
    ``threshold``            0..1, higher needs louder speech: ``silence_db = -70 dB *
                             (1 - threshold)``, so OpenAI's default 0.5 is our -35 dB
    ``silence_duration_ms``  the shortest pause that is a cut point
    ``prefix_padding_ms``    silence kept before (and after) speech
    ``max_chunk_seconds``    longest chunk, at most ``default.max_seconds`` (the model's)
    =======================  ===========================================================

    Unknown fields and bad values are ``InvalidInput`` naming the field.
    """
    unknown = sorted(set(params) - set(_FIELDS))
    if unknown:
        raise InvalidInput(f"chunking_strategy has no field {unknown[0]!r}; known fields: {', '.join(_FIELDS)}")
    kind = str(params.get("type", "server_vad"))
    if kind not in ("server_vad", "auto"):
        raise InvalidInput(f"chunking_strategy.type must be 'server_vad' or 'auto', not {kind!r}")
    if kind == "auto":
        return default
    changes: dict[str, float] = {}
    if "threshold" in params:
        changes["silence_db"] = -70.0 * (1.0 - _number(params, "threshold", 0.0, 1.0))
    if "silence_duration_ms" in params:
        low_ms = default.frame_seconds * 1000
        changes["min_silence_seconds"] = _number(params, "silence_duration_ms", low_ms, 10_000.0) / 1000
    if "prefix_padding_ms" in params:
        changes["padding_seconds"] = _number(params, "prefix_padding_ms", 0.0, 10_000.0) / 1000
    if "max_chunk_seconds" in params:
        low = default.overlap_seconds + 1.0
        changes["max_seconds"] = _number(params, "max_chunk_seconds", low, default.max_seconds)
    fields = {name: getattr(default, name) for name in default.__dataclass_fields__} | changes
    return ChunkPolicy(**fields)


def _number(params: Mapping[str, str], name: str, low: float, high: float) -> float:
    raw = params[name]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidInput(f"chunking_strategy.{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:  # NaN fails this too
        raise InvalidInput(f"chunking_strategy.{name} must be between {low:g} and {high:g}, not {raw!r}")
    return value
