"""Evaluation of the speech recognizer: WER / CER (jiwer) on held-out sentences in the
training voices and in the unseen voices, greedy CTC decoding, raw and vocabulary-snapped.

    python -m models.eval_speech --seed 0 --out models/results/speech_ctc.json

"corrected" snaps each decoded word to the closest word of the lexicon (vocabulary, digit
words, letters) by Levenshtein distance (rapidfuzz) -- a cheap stand-in for the beam search
with a word list that the serving side does. Test audio is augmented like training audio
(seeded per utterance); "clean" is the same sentences without augmentation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from models import speech_ctc
from models.speech_data import AudioSet, augment, load_splits, pad_features
from models.speech_text import lexicon, load_vocab
from server.pipelines.audio_features import log_mel

RESULTS = Path(__file__).parent / "results" / "speech_ctc.json"
EVAL_SEED = 12345  # augmentation of validation/test audio; fixed, independent of --seed


def set_features(audio: AudioSet, augmented: bool, seed: int = EVAL_SEED) -> list[np.ndarray]:
    feats = []
    for i in range(len(audio)):
        x = audio.samples(i)
        feats.append(log_mel(augment(x, np.random.default_rng([seed, i])) if augmented else x))
    return feats


@torch.no_grad()
def network_outputs(model: speech_ctc.SpeechCTC, feats: list[np.ndarray],
                    batch_size: int = 32) -> Iterator[tuple[int, torch.Tensor]]:
    """``(i, log-probs of feats[i])`` for every utterance, padded rows ``(T', n_chars)``
    (the unpadded part: ``[: speech_ctc.output_frames(len(feats[i]))]``); batches of similar
    length, padded with ``FEATURE_FLOOR``."""
    model.eval()
    order = np.argsort([len(f) for f in feats])
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        log_probs = model(torch.from_numpy(pad_features([feats[i] for i in idx])))  # (B, T', n_chars)
        yield from zip(idx.tolist(), log_probs, strict=True)


def transcribe(model: speech_ctc.SpeechCTC, feats: list[np.ndarray], batch_size: int = 32,
               vocabulary: frozenset[str] | None = None) -> tuple[list[str], list[str]]:
    """Greedy transcripts, and (with ``vocabulary``) the server's beam search over it
    (``server.pipelines.ctc.beam_decode``)."""
    from server.pipelines.ctc import beam_decode

    greedy, beam = [""] * len(feats), [""] * len(feats)
    for i, row in network_outputs(model, feats, batch_size):
        greedy[i] = speech_ctc.greedy_decode(row)
        if vocabulary is not None:
            frames = row[: speech_ctc.output_frames(len(feats[i]))].numpy()
            beam[i] = beam_decode(frames, speech_ctc.ALPHABET, 0.03, beam_width=speech_ctc.BEAM_WIDTH,
                                  vocabulary=vocabulary, oov_penalty=speech_ctc.OOV_PENALTY).text
    return greedy, beam


def snap_to_lexicon(text: str, words: list[str]) -> str:
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    return " ".join(process.extractOne(w, words, scorer=Levenshtein.distance)[0] for w in text.split())


def scores(refs: list[str], hyps: list[str]) -> dict[str, float]:
    import jiwer

    hyps = [h if h else "<empty>" for h in hyps]  # jiwer rejects empty hypotheses
    return {"wer": round(jiwer.wer(refs, hyps), 4), "cer": round(jiwer.cer(refs, hyps), 4)}


def evaluate_set(model: speech_ctc.SpeechCTC, audio: AudioSet, words: list[str], augmented: bool) -> dict:
    refs = [u.transcript for u in audio.utterances]
    hyps, beam = transcribe(model, set_features(audio, augmented), vocabulary=frozenset(words))
    snapped = [snap_to_lexicon(h, words) for h in hyps]
    examples = [
        {"ref": r, "greedy": h, "voice": u.voice}
        for r, h, u in list(zip(refs, hyps, audio.utterances, strict=True))[:5]
    ]
    return {"n": len(refs), "greedy": scores(refs, hyps), "corrected": scores(refs, snapped),
            "beam": scores(refs, beam), "examples": examples}


def main(
    seed: Annotated[int, "recorded only: evaluation is deterministic"] = 0,
    weights: Annotated[Path, "the trained weights"] = speech_ctc.WEIGHTS,
    out: Annotated[Path, "results JSON (the training section written by train_speech is kept)"] = RESULTS,
    n_train: Annotated[int, "the training set size used (test sentences seen in training are excluded)"] = 20000,
    n_test: Annotated[int, "utterances per test set"] = 500,
) -> None:
    torch.set_num_threads(1)
    model = speech_ctc.load(weights)
    splits = load_splits(n_train, 400, n_test)
    words = lexicon(load_vocab())
    start = time.monotonic()
    evaluation = {}
    for name in ("test_seen", "test_unseen"):
        for augmented in (True, False):
            key = f"{name}_{'augmented' if augmented else 'clean'}"
            evaluation[key] = evaluate_set(model, splits[name], words, augmented)
            print(key, evaluation[key]["greedy"], "corrected", evaluation[key]["corrected"], "beam",
                  evaluation[key]["beam"], flush=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["evaluation"] = {
        "command": f"python -m models.eval_speech --seed {seed} --out {out}",
        "weights": str(weights),
        "wall_s": round(time.monotonic() - start, 1),
        "decoding": "greedy CTC (argmax, collapse, drop blanks); corrected = each word snapped to the nearest "
        f"lexicon word by Levenshtein distance; beam = the server's prefix beam search (width {speech_ctc.BEAM_WIDTH}, "
        f"OOV penalty {speech_ctc.OOV_PENALTY:g}) over the lexicon (server.pipelines.ctc.beam_decode), the served default",
        "augmentation": f"test audio augmented like training, numpy seed [{EVAL_SEED}, index]; clean = none",
        **evaluation,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    import typer

    typer.run(main)
