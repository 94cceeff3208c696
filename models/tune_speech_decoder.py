"""Choosing the served decoder's beam width and out-of-vocabulary penalty on validation audio.

    python -m models.tune_speech_decoder --out models/results/speech_ctc.json

The trained network's log-probabilities for the validation split (augmented like training,
the same audio as the training run's validation) are decoded with the server's beam search
(``server.pipelines.ctc.beam_decode``) over the word list, for every (width, penalty) of the
grid; WER/CER come from jiwer. The best WER wins (ties: the smaller width, then the milder
penalty). The choice is written to the results file's ``decoder_tuning`` section and copied by
hand into ``models.speech_ctc.BEAM_WIDTH`` / ``OOV_PENALTY``; the test splits are never used.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from models import speech_ctc
from models.eval_speech import RESULTS, network_outputs, scores, set_features
from models.speech_data import load_splits
from models.speech_text import lexicon, load_vocab

WIDTHS = (16, 32, 64)
PENALTIES = (-4.0, -6.0, -9.0, -12.0, -20.0)


def main(
    weights: Annotated[Path, "the trained weights"] = speech_ctc.WEIGHTS,
    out: Annotated[Path, "results JSON: the decoder_tuning section"] = RESULTS,
    n_train: Annotated[int, "the training set size used (validation sentences seen in training are excluded)"] = 20000,
) -> None:
    from server.pipelines.ctc import beam_decode

    torch.set_num_threads(1)
    val = load_splits(n_train, 400, 500)["val"]
    feats = set_features(val, augmented=True)
    frames: list[np.ndarray] = [np.empty(0)] * len(feats)
    for i, row in network_outputs(speech_ctc.load(weights), feats):
        frames[i] = row[: speech_ctc.output_frames(len(feats[i]))].numpy()
    words = frozenset(lexicon(load_vocab()))
    refs = [u.transcript for u in val.utterances]
    grid = []
    for width, penalty in itertools.product(WIDTHS, PENALTIES):
        start = time.monotonic()
        hyps = [beam_decode(f, speech_ctc.ALPHABET, 0.03, beam_width=width, vocabulary=words,
                            oov_penalty=penalty).text for f in frames]
        row = {"beam_width": width, "oov_penalty": penalty, **scores(refs, hyps),
               "decode_ms_per_utterance": round(1e3 * (time.monotonic() - start) / len(frames), 2)}
        grid.append(row)
        print(row, flush=True)
    best = min(grid, key=lambda r: (r["wer"], r["beam_width"], -r["oov_penalty"]))
    results = json.loads(out.read_text()) if out.exists() else {}
    results["decoder_tuning"] = {
        "command": f"python -m models.tune_speech_decoder --out {out}",
        "weights": str(weights),
        "split": f"val ({len(refs)} utterances, training voices, augmented like training)",
        "chosen": {k: best[k] for k in ("beam_width", "oov_penalty", "wer", "cer")},
        "grid": grid,
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("chosen", results["decoder_tuning"]["chosen"], flush=True)


if __name__ == "__main__":
    import typer

    typer.run(main)
