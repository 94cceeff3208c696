"""The speech recognizer: log-mel features, transcript normalization, the vocabulary, the
shipped CTC weights (shapes, padding, and a real espeak-ng utterance transcribed)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from models import speech_ctc
from models.speech_data import Utterance, pad_features, synthesize, voices
from models.speech_text import N_WORDS, lexicon, load_vocab, normalize
from server.pipelines.audio_features import FEATURE_FLOOR, N_MELS, SAMPLE_RATE, log_mel, mel_filterbank, n_frames

requires_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


def _tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_log_mel_shape_dtype_and_determinism() -> None:
    x = np.random.default_rng(0).uniform(-0.5, 0.5, SAMPLE_RATE).astype(np.float32)
    a, b = log_mel(x), log_mel(x.copy())
    assert a.shape == (98, N_MELS) == (n_frames(len(x)), N_MELS) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert log_mel(np.zeros(399, np.float32)).shape == (0, N_MELS)


def test_log_mel_silence_is_the_floor_and_a_tone_lands_in_its_band() -> None:
    assert np.all(log_mel(np.zeros(SAMPLE_RATE, np.float32)) == np.float32(FEATURE_FLOOR))
    peak_band = int(log_mel(_tone(1000.0)).mean(axis=0).argmax())
    assert int(mel_filterbank()[round(1000.0 * 512 / SAMPLE_RATE)].argmax()) == peak_band
    assert peak_band < int(log_mel(_tone(4000.0)).mean(axis=0).argmax())


def test_normalize() -> None:
    assert normalize("Hello, World!  7 B don't") == "hello world seven b don't"
    assert normalize("'quoted' 42-x") == "quoted four two x"
    assert normalize("  ") == ""


def test_vocabulary_is_real_words() -> None:
    words = load_vocab()
    assert len(words) == N_WORDS == len(set(words))
    assert words[0] == "the"
    assert all(re.fullmatch(r"[a-z]+('[a-z]+)?", w) for w in words)
    assert all(speech_ctc.encode(w) for w in lexicon(words))  # every word is in the alphabet


def test_unseen_voices_are_disjoint_from_training() -> None:
    train, unseen = set(voices(unseen=False)), set(voices(unseen=True))
    assert len(unseen) >= 2 and not train & unseen
    assert all(v.startswith("en-gb-scotland") or v.endswith(("+m3", "+f3")) for v in unseen)


def test_shipped_weights_output_frames() -> None:
    model = speech_ctc.load()
    assert speech_ctc.ALPHABET[0] == speech_ctc.BLANK and model.config.n_chars == len(speech_ctc.ALPHABET)
    assert sum(p.numel() for p in model.parameters()) <= 3_000_000
    with torch.no_grad():
        for frames in (1, 2, 3, 4, 100, 301):
            out = model(torch.full((2, frames, N_MELS), FEATURE_FLOOR))
            assert out.shape == (2, model.output_frames(frames), len(speech_ctc.ALPHABET))
            assert torch.allclose(out.exp().sum(-1), torch.ones(()), atol=1e-4)


def test_greedy_decode_collapses_repeats_and_blanks() -> None:
    ids = [0, 3, 3, 0, 3, 1, 1, 0, 4]  # "_aa_a  _b" -> "aa b"
    log_probs = torch.nn.functional.one_hot(torch.tensor(ids), len(speech_ctc.ALPHABET)).float()
    assert speech_ctc.greedy_decode(log_probs) == "aa b"


@requires_espeak
def test_shipped_model_transcribes_an_utterance() -> None:
    import jiwer

    text = "the server returns 7 values from the file"
    utt = Utterance(text, normalize(text), "en-us+m2", 160, 50, 100)
    feats = log_mel(synthesize(utt))
    model = speech_ctc.load()
    with torch.no_grad():
        hyp = speech_ctc.greedy_decode(model(torch.from_numpy(feats[None]))[0])
        padded = torch.from_numpy(pad_features([feats], extra_frames=150))  # padding must be harmless
        hyp_padded = speech_ctc.greedy_decode(model(padded)[0])
    # The shipped weights read this at CER 0.18 (0.16 padded); an untrained network scores about 1.0.
    assert jiwer.cer(utt.transcript, hyp) <= 0.3, hyp
    assert jiwer.cer(utt.transcript, hyp_padded) <= 0.3, hyp_padded
