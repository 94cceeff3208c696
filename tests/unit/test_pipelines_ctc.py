"""server.pipelines.ctc: decoding hand-built network outputs whose words and frames are known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from server.pipelines.ctc import (
    Decoded,
    Segment,
    Word,
    beam_decode,
    greedy_decode,
    log_softmax,
    segments,
    to_srt,
    to_vtt,
)

ALPHABET = "_ 'abcdefghijklmnopqrstuvwxyz"  # index 0 is the blank
FRAME_S = 0.02
SURE = 10.0  # the logit margin of a frame's intended symbol
P_SURE = float(np.exp(SURE) / (np.exp(SURE) + len(ALPHABET) - 1))  # its posterior


def frames(spelling: str, margin: float = SURE) -> np.ndarray:
    """Logits (T, C): frame t's intended symbol is spelling[t] ("_" the blank) by ``margin``."""
    logits = np.zeros((len(spelling), len(ALPHABET)))
    logits[np.arange(len(spelling)), [ALPHABET.index(c) for c in spelling]] = margin
    return logits


def confuse(logits: np.ndarray, t: int, char: str, logit: float) -> np.ndarray:
    logits = logits.copy()
    logits[t, ALPHABET.index(char)] = logit
    return logits


#                0         1         2
#                0123456789012345678901234567
HELLO_WORLD = "__hhe_l_lo___ __wo_rr_ld___"


def test_greedy_spells_words_with_exact_frames() -> None:
    decoded = greedy_decode(frames(HELLO_WORLD), ALPHABET, FRAME_S, offset=1.0)
    assert decoded.text == "hello world"
    hello, world = decoded.words
    assert (hello.text, world.text) == ("hello", "world")
    # hello: first h on frame 2, last o on frame 9; world: w on 16, d on 23.
    assert hello.start == pytest.approx(1.0 + 2 * FRAME_S) and hello.end == pytest.approx(1.0 + 10 * FRAME_S)
    assert world.start == pytest.approx(1.0 + 16 * FRAME_S) and world.end == pytest.approx(1.0 + 24 * FRAME_S)
    assert hello.confidence == pytest.approx(P_SURE) and world.confidence == pytest.approx(P_SURE)


@pytest.mark.parametrize("decode", [greedy_decode, beam_decode])
def test_repeats_collapse_unless_a_blank_separates_them(decode) -> None:
    assert decode(frames("hhellllo"), ALPHABET, FRAME_S).text == "helo"
    assert decode(frames("hhell_lo"), ALPHABET, FRAME_S).text == "hello"
    assert greedy_decode(frames("__  _ __"), ALPHABET, FRAME_S) == Decoded("", ())
    assert greedy_decode(np.zeros((0, len(ALPHABET))), ALPHABET, FRAME_S) == Decoded("", ())


def test_spaces_anywhere_give_single_spaces() -> None:
    assert greedy_decode(frames("  a_  _ b  "), ALPHABET, FRAME_S).text == "a b"


def test_confidence_is_the_geometric_mean_of_char_peaks() -> None:
    logits = confuse(frames("_c_a_t_ _d_o_g_"), 3, "e", SURE)  # "a" shares its frame with "e"
    cat, dog = greedy_decode(logits, ALPHABET, FRAME_S).words
    p_a = np.exp(SURE) / (2 * np.exp(SURE) + len(ALPHABET) - 2)
    assert cat.confidence == pytest.approx((P_SURE * p_a * P_SURE) ** (1 / 3))
    assert dog.confidence == pytest.approx(P_SURE)
    assert 0 < cat.confidence < dog.confidence <= 1


def test_logits_and_log_probs_decode_the_same() -> None:
    logits = frames(HELLO_WORLD) + np.random.default_rng(0).normal(0, 1, (len(HELLO_WORLD), len(ALPHABET)))
    lp = log_softmax(logits)
    np.testing.assert_allclose(log_softmax(lp), lp, atol=1e-12)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0)
    assert greedy_decode(lp, ALPHABET, FRAME_S) == greedy_decode(logits, ALPHABET, FRAME_S)
    assert beam_decode(lp, ALPHABET, FRAME_S) == beam_decode(logits, ALPHABET, FRAME_S)
    huge = log_softmax(np.array([[1e4, 0.0, -1e4]]))  # no overflow, no warning
    assert huge[0, 0] == 0.0 and np.isfinite(huge).all()


def test_the_wrong_shape_is_an_error_not_garbage() -> None:
    with pytest.raises(ValueError, match="29-symbol alphabet"):
        greedy_decode(np.zeros((5, 28)), ALPHABET, FRAME_S)
    with pytest.raises(ValueError, match="NaN"):
        beam_decode(np.full((5, 29), np.nan), ALPHABET, FRAME_S)


# --- beam search ------------------------------------------------------------------------------


def test_beam_agrees_with_greedy_on_a_clear_output() -> None:
    logits = frames(HELLO_WORLD)
    assert beam_decode(logits, ALPHABET, FRAME_S, offset=2.5) == greedy_decode(logits, ALPHABET, FRAME_S, offset=2.5)


def test_beam_sums_paths_where_greedy_takes_the_best_one() -> None:
    # Two frames of P(blank) 0.6, P(a) 0.4: the best path is "__" (0.36), but "a" has the
    # paths "a_", "_a", "aa" (0.24 + 0.24 + 0.16 = 0.64).
    probs = np.full((2, len(ALPHABET)), 1e-9)
    probs[:, 0], probs[:, ALPHABET.index("a")] = 0.6, 0.4
    assert greedy_decode(np.log(probs), ALPHABET, FRAME_S).text == ""
    assert beam_decode(np.log(probs), ALPHABET, FRAME_S).text == "a"


def labeling_probabilities(lp: np.ndarray) -> dict[tuple[int, ...], float]:
    """P(labeling) by summing every path (C ** T of them)."""
    out: dict[tuple[int, ...], float] = {}
    T, C = lp.shape
    for path in itertools.product(range(C), repeat=T):
        labels = tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c))
        out[labels] = out.get(labels, 0.0) + float(np.exp(sum(lp[t, c] for t, c in enumerate(path))))
    return out


@pytest.mark.parametrize(
    ("alphabet", "seed"), [("_ab", seed) for seed in range(6)] + [("_a", seed) for seed in range(6)]
)
def test_a_wide_beam_finds_the_likeliest_labeling(alphabet: str, seed: int) -> None:
    lp = log_softmax(np.random.default_rng(seed).normal(0, 1.5, (8 if len(alphabet) == 3 else 10, len(alphabet))))
    totals = labeling_probabilities(lp)
    best = max(totals, key=totals.__getitem__)
    assert beam_decode(lp, alphabet, FRAME_S, beam_width=64).text == "".join(alphabet[c] for c in best)


def test_a_vocabulary_fixes_a_near_miss() -> None:
    #                     0123456789012345
    logits = frames("__hel_lo __wo_rld_")
    logits = confuse(logits, 12, "a", SURE + 0.5)  # "warld" beats "world" on frame 12, narrowly
    vocabulary = frozenset({"hello", "world", "help"})
    assert greedy_decode(logits, ALPHABET, FRAME_S).text == "hello warld"
    assert beam_decode(logits, ALPHABET, FRAME_S).text == "hello warld"
    decoded = beam_decode(logits, ALPHABET, FRAME_S, vocabulary=vocabulary)
    assert decoded.text == "hello world"
    # Times still come from the alignment: world is frames 11..16.
    assert decoded.words[1].start == pytest.approx(11 * FRAME_S) and decoded.words[1].end == pytest.approx(17 * FRAME_S)
    assert decoded.words[1].confidence < decoded.words[0].confidence


def test_an_unknown_word_survives_strong_evidence() -> None:
    logits = frames("__hel_lo __zo_rld_")  # "zorld" is certain: a penalty of 6 nats does not undo it
    vocabulary = frozenset({"hello", "world"})
    assert beam_decode(logits, ALPHABET, FRAME_S, vocabulary=vocabulary, oov_penalty=-6.0).text == "hello zorld"
    # ...a penalty beyond the evidence (about 2 * SURE) does.
    assert beam_decode(logits, ALPHABET, FRAME_S, vocabulary=vocabulary, oov_penalty=-40.0).text != "hello zorld"


def test_an_unknown_word_pays_the_penalty_once() -> None:
    # "xyz" leads "abc" (the only word) by 3 nats on each char, 9 in all: paying 6 once,
    # it stays; were each char past the vocabulary charged, it would cost 18 and lose.
    logits = frames("_x_y_z_")
    for t, char in ((1, "a"), (3, "b"), (5, "c")):
        logits = confuse(logits, t, char, SURE - 3.0)
    vocabulary = frozenset({"abc"})
    assert beam_decode(logits, ALPHABET, FRAME_S, vocabulary=vocabulary, oov_penalty=-6.0).text == "xyz"
    assert beam_decode(logits, ALPHABET, FRAME_S, vocabulary=vocabulary, oov_penalty=-12.0).text == "abc"


def test_a_word_cut_off_by_the_chunk_end_is_judged_as_a_word() -> None:
    logits = confuse(frames("__hel_lo __wo_rld"), 16, "_", SURE + 0.5)  # the d fades into blank
    vocabulary = frozenset({"hello", "world"})
    assert greedy_decode(logits, ALPHABET, FRAME_S).text == "hello worl"
    assert beam_decode(logits, ALPHABET, FRAME_S, vocabulary=vocabulary).text == "hello world"


# --- stitching, segments, subtitles -----------------------------------------------------------


def w(text: str, start: float, end: float) -> Word:
    return Word(text, start, end, 0.9)


def decoded(*words: Word) -> Decoded:
    return Decoded(" ".join(x.text for x in words), words)


def test_segments_split_at_pauses_and_at_max_seconds() -> None:
    words = decoded(w("one", 0.0, 0.4), w("two", 0.5, 0.9), w("three", 2.0, 2.5), w("four", 2.6, 3.0))
    segs = segments(words, max_gap=0.8)
    assert [(s.id, s.start, s.end, s.text) for s in segs] == [(0, 0.0, 0.9, "one two"), (1, 2.0, 3.0, "three four")]
    assert segs[1].words == words.words[2:]
    assert [s.text for s in segments(words, max_gap=0.8, max_seconds=0.7)] == ["one", "two", "three", "four"]
    assert segments(Decoded("", ())) == []


def test_srt_and_vtt_formats() -> None:
    segs = [Segment(0, 1.5, 3.0, "hello world", ()), Segment(1, 3725.25, 3727.0004, "again", ())]
    assert to_srt(segs) == (
        "1\n00:00:01,500 --> 00:00:03,000\nhello world\n\n2\n01:02:05,250 --> 01:02:07,000\nagain\n\n"
    )
    assert to_vtt(segs) == (
        "WEBVTT\n\n00:00:01.500 --> 00:00:03.000\nhello world\n\n01:02:05.250 --> 01:02:07.000\nagain\n\n"
    )
    assert to_vtt([]) == "WEBVTT\n\n" and to_srt([]) == ""
