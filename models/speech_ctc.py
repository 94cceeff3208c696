"""The default speech recognizer: conv front end, bidirectional GRUs, CTC over characters.

Input: float32 ``features (B, T, N_MELS)``, ``server.pipelines.audio_features.log_mel`` of
16 kHz audio (10 ms frames), batches padded at the end with ``FEATURE_FLOOR`` (there is no
lengths input: the network is trained on such padding, which it reads as silence).
Output: float32 log-probabilities ``(B, T', len(ALPHABET))`` over ``ALPHABET`` (CTC blank at
index 0), ``T' = output_frames(T) = ceil(T / 3)``: one output frame per 30 ms.

    features (B, T, 80) -> (x - mean) / std -> (B, 80, T)
      Conv1d k5 s1 -> BN -> GELU                (B, C, T)
      Conv1d k5 s3 -> BN -> GELU                (B, C, T')
      -> (B, T', C) -> BiGRU x n_layers          (B, T', 2H)
      -> Linear -> log_softmax                   (B, T', 29)

The time axis is dynamic end to end (convolutions and ``nn.GRU``), so an ONNX export with
``dynamic_axes`` on batch and time serves any length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models import checkpoint

WEIGHTS = Path(__file__).parent / "weights" / "speech_ctc.safetensors"
BLANK = "_"
ALPHABET = BLANK + " '" + "abcdefghijklmnopqrstuvwxyz"  # index 0 is the CTC blank
# The served decoder (the repository's defaults; evaluated by eval_speech): beam search over the
# word list, with the width and out-of-vocabulary cost chosen on validation audio
# (models/tune_speech_decoder.py, results in models/results/speech_ctc.json "decoder_tuning").
BEAM_WIDTH = 32
OOV_PENALTY = -12.0
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


@dataclass(frozen=True)
class SpeechCTCConfig:
    n_mels: int = 80
    conv_channels: int = 256
    stride: int = 3  # time downsampling of the front end
    hidden: int = 192  # GRU units per direction
    n_layers: int = 3
    dropout: float = 0.1
    n_chars: int = len(ALPHABET)
    feature_mean: float = -4.7  # fixed input scaling, measured on augmented training features
    feature_std: float = 4.2


def output_frames(input_frames: int, stride: int = SpeechCTCConfig.stride) -> int:
    """Output length for ``input_frames`` feature frames: ``ceil(input_frames / stride)``."""
    return (input_frames + stride - 1) // stride


class SpeechCTC(nn.Module):
    def __init__(self, config: SpeechCTCConfig = SpeechCTCConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.conv_channels
        self.front = nn.Sequential(
            nn.Conv1d(config.n_mels, c, 5, padding=2, bias=False),
            nn.BatchNorm1d(c),
            nn.GELU(),
            nn.Conv1d(c, c, 5, stride=config.stride, padding=2, bias=False),
            nn.BatchNorm1d(c),
            nn.GELU(),
        )
        self.rnn = nn.GRU(
            c, config.hidden, num_layers=config.n_layers, batch_first=True, bidirectional=True, dropout=config.dropout
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * config.hidden, config.n_chars)

    def output_frames(self, input_frames: int) -> int:
        return output_frames(input_frames, self.config.stride)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.config.feature_mean) / self.config.feature_std  # (B, T, n_mels)
        x = self.front(x.transpose(1, 2)).transpose(1, 2)  # (B, T', C)
        x, _ = self.rnn(x)  # (B, T', 2H)
        return self.head(self.dropout(x)).log_softmax(dim=-1)  # (B, T', n_chars)


def encode(transcript: str) -> list[int]:
    """A normalized transcript as label indices (1..n_chars-1)."""
    return [_INDEX[c] for c in transcript]


def greedy_decode(log_probs) -> str:
    """Best path of one ``(T', n_chars)`` output: argmax, collapse repeats, drop blanks."""
    best = log_probs.argmax(-1).tolist()
    chars, prev = [], 0
    for i in best:
        if i != prev and i != 0:
            chars.append(ALPHABET[i])
        prev = i
    return " ".join("".join(chars).split())


def save(model: SpeechCTC, path: Path) -> None:
    checkpoint.save(model, path)


def load(path: Path = WEIGHTS, device: str = "cpu") -> SpeechCTC:
    config = checkpoint.config_from_metadata(SpeechCTCConfig, checkpoint.metadata(path))
    return checkpoint.load_into(SpeechCTC(config), path, device)
