"""Text side of the default speech recognizer: the vocabulary, the transcript normalization
and the random sentences the synthetic training and test sets are made of.

Vocabulary (``models/data/speech_vocab.txt``, one word per line, most frequent first) is
built from text already on a Debian machine, nothing downloaded::

    python -m models.speech_text --out models/data/speech_vocab.txt

1. the corpus: every ``COMMENT`` token and every triple-quoted string (docstrings) of every
   ``.py`` file under the Python standard library (``sysconfig.get_paths()["stdlib"]``,
   CPython 3.11.7 here), read with :mod:`tokenize`; the folders in ``_SKIP_DIRS`` skipped
   (tests, ``encodings``: its character tables would make "latin small letter" top words);
2. words: runs of ASCII letters (with one inner apostrophe for contractions) that are not
   part of a code identifier (not next to ``_``, a digit, ``.x`` or ``(``), lowercased;
3. junk filter: keep a word only if the Debian ``wamerican`` word list
   (``/usr/share/dict/american-english``) has it in lower case (drops ``kwargs``, ``str``,
   ``def``, names) and has a vowel (drops ``xxx``, ``dd``); apostrophe words only if they are contractions (``n't``, ``'re``,
   ``'ll``, ``'ve``, ``'m``, ``'d`` or one of ``CONTRACTIONS_S``); single letters are
   dropped (letters are in the vocabulary as letters anyway);
4. the ``N_WORDS`` = 2,000 most frequent (ties broken alphabetically).

Transcripts are :func:`normalize`-d: lower case, each digit spoken and written as its word
(``"7" -> "seven"``, ``"42" -> "four two"``: the sentences only ever contain single digits,
spoken one by one), spelled letters as the single letter (``"B" -> "b"``), punctuation other
than an inner apostrophe replaced by a space, whitespace collapsed. The character set is
``models.speech_ctc.ALPHABET`` (space, apostrophe, a-z).
"""

from __future__ import annotations

import re
import string
import sysconfig
import tokenize
from collections import Counter
from pathlib import Path
from typing import Annotated

import numpy as np

VOCAB_PATH = Path(__file__).parent / "data" / "speech_vocab.txt"
DICTIONARY = Path("/usr/share/dict/american-english")
N_WORDS = 2000
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTERS = tuple(string.ascii_lowercase)
CONTRACTIONS_S = frozenset({"it's", "that's", "there's", "let's", "what's", "here's", "he's", "she's"})
_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "__pycache__", "lib2to3", "encodings"})
_WORD = re.compile(r"(?<![\w.])([A-Za-z]+(?:'[A-Za-z]+)?)(?![\w(]|\.\w)")
_CONTRACTION_ENDS = ("n't", "'re", "'ll", "'ve", "'m", "'d")


def normalize(text: str) -> str:
    """Transcript normalization shared by training, evaluation and serving (see module doc)."""
    text = text.lower()
    text = re.sub(r"[0-9]", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # only inner apostrophes stay
    return " ".join(text.split())


def _corpus_texts(root: Path):
    """Comments and triple-quoted strings of the ``.py`` files under ``root``, sorted by path."""
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            with path.open("rb") as f:
                for tok in tokenize.tokenize(f.readline):
                    if tok.type == tokenize.COMMENT:
                        yield tok.string
                    elif tok.type == tokenize.STRING and tok.string.lstrip("rRbBuUfF")[:3] in ('"""', "'''"):
                        yield tok.string
        except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
            continue


def _is_english(word: str, dictionary: frozenset[str]) -> bool:
    if len(word) < 2 or word not in dictionary or not re.search("[aeiouy]", word):
        return False
    if "'" in word:
        return word.endswith(_CONTRACTION_ENDS) or word in CONTRACTIONS_S
    return True


def build_vocab(n_words: int = N_WORDS, root: Path | None = None, dictionary: Path = DICTIONARY) -> list[str]:
    """The ``n_words`` most frequent English words of the stdlib's comments and docstrings."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    known = frozenset(line.strip() for line in dictionary.read_text(encoding="utf-8").splitlines())
    counts: Counter[str] = Counter()
    for text in _corpus_texts(root):
        counts.update(m.lower() for m in _WORD.findall(text))
    ranked = sorted(((c, w) for w, c in counts.items() if _is_english(w, known)), key=lambda cw: (-cw[0], cw[1]))
    return [w for _, w in ranked[:n_words]]


def load_vocab(path: Path = VOCAB_PATH) -> list[str]:
    return [w for w in path.read_text(encoding="utf-8").split("\n") if w]


def lexicon(words: list[str]) -> list[str]:
    """Every word a normalized transcript can contain: the vocabulary, digit words, letters."""
    return sorted(set(words) | set(DIGIT_WORDS) | set(LETTERS))


def make_sentence(rng: np.random.Generator, words: list[str]) -> tuple[str, str]:
    """A random sentence: ``(text to speak, normalized transcript)``.

    3-12 tokens; 60 % plain words (uniform over ``words``), 20 % with about a third of the
    tokens single digits, 20 % with about a third spelled letters (spoken upper case).
    """
    n = int(rng.integers(3, 13))
    kind = rng.random()
    spoken = []
    for _ in range(n):
        r = rng.random()
        if kind >= 0.8 and r < 0.35:
            spoken.append(str(int(rng.integers(0, 10))))
        elif 0.6 <= kind < 0.8 and r < 0.35:
            spoken.append(LETTERS[int(rng.integers(0, 26))].upper())
        else:
            spoken.append(words[int(rng.integers(0, len(words)))])
    text = " ".join(spoken)
    return text, normalize(text)


def main(out: Annotated[Path, "where to write the word list"] = VOCAB_PATH) -> None:
    words = build_vocab()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(words) + "\n", encoding="utf-8")
    print(f"{len(words)} words -> {out}; first: {' '.join(words[:20])}; last: {' '.join(words[-10:])}")


if __name__ == "__main__":
    import typer

    typer.run(main)
