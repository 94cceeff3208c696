"""Transcription end to end: fresh utterances synthesized here with espeak-ng (sentences and
voices the recognizer was not trained on), sent through the openai SDK, raw HTTP and
tritonclient (HTTP, gRPC and a gRPC stream) to the real server on the shipped model.

The served transcripts must be as good as the recipe measured the model (the WER in
models/results/speech_ctc.json, beam search as served, plus a margin for these few fresh
utterances); the issue's targets (10 % / 20 % WER) are compared in models/README.md. A long
recording made of utterances with pauses comes back complete, in order, with word times
within 0.5 s of the known boundaries."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import jiwer
import numpy as np
import pytest
import soundfile
import soxr

from tests.integration import server_fixtures as fx

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

RATE = 16000
MAX_BYTES = 32 * 1024 * 1024
MARGIN = 0.15  # a handful of fresh utterances against the recipe's 500


def measured_wer(split: str) -> float:
    """The recipe's held-out WER of the served decoder (beam search over the word list)."""
    results = json.loads((fx.ROOT / "models" / "results" / "speech_ctc.json").read_text())
    return results["evaluation"][f"{split}_clean"]["beam"]["wer"]


def speak(text: str, voice: str, speed: int = 160, pitch: int = 50) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    x, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(x, rate, RATE).astype(np.float32)


def encode(samples: np.ndarray, fmt: str = "WAV", rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


def sentences(n: int, seed: int) -> list[tuple[str, str]]:
    """(text to speak, normalized reference) drawn from the model's vocabulary with a seed no
    training split uses."""
    from models.speech_text import load_vocab, make_sentence

    rng = np.random.default_rng(seed)
    words = load_vocab()
    return [make_sentence(rng, words) for _ in range(n)]


def voices(unseen: bool, n: int, seed: int) -> list[str]:
    from models.speech_data import voices as all_voices

    pool = all_voices(unseen=unseen)
    return [pool[i] for i in np.random.default_rng(seed).choice(len(pool), n, replace=False)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from export.default_repository import build_speech_entries

    repo = tmp_path_factory.mktemp("speech-repo")
    build_speech_entries(repo)
    fx.write_simple(repo, "simple")  # a model of another task
    with fx.server_process(repo, extra_args=("--max-request-bytes", str(MAX_BYTES))) as (handle, _):
        yield handle


@pytest.fixture(scope="module")
def utterances():
    """Eight fresh utterances, half in unseen voices: (wav bytes, reference, unseen)."""
    out = []
    for i, ((text, reference), voice) in enumerate(zip(sentences(8, seed=9001), voices(True, 4, 5) + voices(False, 4, 6),
                                                       strict=True)):
        out.append((encode(speak(text, voice, speed=150 + 5 * i)), reference, i < 4))
    return out


def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused", max_retries=0)


def test_the_openai_sdk_transcribes_as_well_as_the_model_measured(server, utterances) -> None:
    client = openai_client(server)
    got = {True: ([], [], []), False: ([], [], [])}
    for data, reference, unseen in utterances:
        got[unseen][0].append(reference)
        got[unseen][1].append(client.audio.transcriptions.create(model="speech", file=("a.wav", data)).text)
        greedy = client.audio.transcriptions.create(model="speech", file=("a.wav", data), extra_body={"beam_width": 0})
        got[unseen][2].append(greedy.text)
    for unseen, split in ((True, "test_unseen"), (False, "test_seen")):
        refs, beam, greedy = got[unseen]
        assert jiwer.wer(refs, beam) <= measured_wer(split) + MARGIN, (split, beam)
        assert jiwer.wer(refs, beam) <= jiwer.wer(refs, greedy), (beam, greedy)  # the word list helps


def test_verbose_json_has_words_and_segments_from_the_alignment(server, utterances) -> None:
    data, reference, _ = utterances[5]
    result = openai_client(server).audio.transcriptions.create(
        model="speech", file=("a.wav", data), response_format="verbose_json", timestamp_granularities=["word", "segment"])
    duration = len(soundfile.read(io.BytesIO(data))[0]) / RATE
    assert result.duration == pytest.approx(duration, abs=0.01)
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and all(0 <= w.start < w.end <= duration + 0.05 for w in result.words)
    assert " ".join(w.word for w in result.words) == result.text
    assert result.segments and result.segments[0].start == pytest.approx(result.words[0].start)
    assert " ".join(s.text for s in result.segments) == result.text


def test_subtitles_and_plain_text(server, utterances) -> None:
    data, _, _ = utterances[6]
    client = openai_client(server)
    text = client.audio.transcriptions.create(model="speech", file=("a.wav", data), response_format="text")
    srt = client.audio.transcriptions.create(model="speech", file=("a.wav", data), response_format="srt")
    vtt = client.audio.transcriptions.create(model="speech", file=("a.wav", data), response_format="vtt")
    assert text.strip() and srt.startswith("1\n00:00:") and " --> " in srt
    assert vtt.startswith("WEBVTT\n\n00:00:") and text.strip() in " ".join(vtt.split("\n"))


def test_streaming_gives_deltas_then_the_whole_text(server, utterances) -> None:
    data, _, _ = utterances[7]
    client = openai_client(server)
    whole = client.audio.transcriptions.create(model="speech", file=("a.wav", data)).text
    for model in ("speech_stream", "speech"):
        events = list(client.audio.transcriptions.create(model=model, file=("a.wav", data), stream=True))
        kinds = [e.type for e in events]
        assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}, kinds
        assert "".join(e.delta for e in events[:-1]) == events[-1].text == whole


def test_logprobs_are_per_word_confidences(server, utterances) -> None:
    data, _, _ = utterances[4]
    reply = httpx.post(f"http://{server.http_url}/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                       data={"model": "speech", "include[]": "logprobs"}, timeout=60).json()
    assert [p["token"] for p in reply["logprobs"]] == reply["text"].split()
    assert all(p["logprob"] <= 0 for p in reply["logprobs"])


def test_tritonclient_http_and_grpc_give_the_same_text(server, utterances) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    data, _, _ = utterances[0]
    want = openai_client(server).audio.transcriptions.create(model="speech", file=("a.wav", data)).text
    for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        client = module.InferenceServerClient(url)
        audio = module.InferInput("audio", [1], "BYTES")
        audio.set_data_from_numpy(np.array([data], dtype=object))
        result = client.infer("speech", [audio])
        assert result.as_numpy("text")[0].decode() == want
        assert json.loads(result.as_numpy("transcript")[0])["text"] == want


def test_a_grpc_stream_answers_per_chunk(server, utterances) -> None:
    import queue

    import tritonclient.grpc as grpcclient

    recording = np.concatenate([soundfile.read(io.BytesIO(u[0]), dtype="float32")[0] for u in utterances[:3]])
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    audio = grpcclient.InferInput("audio", [1], "BYTES")
    audio.set_data_from_numpy(np.array([encode(recording)], dtype=object))
    client.async_stream_infer("speech_stream", [audio], request_id="r1")
    got = []
    while True:
        result, error = responses.get(timeout=60)
        assert error is None, error
        transcript = json.loads(result.as_numpy("transcript")[0])
        got.append(transcript)
        if transcript["final"]:
            break
    client.stop_stream()
    parts = [t["text"] for t in got[:-1] if t["text"]]
    assert len(got) >= 2 and " ".join(parts) == got[-1]["text"]


@pytest.fixture(scope="module")
def long_recording():
    """About three minutes: 30 utterances with 1-2.5 s pauses between them; (samples, the
    utterances' (start, end) seconds where speech is loud, their references)."""
    rng = np.random.default_rng(77)
    pieces, bounds, references = [np.zeros(int(0.5 * RATE), np.float32)], [], []
    at = 0.5
    for (text, reference), voice in zip(sentences(30, seed=9002), voices(False, 30, 8), strict=True):
        speech = speak(text, voice)
        loud = np.flatnonzero(np.abs(speech) > 0.02)  # espeak's own leading / trailing silence
        bounds.append((at + loud[0] / RATE, at + loud[-1] / RATE))
        pause = np.zeros(int(rng.uniform(1.0, 2.5) * RATE), np.float32)
        pieces += [speech, pause]
        references.append(reference)
        at += (len(speech) + len(pause)) / RATE
    return np.concatenate(pieces), bounds, references


def test_a_long_recording_comes_back_complete_in_order_with_exact_times(server, long_recording) -> None:
    recording, bounds, references = long_recording
    assert len(recording) / RATE > 150
    reply = httpx.post(f"http://{server.http_url}/v1/audio/transcriptions", timeout=300,
                       files={"file": ("long.flac", encode(recording, "FLAC"))},
                       data={"model": "speech", "response_format": "verbose_json", "timestamp_granularities[]": "word"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert jiwer.wer(" ".join(references), body["text"]) <= measured_wer("test_seen") + MARGIN
    words = body["words"]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    spans = [(start - 0.5, end + 0.5) for start, end in bounds]
    stray = [w for w in words if not any(a <= (w["start"] + w["end"]) / 2 <= b for a, b in spans)]
    assert not stray, stray  # no word is placed in a pause
    for (start, end), reference in zip(bounds, references, strict=True):
        inside = [w for w in words if start - 0.5 <= (w["start"] + w["end"]) / 2 <= end + 0.5]
        assert inside and abs(inside[0]["start"] - start) <= 0.5, (start, inside)
        if inside[-1]["word"] == reference.split()[-1]:  # the last word heard (not dropped by the model)
            assert abs(inside[-1]["end"] - end) <= 0.5, (end, inside)


def test_ten_minutes_work_and_memory_stays_bounded(server, long_recording) -> None:
    """The three minutes four times over (12 min, FLAC): every utterance comes back, in order,
    and the server's peak memory grows by far less than the decoded audio would take at the
    network's input (features of every chunk at once: 12 min x 100 frames/s x 80 x 4 B)."""
    recording, _, references = long_recording
    twelve = np.concatenate([recording] * 4)
    peak_before = _peak_rss(server)
    reply = httpx.post(f"http://{server.http_url}/v1/audio/transcriptions", timeout=600,
                       files={"file": ("twelve.flac", encode(twelve, "FLAC"))}, data={"model": "speech"})
    assert reply.status_code == 200, reply.text
    assert jiwer.wer(" ".join(references * 4), reply.json()["text"]) <= measured_wer("test_seen") + MARGIN
    grown = _peak_rss(server) - peak_before
    assert grown < 200 * 2**20, grown  # decoded samples 46 MB; all features at once would be 230 MB more


def _peak_rss(server) -> int:
    status = Path(f"/proc/{server.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


@pytest.mark.parametrize("data, words", [
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "audio"),
    (bytes(26 * 1024 * 1024), "25"),
    (encode(np.zeros(0, np.float32)), "no samples"),
    (encode(np.zeros(16000, np.float32))[:30], "cannot be decoded"),  # the header cut short
])
def test_bad_audio_is_a_400_with_a_message(server, data, words) -> None:
    reply = httpx.post(f"http://{server.http_url}/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                       data={"model": "speech"}, timeout=30)
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]["message"].lower()


@pytest.mark.parametrize("fields, status, words", [
    ({"model": "nonexistent"}, 404, "nonexistent"),
    ({"model": "simple"}, 400, "not a transcription model"),
    ({"model": "speech", "response_format": "mp4"}, 400, "response_format"),
    ({"model": "speech", "language": "fr"}, 400, "english"),
    ({"model": "speech", "chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "9"}, 400, "threshold"),
])
def test_bad_fields_are_4xx_with_a_message(server, utterances, fields, status, words) -> None:
    reply = httpx.post(f"http://{server.http_url}/v1/audio/transcriptions", files={"file": ("a.wav", utterances[0][0])},
                       data=fields, timeout=30)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]["message"].lower()


def test_the_metrics_count_audio_and_real_time_factor(server, utterances) -> None:
    def read() -> tuple[float, float, float]:
        values = []
        for name in ("deepserve_audio_seconds_total", "deepserve_transcription_real_time_factor_count",
                     "deepserve_transcription_chunks_sum"):
            values.append(sum(v for labels, v in fx.metric_samples(f"http://{server.http_url}", name) if labels.get("model") == "speech"))
        return tuple(values)

    data = utterances[1][0]
    before = read()
    openai_client(server).audio.transcriptions.create(model="speech", file=("a.wav", data))
    after = read()
    duration = len(soundfile.read(io.BytesIO(data))[0]) / RATE
    assert after[0] - before[0] == pytest.approx(duration, abs=0.01)
    assert after[1] - before[1] == 1 and after[2] - before[2] >= 1
