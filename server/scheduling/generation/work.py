"""What the engine and the model runner exchange (no device library here): a sequence's
share of one step, and what the runner tells the engine about the model and its cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SeqWork:
    # tokens: ids to compute this step (len >= 1): a prefill chunk, or the one newest token in decode
    tokens: Sequence[int]
    start: int  # position of tokens[0]; positions [0, start) are already in the KV cache
    block_table: Sequence[int]  # physical block ids covering positions [0, start + len(tokens))


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    vocab_size: int
    max_model_len: int
    block_size: int
    num_blocks: int
    eos_token_ids: tuple[int, ...]
    model_type: str
    device: str
    dtype: str
    attention: str  # which attention kernel is used, in words
