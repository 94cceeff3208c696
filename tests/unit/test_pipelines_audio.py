"""server.pipelines.audio: decoding real files written by libsndfile, refusing bad ones, and
splitting recordings at pauses."""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from server.core.errors import InvalidInput
from server.pipelines.audio import (
    AudioLimits,
    Chunk,
    ChunkPolicy,
    chunk_policy_from,
    decode_audio,
    split_chunks,
)

RATE = 16000


def tone(hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav_header(channels: int, rate: int, frames: int, payload_frames: int | None = None, bits: int = 16) -> bytes:
    """A PCM WAV written by hand, so the header can say what libsndfile would never write."""
    align = channels * bits // 8
    payload = b"\x00" * (align * (frames if payload_frames is None else payload_frames))
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * align) & 0xFFFFFFFF, align & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", frames * align) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --- decoding ----------------------------------------------------------------------------------

FORMATS = [
    ("WAV", "PCM_16", 44100),
    ("WAV", "PCM_16", 8000),
    ("WAV", "FLOAT", 16000),
    ("FLAC", "PCM_16", 48000),
    ("OGG", "VORBIS", 48000),
    ("OGG", "OPUS", 48000),
    ("MP3", "MPEG_LAYER_III", 44100),
]


@pytest.mark.parametrize(("fmt", "subtype", "rate"), FORMATS, ids=[f"{f}-{s}-{r}" for f, s, r in FORMATS])
def test_a_stereo_tone_comes_out_mono_at_16k_with_its_frequency(fmt: str, subtype: str, rate: int) -> None:
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile has no {fmt}/{subtype}")
    left = tone(440.0, 2.0, rate)
    data = encode(np.stack((left, left), axis=1), rate, fmt, subtype)

    out = decode_audio(data)

    assert out.dtype == np.float32 and out.ndim == 1
    lossy = fmt in ("OGG", "MP3")  # encoder delay and padding change the length a little
    assert abs(len(out) - 2 * RATE) <= (0.05 * RATE if lossy else 1)
    assert abs(peak_hz(out, RATE) - 440.0) < 2.0
    assert rms(out) == pytest.approx(0.5 / np.sqrt(2), rel=0.1 if lossy else 0.01)
    assert np.abs(out).max() <= 1.0


def test_opposite_channels_cancel_and_different_ones_are_averaged() -> None:
    left = tone(440.0, 1.0, RATE)
    cancel = decode_audio(encode(np.stack((left, -left), axis=1), RATE, "WAV", "FLOAT"))
    assert np.abs(cancel).max() < 1e-6

    mixed = decode_audio(encode(np.stack((left, tone(1000.0, 1.0, RATE)), axis=1), RATE, "WAV", "FLOAT"))
    spectrum = np.abs(np.fft.rfft(mixed))
    freqs = np.fft.rfftfreq(len(mixed), 1 / RATE)
    assert sorted(freqs[np.argsort(spectrum)[-2:]].tolist()) == [440.0, 1000.0]
    np.testing.assert_allclose(mixed, (left + tone(1000.0, 1.0, RATE)) / 2, atol=1e-6)


def test_the_model_rate_is_a_parameter() -> None:
    out = decode_audio(encode(tone(440.0, 1.0, 44100), 44100, "WAV"), rate=8000)
    assert len(out) == 8000
    assert abs(peak_hz(out, 8000) - 440.0) < 2.0


def test_float_samples_beyond_full_scale_are_clipped() -> None:
    out = decode_audio(encode(np.full(1600, 3.0, dtype=np.float32), RATE, "WAV", "FLOAT"))
    assert out.max() == 1.0


def test_ten_minutes_of_48k_stereo_decode_in_bounded_memory() -> None:
    second = (tone(440.0, 1.0, 48000) * 32767).astype(np.int16)
    frames = np.repeat(second, 2).reshape(-1, 2)  # (48000, 2) int16
    data = wav_header(2, 48000, 600 * 48000, payload_frames=0) + np.tile(frames, (600, 1)).tobytes()
    assert len(data) > 100 * 2**20
    del frames
    tracemalloc.start()
    try:
        out = decode_audio(data, limits=AudioLimits(max_bytes=200 * 2**20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out) == 600 * RATE
    # The output is 38 MiB; decoding the whole file at once would take 220 MiB of float32.
    assert peak < 2.5 * out.nbytes
    assert abs(peak_hz(out[-RATE:], RATE) - 440.0) < 2.0


# --- refusing bad input ---------------------------------------------------------------------


def refused(data: bytes, limits: AudioLimits = AudioLimits()) -> str:
    with pytest.raises(InvalidInput) as info:
        decode_audio(data, limits=limits)
    message = info.value.message
    assert "Traceback" not in message and "BytesIO" not in message
    return message


def test_empty_bytes() -> None:
    assert "empty" in refused(b"")


def test_bytes_over_the_limit_name_the_limit() -> None:
    data = encode(tone(440.0, 1.0, RATE), RATE, "WAV")
    assert "at most 1000 bytes" in refused(data, AudioLimits(max_bytes=1000))


def test_bytes_that_are_not_audio_name_the_formats() -> None:
    message = refused(b"this is a text file, not a recording " * 20)
    assert "cannot be decoded" in message and "WAV, FLAC, OGG" in message and "MP3" in message


def test_a_header_cut_short() -> None:
    assert "cannot be decoded" in refused(wav_header(1, RATE, 100)[:20])


def test_zero_frames() -> None:
    assert "0 frames" in refused(wav_header(1, RATE, 0))


@pytest.mark.parametrize(
    ("channels", "rate", "expected"),
    [
        (17, RATE, "17 channels; 1 to 16"),
        (0, RATE, "Channel count is zero"),  # libsndfile refuses it before we see it
        (60000, RATE, "Too many channels"),
        (1, 500, "500 Hz; 1000 to 384000 Hz"),
        (1, 400_000, "400000 Hz"),
        (1, 4_000_000_000, "cannot be decoded"),
    ],
)
def test_absurd_headers_are_refused(channels: int, rate: int, expected: str) -> None:
    assert expected in refused(wav_header(channels, rate, 4))


def test_too_long_is_refused() -> None:
    message = refused(encode(tone(440.0, 3.0, RATE), RATE, "WAV"), AudioLimits(max_seconds=2.0))
    assert "lasts 3.0 s; at most 2 s" in message


def test_nan_samples_are_refused() -> None:
    samples = tone(440.0, 0.5, RATE)
    samples[100] = np.nan
    assert "NaN" in refused(encode(samples, RATE, "WAV", "FLOAT"))


def test_a_truncated_wav_gives_the_frames_that_are_there() -> None:
    data = encode(tone(440.0, 1.0, RATE), RATE, "WAV")
    out = decode_audio(data[: 44 + 2 * 8000])  # the header says 16000 frames
    assert len(out) == 8000
    np.testing.assert_allclose(out, tone(440.0, 0.5, RATE), atol=1e-4)


def test_a_truncated_flac_gives_the_part_that_decodes() -> None:
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * RATE).astype(np.float32)
    data = encode(noise, RATE, "FLAC")
    out = decode_audio(data[: len(data) // 2])
    # Half the bytes hold about half the frames; all but the last SALVAGE_FRAMES come back.
    assert 1.2 * RATE < len(out) < 1.5 * RATE
    np.testing.assert_allclose(out, noise[: len(out)], atol=1e-4)  # lossless: the same samples


def test_a_flac_with_no_frame_left_is_refused() -> None:
    data = encode(np.random.default_rng(0).normal(0, 0.1, RATE).astype(np.float32), RATE, "FLAC")
    assert "truncated" in refused(data[:100])


# --- splitting ------------------------------------------------------------------------------


def bursts(layout: list[tuple[str, float]], rate: int = RATE) -> np.ndarray:
    """``[("silence", 0.5), ("tone", 4.0), ...]`` -> the signal (a tone is 440 Hz at half scale)."""
    parts = [tone(440.0, s, rate) if kind == "tone" else np.zeros(int(s * rate), np.float32) for kind, s in layout]
    return np.concatenate(parts)


LAYOUT = [
    ("silence", 0.5),
    ("tone", 4.0),
    ("silence", 1.0),
    ("tone", 6.0),
    ("silence", 0.8),
    ("tone", 7.0),
    ("silence", 0.2),
]


def test_cuts_fall_in_the_middle_of_pauses() -> None:
    samples = bursts(LAYOUT)
    # With padding longer than half of every pause, chunks meet at the pauses' middles:
    # pause 2 is [11.5 s, 12.3 s) = samples [184000, 196800), its middle 190400.
    chunks = split_chunks(samples, RATE, ChunkPolicy(padding_seconds=10.0, join_seconds=2.0))
    assert chunks == [Chunk(0, 190400), Chunk(190400, len(samples))]


def test_padding_keeps_that_much_silence_around_speech() -> None:
    samples = bursts(LAYOUT)
    chunks = split_chunks(samples, RATE, ChunkPolicy(padding_seconds=0.3, join_seconds=2.0))
    # Speech: [8000, 72000), [88000, 184000), [196800, 308800); 0.3 s = 4800 samples of
    # padding, leading silence trimmed, the pause after the first burst kept (same chunk).
    assert chunks == [Chunk(8000 - 4800, 184000 + 4800), Chunk(196800 - 4800, 308800 + 3200)]


def test_runs_further_apart_than_join_seconds_are_never_one_chunk() -> None:
    samples = bursts(LAYOUT)
    # Pauses of 1.0 s (> 0.8: a cut, the silence beyond the padding dropped) and 0.8 s (joined).
    chunks = split_chunks(samples, RATE, ChunkPolicy(padding_seconds=0.3, join_seconds=0.8))
    assert chunks == [Chunk(8000 - 4800, 72000 + 4800), Chunk(88000 - 4800, 308800 + 3200)]


def test_a_pause_shorter_than_min_silence_is_no_cut_point() -> None:
    layout = [("tone", 8.0), ("silence", 0.2), ("tone", 8.0)]
    chunks = split_chunks(bursts(layout), RATE, ChunkPolicy(min_silence_seconds=0.3))
    assert chunks[0] == Chunk(0, 15 * RATE)  # a hard cut, not at the 0.2 s pause
    chunks = split_chunks(bursts(layout), RATE, ChunkPolicy(min_silence_seconds=0.2, padding_seconds=1.0))
    assert chunks == [Chunk(0, 8 * RATE + 1600), Chunk(8 * RATE + 1600, 16 * RATE + 3200)]


def test_continuous_sound_is_cut_hard_with_overlap() -> None:
    samples = tone(440.0, 60.0, RATE)
    chunks = split_chunks(samples, RATE, ChunkPolicy(max_seconds=15.0, overlap_seconds=1.0))
    assert chunks == [
        Chunk(0, 240000),
        Chunk(224000, 464000),
        Chunk(448000, 688000),
        Chunk(672000, 912000),
        Chunk(896000, 960000),
    ]


def test_a_short_recording_is_one_chunk_all_of_it() -> None:
    samples = bursts([("silence", 3.0), ("tone", 2.0), ("silence", 3.0)])
    assert split_chunks(samples, RATE) == [Chunk(0, len(samples))]


def test_silence_only_gives_no_chunk() -> None:
    assert split_chunks(np.zeros(20 * RATE, np.float32), RATE) == []
    hiss = np.random.default_rng(0).normal(0, 10 ** (-70 / 20), 20 * RATE).astype(np.float32)  # -70 dBFS
    assert split_chunks(hiss, RATE) == []
    assert split_chunks(np.zeros(0, np.float32), RATE) == []


def test_silence_is_relative_to_the_loudest_frame() -> None:
    # Pauses full of -45 dBFS noise are still pauses for speech at -9 dBFS (threshold -44 dB)...
    samples = bursts(LAYOUT)
    samples += np.random.default_rng(0).normal(0, 10 ** (-45 / 20), len(samples)).astype(np.float32)
    policy = ChunkPolicy(padding_seconds=10.0, join_seconds=2.0)
    assert split_chunks(samples, RATE, policy) == [Chunk(0, 190400), Chunk(190400, len(samples))]
    # ...but not when the threshold is set far below the noise: then there are no pauses.
    deaf = ChunkPolicy(padding_seconds=10.0, silence_db=-55.0)
    assert split_chunks(samples, RATE, deaf)[0] == Chunk(0, 15 * RATE)


def test_chunk_policy_from_server_vad_fields() -> None:
    assert chunk_policy_from({}) == ChunkPolicy()
    assert chunk_policy_from({"type": "auto"}) == ChunkPolicy()
    policy = chunk_policy_from(
        {
            "type": "server_vad",
            "threshold": "0.5",
            "silence_duration_ms": "500",
            "prefix_padding_ms": "0",
            "max_chunk_seconds": "10",
        }
    )
    assert policy == ChunkPolicy(silence_db=-35.0, min_silence_seconds=0.5, padding_seconds=0.0, max_seconds=10.0)
    assert chunk_policy_from({"threshold": "0.8"}).silence_db == pytest.approx(-14.0)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"threshold": "2"}, "chunking_strategy.threshold must be between 0 and 1"),
        ({"threshold": "nan"}, "chunking_strategy.threshold"),
        ({"silence_duration_ms": "soon"}, "chunking_strategy.silence_duration_ms must be a number"),
        ({"prefix_padding_ms": "-1"}, "chunking_strategy.prefix_padding_ms"),
        ({"max_chunk_seconds": "30"}, "chunking_strategy.max_chunk_seconds must be between 2 and 15"),
        ({"type": "semantic_vad"}, "chunking_strategy.type"),
        ({"eagerness": "high"}, "no field 'eagerness'"),
    ],
)
def test_chunk_policy_from_names_the_bad_field(params: dict[str, str], expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        chunk_policy_from(params)
