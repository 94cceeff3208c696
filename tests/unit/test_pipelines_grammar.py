"""server.pipelines.grammar: response_format compiled by llguidance, sampled at random from its masks.

The tokenizer is a small byte-level BPE trained here (``<|endoftext|>`` is id 0), or the textgen model's
``tokenizer.json`` when it is present. Every sample drawn uniformly from ``Matcher.allowed()`` must decode to JSON
that validates against the schema (``jsonschema``), whatever tokens the sampler happened to pick.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
tokenizers = pytest.importorskip("tokenizers")

from server.pipelines.grammar import Grammar, GrammarError, Grammars, Matcher  # noqa: E402

TEXTGEN_TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "weights" / "textgen" / "tokenizer.json"
EOS = "<|endoftext|>"
EXTRA = 37  # logits wider than the tokenizer by this many ids

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = ("the quick brown fox jumps over a lazy dog name age color red green blue tags list value true false "
             "null answer people city number items result error message text id count type object").split()
    lines = []
    for _ in range(300):
        obj = {rng.choice(words): rng.choice([rng.randint(-999, 9999), rng.choice(words), [rng.choice(words)],
                                               True, False, None, {rng.choice(words): rng.random()}])
               for _ in range(rng.randint(1, 4))}
        lines.append(json.dumps(obj, indent=rng.choice([None, 2])))
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + ".")
    return lines


@pytest.fixture(scope="module")
def tokenizer():
    if TEXTGEN_TOKENIZER.is_file():
        tok = tokenizers.Tokenizer.from_file(str(TEXTGEN_TOKENIZER))
        if tok.token_to_id(EOS) is not None:
            return tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    assert tok.token_to_id(EOS) == 0
    return tok


@pytest.fixture(scope="module")
def grammars(tokenizer) -> Grammars:
    return Grammars(tokenizer.to_str(), tokenizer.token_to_id(EOS), tokenizer.get_vocab_size() + EXTRA)


def _closing(tokenizer, vocab_size: int) -> np.ndarray:
    """bool [vocab_size]: tokens whose text only closes things (quotes, braces, brackets)."""
    out = np.zeros(vocab_size, dtype=bool)
    for i in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([i], skip_special_tokens=False)
        out[i] = bool(text) and set(text) <= set('"}]')
    return out


def sample(grammar: Grammar, tokenizer, seed: int, *, close_after: int = 60, limit: int = 300) -> tuple[str, bool]:
    """Uniform over the allowed tokens; after ``close_after`` tokens EOS and then closing tokens are preferred
    whenever allowed, so that even an open-ended grammar ends. Returns (text, ended)."""
    rng = np.random.default_rng(seed)
    eos = grammar.eos_token_id
    closing = _closing(tokenizer, grammar.vocab_size)
    matcher = grammar.matcher()
    ids: list[int] = []
    for step in range(limit):
        mask = matcher.allowed()
        assert mask.dtype == np.bool_ and mask.shape == (grammar.vocab_size,)
        assert mask.any()
        pool = mask
        if step >= close_after:
            if mask[eos]:
                pool = np.zeros_like(mask)
                pool[eos] = True
            elif (mask & closing).any():
                pool = mask & closing
        token = int(rng.choice(np.flatnonzero(pool)))
        matcher.accept(token)
        if token == eos:
            return tokenizer.decode(ids), True
        ids.append(token)
        if matcher.is_finished():
            return tokenizer.decode(ids), True
    return tokenizer.decode(ids), False


@pytest.mark.parametrize("seed", range(20))
def test_json_schema_samples_validate(grammars, tokenizer, seed):
    grammar = grammars.compile(PERSON_FORMAT)
    text, ended = sample(grammar, tokenizer, seed)
    assert ended, text
    value = json.loads(text)
    jsonschema.validate(value, PERSON)
    assert list(value) == ["name", "age", "color", "tags"]  # llguidance keeps the schema's property order


@pytest.mark.parametrize("seed", range(20))
def test_json_object_samples_are_objects(grammars, tokenizer, seed):
    grammar = grammars.compile({"type": "json_object"})
    text, ended = sample(grammar, tokenizer, 100 + seed)
    assert ended, text
    assert isinstance(json.loads(text), dict)


def test_finished_right_after_the_value_and_eos_only_then(grammars, tokenizer):
    grammar = grammars.compile({"type": "json_object"})
    matcher = grammar.matcher()
    eos = grammars.eos_token_id
    assert not matcher.allowed()[eos] and not matcher.is_finished()
    text = '{"a": [1, 2], "b": {"c": null}}'
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    for token in ids[:-1]:
        matcher.accept(token)
        assert not matcher.allowed()[eos] and not matcher.is_finished()
    matcher.accept(ids[-1])
    assert matcher.is_finished()
    allowed = matcher.allowed()
    assert allowed[eos] and allowed.sum() == 1  # nothing may follow but EOS
    matcher.accept(eos)
    assert matcher.is_finished()


def test_whitespace_is_bounded(grammars, tokenizer):
    grammar = grammars.compile({"type": "json_object"})

    def accepts(text: str) -> bool:
        matcher = grammar.matcher()
        try:
            for token in tokenizer.encode(text).ids:
                matcher.accept(token)
        except GrammarError:
            return False
        return True

    assert accepts('{"a":1}') and accepts('{"a": 1, "b": 2}')  # compact and json.dumps' separators
    assert not accepts(' {"a":1}')  # no leading whitespace
    assert not accepts('{\n"a":1}')  # no line breaks
    assert not accepts('{  "a":1}')  # at most one space between tokens
    # a whitespace-only token is never allowed once a gap is full
    matcher = grammar.matcher()
    for token in tokenizer.encode('{ ').ids:
        matcher.accept(token)
    allowed = matcher.allowed()
    for i in np.flatnonzero(allowed):
        assert tokenizer.decode([int(i)]).strip() != "" or int(i) == grammar.eos_token_id


def test_disallowed_token_raises_and_keeps_state(grammars, tokenizer):
    grammar = grammars.compile(PERSON_FORMAT)
    matcher = grammar.matcher()
    allowed = matcher.allowed()
    bad = int(np.flatnonzero(~allowed)[0])
    with pytest.raises(GrammarError):
        matcher.accept(bad)
    with pytest.raises(GrammarError):
        matcher.accept(grammars.eos_token_id)  # nothing generated yet: not a complete value
    with pytest.raises(GrammarError):
        matcher.accept(grammars.vocab_size + 5)
    # the matcher is still usable: a valid value goes through
    text = '{"name":"Ann","age":30,"color":"red","tags":["a","b"]}'
    for token in tokenizer.encode(text).ids:
        matcher.accept(token)
    assert matcher.is_finished()


def test_ids_above_the_tokenizer_are_never_allowed(grammars, tokenizer):
    n = tokenizer.get_vocab_size()
    for response_format in (PERSON_FORMAT, {"type": "json_object"}):
        grammar = grammars.compile(response_format)
        rng = np.random.default_rng(1)
        matcher = grammar.matcher()
        for _ in range(40):
            allowed = matcher.allowed()
            assert allowed.shape == (n + EXTRA,) and not allowed[n:].any()
            token = int(rng.choice(np.flatnonzero(allowed)))
            if token == grammars.eos_token_id:
                break
            matcher.accept(token)
            if matcher.is_finished():
                break
        with pytest.raises(GrammarError):
            grammar.matcher().accept(n + 1)


def test_text_and_none_are_unconstrained(grammars):
    assert grammars.compile(None) is None
    assert grammars.compile({"type": "text"}) is None


@pytest.mark.parametrize("response_format, message", [
    ({"type": "xml"}, "type must be"),
    ({}, "type must be"),
    ("json_object", "must be an object"),
    ({"type": "json_schema"}, "needs a 'json_schema'"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "name"),
    ({"type": "json_schema", "json_schema": {"name": "has space", "schema": PERSON}}, "name"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "JSON Schema object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": PERSON, "strict": "yes"}}, "strict"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": PERSON, "extra": 1}}, "extra"),
    ({"type": "json_object", "schema": PERSON}, "schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}, "strin"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "nope"}}}, "nope"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}}, "not"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}},
     "uniqueItems"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a(?=b)"}}},
     "look-around"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}, "missing"),
])
def test_bad_response_format_raises(grammars, response_format, message):
    with pytest.raises(GrammarError, match=message) as info:
        grammars.compile(response_format)
    assert isinstance(info.value, ValueError) and len(str(info.value)) < 2000


def test_schema_options_cannot_lift_the_whitespace_bound(grammars, tokenizer):
    schema = dict(PERSON, **{"x-guidance": {"whitespace_flexible": True, "whitespace_pattern": "[ ]*"}})
    grammar = grammars.compile({"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    matcher = grammar.matcher()
    with pytest.raises(GrammarError):
        for token in tokenizer.encode('{' + ' ' * 40 + '"name"').ids:
            matcher.accept(token)


def test_compiled_grammars_are_cached_and_shared(grammars, tokenizer):
    a = grammars.compile(PERSON_FORMAT)
    same = {"json_schema": {"strict": False, "schema": json.loads(json.dumps(PERSON)), "name": "other"},
            "type": "json_schema"}
    assert grammars.compile(same) is a  # one grammar per schema, whatever its name
    # properties in another order are another grammar, which writes them in that order
    reordered = dict(PERSON, properties=dict(reversed(PERSON["properties"].items())))
    b = grammars.compile({"type": "json_schema", "json_schema": {"name": "person", "schema": reordered}})
    assert b is not a
    text, ended = sample(b, tokenizer, 0)
    assert ended and list(json.loads(text)) == ["tags", "color", "age", "name"]
    assert grammars.compile({"type": "json_object"}) is grammars.compile({"type": "json_object"})
    # two matchers of one grammar are independent
    m1, m2 = a.matcher(), a.matcher()
    assert isinstance(m1, Matcher)
    for token in tokenizer.encode('{"name":"Bo"').ids:
        m1.accept(token)
    assert not np.array_equal(m1.allowed(), m2.allowed())
    assert np.array_equal(m2.allowed(), a.matcher().allowed())


def test_allowed_is_a_copy(grammars):
    matcher = grammars.compile({"type": "json_object"}).matcher()
    first = matcher.allowed()
    first[:] = True
    assert not matcher.allowed().all()


def test_bad_tokenizer_sizes(tokenizer):
    with pytest.raises(ValueError):
        Grammars(tokenizer.to_str(), 0, tokenizer.get_vocab_size() - 10)
    with pytest.raises(ValueError):
        Grammars(tokenizer.to_str(), tokenizer.get_vocab_size() + 100, tokenizer.get_vocab_size())
