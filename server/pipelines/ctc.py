"""CTC decoding for speech models: network output in, words with times and confidences out,
then grouped into subtitle segments.

One chunk's network output is ``(frames, len(alphabet))`` logits or log-probabilities;
``alphabet[0]`` is the CTC blank (any placeholder character) and ``" "`` separates words.

    logits (T, C) -> log_softmax            (idempotent: log-probs stay as they are)
      -> text: greedy (argmax path, repeats collapsed, blanks dropped) or prefix beam search
      -> path: which label each frame is on (greedy: the argmax path; beam: the Viterbi
               forced alignment of the beam's text), so timings always come from CTC
      -> words: start = first frame of the word's first char * frame_seconds + offset,
                end = (last frame of its last char + 1) * frame_seconds + offset,
                confidence = geometric mean over its chars of the char's highest posterior
                on the frames the path gives it, in (0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

NEG_INF = -np.inf
# A char less likely than this on a frame is not tried there (pyctcdecode's token_min_logp):
# most frames of a trained model's output then try none, and cost three array operations.
CHAR_MIN_LOGP = -5.0
# A beam this much less likely than the best one is dropped (pyctcdecode's beam_prune_logp).
BEAM_PRUNE_LOGP = -10.0
HASH_PRIME = np.uint64(0x100000001B3)  # FNV's 64-bit prime: names prefixes in the beam search
NO_PARENT = np.uint64(2**64 - 1)  # the empty prefix's parent
TINY = float(np.finfo(np.float64).tiny)  # keeps a confidence in (0, 1] when exp underflows


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds, absolute (offset added)
    end: float
    confidence: float  # in (0, 1]: see the module docstring


@dataclass(frozen=True)
class Decoded:
    text: str  # words joined by single spaces
    words: tuple[Word, ...]


EMPTY = Decoded("", ())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Stable log-softmax over the last axis, float64; log-probabilities come back unchanged
    (up to rounding)."""
    x = np.asarray(logits, dtype=np.float64)
    peak = x.max(axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    shifted = x - peak
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _log_probs(logits: np.ndarray, alphabet: str) -> np.ndarray:
    x = np.asarray(logits)
    if x.ndim != 2 or x.shape[1] != len(alphabet):
        raise ValueError(
            f"CTC output must be (frames, {len(alphabet)}) for a {len(alphabet)}-symbol alphabet, not {x.shape}"
        )
    lp = log_softmax(x)
    if np.isnan(lp).any():  # NaN in, +inf in, or a frame where every label is impossible
        raise ValueError("CTC output has NaN, +inf or a frame without a finite value")
    return lp


def greedy_decode(logits: np.ndarray, alphabet: str, frame_seconds: float, offset: float = 0.0) -> Decoded:
    """Best label per frame, repeats collapsed, blanks dropped."""
    lp = _log_probs(logits, alphabet)  # (T, C)
    if len(lp) == 0:
        return EMPTY
    return _words(lp.argmax(axis=1), lp, alphabet, frame_seconds, offset)


def _words(path: np.ndarray, lp: np.ndarray, alphabet: str, frame_seconds: float, offset: float) -> Decoded:
    """Words from a frame path (T,) of label indices (a new char starts where the label
    changes to a non-blank one)."""
    change = np.flatnonzero(np.diff(path, prepend=-1))  # first frame of each run
    run_end = np.append(change[1:], len(path))  # exclusive
    labels = path[change]
    chars = labels != 0
    starts, ends, labels = change[chars], run_end[chars], labels[chars]  # one entry per emitted char
    # Each char's peak posterior over its run: max over frames of lp[t, label].
    frame_lp = lp[np.arange(len(path)), path]
    peaks = np.maximum.reduceat(frame_lp, change)[chars] if len(change) else frame_lp[:0]
    words: list[Word] = []
    word_chars: list[int] = []

    def close() -> None:
        if word_chars:
            first, last = word_chars[0], word_chars[-1]
            confidence = max(float(np.exp(peaks[word_chars].mean())), TINY)
            words.append(
                Word(
                    text="".join(alphabet[labels[k]] for k in word_chars),
                    start=float(starts[first]) * frame_seconds + offset,
                    end=float(ends[last]) * frame_seconds + offset,
                    confidence=min(confidence, 1.0),
                )
            )
            word_chars.clear()

    for k, label in enumerate(labels.tolist()):
        if alphabet[label] == " ":
            close()
        else:
            word_chars.append(k)
    close()
    return Decoded(" ".join(w.text for w in words), tuple(words))


# --- prefix beam search -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lexicon:
    """A vocabulary as tables over lexicon states, for whole beams at once.

    States: 0 is the start of a word, 1..P-2 the vocabulary's word prefixes, P-1 ``OFF``
    (the current word already left the vocabulary). Without a vocabulary there is only
    state 0 and nothing costs anything.
    """

    step: np.ndarray  # (P, C) int64: the state after each char (a space goes back to 0)
    cost: np.ndarray  # (P, C) float64: the penalty of that char (oov or 0)
    cost_at_end: np.ndarray  # (P,) float64: the penalty of ending the chunk in that state


@lru_cache(maxsize=8)
def _lexicon(vocabulary: frozenset[str] | None, alphabet: str, space: int, oov: float) -> _Lexicon:
    C = len(alphabet)
    if vocabulary is None:
        return _Lexicon(np.zeros((1, C), dtype=np.int64), np.zeros((1, C)), np.zeros(1))
    index = {c: i for i, c in enumerate(alphabet) if i > 0 and i != space}
    prefixes: dict[str, int] = {"": 0}
    for word in sorted(vocabulary):
        if word and all(c in index for c in word):
            for n in range(1, len(word) + 1):
                prefixes.setdefault(word[:n], len(prefixes))
    off = len(prefixes)
    step = np.full((off + 1, C), off, dtype=np.int64)  # unknown continuations leave the vocabulary
    cost = np.full((off + 1, C), oov)
    cost[off] = 0.0  # a word pays once
    cost_at_end = np.zeros(off + 1)
    for prefix, state in prefixes.items():
        if prefix:
            parent = prefixes[prefix[:-1]]
            step[parent, index[prefix[-1]]] = state
            cost[parent, index[prefix[-1]]] = 0.0
            cost_at_end[state] = 0.0 if prefix in vocabulary else oov
    if space >= 0:
        step[:, space] = 0
        cost[:, space] = cost_at_end  # a space ends the word
    return _Lexicon(step, cost, cost_at_end)


def beam_decode(
    logits: np.ndarray,
    alphabet: str,
    frame_seconds: float,
    offset: float = 0.0,
    beam_width: int = 16,
    vocabulary: frozenset[str] | None = None,
    oov_penalty: float = -6.0,
) -> Decoded:
    """CTC prefix beam search (log domain), then word times from the Viterbi alignment of the
    best text.

    With a ``vocabulary``, a word that is not in it costs ``oov_penalty`` (log domain) once:
    as soon as its partial spelling is no vocabulary word's prefix, or when it ends (space or
    end of chunk) as a prefix that is not itself a word. Only the ``beam_width`` likeliest
    non-blank chars of each frame are tried, and of those only the ones with a log-prob of
    at least ``CHAR_MIN_LOGP``.
    """
    lp = _log_probs(logits, alphabet)  # (T, C)
    if len(lp) == 0:
        return EMPTY
    if beam_width < 1 or oov_penalty > 0:
        raise ValueError("beam_decode needs beam_width >= 1 and oov_penalty <= 0")
    lexicon = _lexicon(vocabulary, alphabet, alphabet.find(" "), oov_penalty)
    labels = _prefix_beam(lp, beam_width, lexicon)
    if not labels:
        return EMPTY
    return _words(_align(lp, labels), lp, alphabet, frame_seconds, offset)


def _prefix_beam(lp: np.ndarray, width: int, lexicon: _Lexicon) -> list[int]:
    """The best label sequence.

    A prefix is named by a 64-bit hash of its labels, ``hash(prefix + c) = hash(prefix) *
    HASH_PRIME + c`` (mod 2**64), so the same prefix reached twice, or pruned and found again,
    has the same name (two prefixes of a chunk colliding: about 1e-11). The B <= width beams
    are columns of two arrays:

        f (3, B) float64:  log P(prefix, path ends in blank) | ... ends in its last char | penalty
        s (4, B) uint64:   hash | parent's hash | last char (0: none) | lexicon state

    Every new beam's (hash, parent's hash, char) is recorded, to spell the best one at the end.
    """
    T, C = lp.shape
    top = np.argsort(-lp[:, 1:], axis=1, kind="stable")[:, : min(width, C - 1)]  # (T, k) likeliest first
    tried = (np.take_along_axis(lp[:, 1:], top, axis=1) >= CHAR_MIN_LOGP).sum(axis=1).tolist()  # (T,)
    top = (top + 1).astype(np.uint64)
    f = np.array([[0.0], [NEG_INF], [0.0]])
    s = np.array([[0], [NO_PARENT], [0], [0]], dtype=np.uint64)
    born: list[np.ndarray] = []  # (3, n) per frame: hash | parent's hash | char of the new beams
    for t in range(T):
        row, k = lp[t], tried[t]
        total = np.logaddexp(f[0], f[1])  # (B,)
        stay = np.empty_like(f)  # the same prefixes after frame t
        np.add(total, row[0], out=stay[0])
        np.add(f[1], row[s[2]], out=stay[1])
        stay[2] = f[2]
        if k == 0:  # no char worth trying: the same beams, in the same order
            f = stay
            continue
        f, s, new = _extend(row, top[t, :k], f, s, total, stay, lexicon, width)
        born.append(new)
    final = np.logaddexp(f[0], f[1]) + f[2] + lexicon.cost_at_end[s[3]]
    return _spell(int(s[0, int(np.argmax(final))]), born)


def _spell(name: int, born: list[np.ndarray]) -> list[int]:
    """The labels of the prefix hashed ``name``, from the record of every beam's birth."""
    if not born:
        return []
    names, parents, chars = np.concatenate(born, axis=1).tolist()
    where = dict(zip(names, range(len(names)), strict=True))  # a name born twice: the same prefix
    labels = []
    while name != 0:
        i = where[name]
        labels.append(chars[i])
        name = parents[i]
    return labels[::-1]


def _extend(row, cs, f, s, total, stay, lexicon: _Lexicon, width: int):
    """One frame with chars ``cs`` (k,) worth trying: every beam kept or extended by each, the
    same prefix reached twice merged, the best ``width`` within ``BEAM_PRUNE_LOGP`` kept.
    Returns the new ``f``, ``s`` and the (hash, parent's hash, char) rows of the new beams."""
    B, k = f.shape[1], len(cs)
    name, last, lex = s[0], s[2], s[3]
    # Extensions (B, k): a repeated char needs a blank between, so it extends pb only.
    ext = np.where(cs == last[:, None], f[0][:, None], total[:, None]) + row[cs]
    # Beam x is beam y extended by last[x]: that extension adds to beam x, not a new beam.
    x, y = np.nonzero(s[1][:, None] == name)
    if len(x):
        c = last[x]
        stay[1, x] = np.logaddexp(stay[1, x], np.where(c == last[y], f[0, y], total[y]) + row[c])
        col = np.full(len(row), -1)
        col[cs] = np.arange(k)
        tried = col[c] >= 0
        ext[y[tried], col[c[tried]]] = NEG_INF
    ext_pen = f[2][:, None] + lexicon.cost[lex[:, None], cs]  # (B, k)
    scores = np.concatenate((np.logaddexp(stay[0], stay[1]) + stay[2], (ext + ext_pen).ravel()))
    pick = np.flatnonzero(scores >= scores.max() + BEAM_PRUNE_LOGP)
    if len(pick) > width:
        pick = pick[np.argpartition(-scores[pick], width - 1)[:width]]
    old, new = pick[pick < B], pick[pick >= B] - B
    b, j = np.divmod(new, k)
    n_old, c = len(old), cs[j]
    out_f = np.empty((3, len(pick)))
    out_f[:, :n_old] = stay[:, old]
    out_f[0, n_old:] = NEG_INF
    out_f[1, n_old:] = ext[b, j]
    out_f[2, n_old:] = ext_pen[b, j]
    out_s = np.empty((4, len(pick)), dtype=np.uint64)
    out_s[:, :n_old] = s[:, old]
    out_s[0, n_old:] = name[b] * HASH_PRIME + c
    out_s[1, n_old:] = name[b]
    out_s[2, n_old:] = c
    out_s[3, n_old:] = lexicon.step[lex[b], c]
    return out_f, out_s, out_s[:3, n_old:]


def _align(lp: np.ndarray, labels: list[int]) -> np.ndarray:
    """Viterbi forced alignment: the likeliest frame path (T,) that collapses to ``labels``."""
    T = len(lp)
    ext = np.zeros(2 * len(labels) + 1, dtype=np.int64)  # blank, l1, blank, l2, ..., blank
    ext[1::2] = labels
    S = len(ext)
    skip = np.zeros(S, dtype=bool)  # may jump from s-2 (a char after a different char)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    emit = lp[:, ext]  # (T, S)
    barred = np.where(skip, 0.0, NEG_INF)[2:]  # added to the from-(s-2) candidates
    best = np.full((T, S), NEG_INF)  # best[t, s]: best log-prob of a path on state s at frame t
    best[0, :2] = emit[0, :2]
    for t in range(1, T):
        prev, out = best[t - 1], best[t]
        out[0] = prev[0]
        np.maximum(prev[1:], prev[:-1], out=out[1:])  # stay or from s-1
        np.maximum(out[2:], prev[:-2] + barred, out=out[2:])  # or from s-2
        out += emit[t]
    s = S - 1 if S == 1 or best[-1, -1] >= best[-1, -2] else S - 2
    if not np.isfinite(best[-1, s]):
        raise ValueError("the text cannot be aligned to these frames")
    # Backtrack, redoing each frame's three-way choice for the one state on the path.
    path = np.empty(T, dtype=np.int64)
    skips = skip.tolist()
    at = best.item
    for t in range(T - 1, 0, -1):
        path[t] = ext[s]
        step = 1 if s >= 1 and at(t - 1, s - 1) > at(t - 1, s) else 0
        if s >= 2 and skips[s] and at(t - 1, s - 2) > at(t - 1, s - step):
            step = 2
        s -= step
    path[0] = ext[s]
    return path


# --- chunks, segments, subtitles ---------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    id: int  # from 0, as in OpenAI's verbose_json
    start: float
    end: float
    text: str
    words: tuple[Word, ...]


def segments(decoded: Decoded, max_gap: float = 0.8, max_seconds: float = 15.0) -> list[Segment]:
    """Words grouped into segments: a new one starts after a pause longer than ``max_gap``
    seconds, or where the word would take the segment past ``max_seconds``."""
    groups: list[list[Word]] = []
    for w in decoded.words:
        if groups and w.start - groups[-1][-1].end <= max_gap and w.end - groups[-1][0].start <= max_seconds:
            groups[-1].append(w)
        else:
            groups.append([w])
    return [Segment(i, g[0].start, g[-1].end, " ".join(w.text for w in g), tuple(g)) for i, g in enumerate(groups)]


def _timestamp(seconds: float, decimal: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def _cue_text(text: str) -> str:
    return " ".join(text.split()).replace("-->", "->")  # one line, no cue-timing arrow


def to_srt(segs: Sequence[Segment]) -> str:
    """SubRip: numbered from 1, ``00:00:01,500 --> 00:00:03,000``, a blank line after each cue."""
    return "".join(
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{_cue_text(s.text)}\n\n"
        for i, s in enumerate(segs, start=1)
    )


def to_vtt(segs: Sequence[Segment]) -> str:
    """WebVTT: the ``WEBVTT`` header, then ``00:00:01.500 --> 00:00:03.000`` cues."""
    cues = "".join(f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{_cue_text(s.text)}\n\n" for s in segs)
    return "WEBVTT\n\n" + cues
