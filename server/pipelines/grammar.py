"""Structured output for text generation: OpenAI ``response_format`` enforced while sampling.

``response_format`` forms (the request's ``response_format`` object as decoded JSON):

- absent / ``None`` / ``{"type": "text"}``: no constraint (``Grammars.compile`` returns ``None``);
- ``{"type": "json_object"}``: any JSON object (the schema ``{"type": "object"}``);
- ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ..., "description": ...}}``:
  a value valid against ``schema`` (``{}``, any JSON value, when ``schema`` is absent). The output is held to the
  schema whether ``strict`` is true or false; deepserve does not require OpenAI's strict subset (all properties
  required, ``additionalProperties: false``), it takes whatever the grammar library implements.

The schema is compiled by llguidance (``LLMatcher.grammar_from_json_schema``, then
``LLMatcher.validate_grammar_with_warnings`` for errors, ``LLMatcher`` for the per-token state, its numpy bitmask
layout for the mask); no JSON parsing is written here. A schema llguidance refuses is a :class:`GrammarError`
carrying llguidance's message: keywords it does not implement (``if``/``then``/``else``, ``not``, ``uniqueItems``,
``contains``, ``dependentRequired``, ``propertyNames``, ...), unknown ``type`` or ``format`` names, remote
``$ref``, look-around in ``pattern``.

Whitespace is bounded: none before the top-level value, none after it (the matcher stops at the value's last
byte, so ``Matcher.is_finished`` turns true there and the engine ends with ``finish_reason`` "stop"), and between
tokens of the JSON text at most one space (:data:`WHITESPACE_PATTERN`): compact or ``json.dumps``-style output
(no indentation), so that even a model that favours whitespace reaches the end of the value. Schema
``x-guidance`` options cannot lift the bound (ours are llguidance's ``overrides``).

Cost: ``python -m server.pipelines.grammar path/to/tokenizer.json`` runs :func:`measure` (uniform sampling from
the mask over 2000 tokens). Per generated token, ``allowed()`` + ``accept()``, on 2 shared CPU cores:

- 537-wide logits (the unit tests' 500-token byte-level BPE): ~13 + 2.5 µs (schema), ~7 + 2 µs (json_object);
- 4096 (byte-level BPE trained on Python sources, the textgen width): ~17 + 3 µs (schema), ~6 + 2 µs (json_object);
- 50000 (the same, 50k tokens): ~70 + 4 µs (schema), ~11 + 2.5 µs (json_object).

``allowed()`` includes unpacking llguidance's bitmask into a bool array (``np.unpackbits``, little bit order).
Compiling a grammar takes about 1 ms for such schemas and is cached (LRU by the schema's compact JSON); a request's
matcher is a copy of the compiled one (< 1 µs).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import OrderedDict

import llguidance
import numpy as np

__all__ = ["GrammarError", "Grammars", "Grammar", "Matcher", "WHITESPACE_PATTERN", "measure"]

# between tokens of the JSON text: at most one space (compact JSON, or json.dumps' ", " and ": ")
WHITESPACE_PATTERN = r"\x20?"
# applied after the schema's own x-guidance options, so a request cannot widen them
_JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": WHITESPACE_PATTERN, "lenient": False,
                 "coerce_one_of": False, "item_separator": ",", "key_separator": ":"}
MAX_SCHEMA_CHARS = 100_000  # canonical JSON of a response_format
CACHE_SIZE = 64
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class GrammarError(ValueError):
    """A bad or unsupported ``response_format`` / schema, or a token the grammar does not allow (HTTP 400)."""


def _limits() -> llguidance.LLParserLimits:
    # verbose_errors off: messages name the problem without dumping the parser state and the whole grammar
    return llguidance.LLParserLimits(verbose_errors=False)


class Grammars:
    """Compiles ``response_format`` objects for one tokenizer; compiled grammars are cached (small LRU)."""

    def __init__(self, tokenizer_json: str, eos_token_id: int, vocab_size: int):
        """``tokenizer_json``: a HF ``tokenizer.json``'s text (or a path to one); ``vocab_size``: the logits width
        (at least the tokenizer's size; the ids above it are never allowed)."""
        if not tokenizer_json.lstrip().startswith("{") and os.path.isfile(tokenizer_json):
            with open(tokenizer_json, encoding="utf-8") as f:
                tokenizer_json = f.read()
        if not 0 <= eos_token_id < vocab_size:
            raise ValueError(f"eos_token_id {eos_token_id} outside the vocabulary of {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.eos_token_id = int(eos_token_id)
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=self.vocab_size, eos_token=self.eos_token_id,
                                                slices=llguidance.LLTokenizer.json_slices())
        if self.tokenizer.vocab_size != self.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} tokens, logits width is {self.vocab_size}")
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, response_format: dict | None) -> Grammar | None:
        """The grammar of ``response_format``; ``None`` when it does not constrain. Raises :class:`GrammarError`."""
        schema = _schema_of(response_format)
        if schema is None:
            return None
        # key order kept: llguidance writes properties in the schema's order, so a reordered schema is another grammar
        key = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        if len(key) > MAX_SCHEMA_CHARS:
            raise GrammarError(f"response_format schema is {len(key)} characters, at most {MAX_SCHEMA_CHARS}")
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None:
                self._cache.move_to_end(key)
                return grammar
        grammar = Grammar(self, schema)  # outside the lock: a slow compile does not hold up cached ones
        with self._lock:
            self._cache[key] = grammar
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return grammar


def _schema_of(response_format) -> dict | bool | None:
    """The JSON schema a ``response_format`` asks for, ``None`` for no constraint."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise GrammarError("response_format must be an object with a 'type'")
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        extra = sorted(set(response_format) - {"type"})
        if extra:
            raise GrammarError(f"response_format of type {kind!r} takes no {', '.join(map(repr, extra))}")
        return None if kind == "text" else {"type": "object"}
    if kind != "json_schema":
        raise GrammarError(f"response_format type must be 'text', 'json_object' or 'json_schema', not {kind!r}")
    extra = sorted(set(response_format) - {"type", "json_schema"})
    if extra:
        raise GrammarError(f"response_format of type 'json_schema' takes no {', '.join(map(repr, extra))}")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise GrammarError("response_format of type 'json_schema' needs a 'json_schema' object")
    extra = sorted(set(spec) - {"name", "schema", "strict", "description"})
    if extra:
        raise GrammarError(f"response_format.json_schema takes no {', '.join(map(repr, extra))}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise GrammarError("response_format.json_schema.name must be 1 to 64 letters, digits, '_' or '-'")
    if spec.get("strict") not in (None, True, False):
        raise GrammarError("response_format.json_schema.strict must be a boolean")
    if not isinstance(spec.get("description", ""), str):
        raise GrammarError("response_format.json_schema.description must be a string")
    schema = spec.get("schema", {})
    if isinstance(schema, bool):
        if not schema:
            raise GrammarError("response_format.json_schema.schema false admits no value")
        return {}
    if not isinstance(schema, dict):
        raise GrammarError("response_format.json_schema.schema must be a JSON Schema object")
    return schema


class Grammar:
    """A compiled grammar; shared by the requests that ask for the same ``response_format``."""

    def __init__(self, grammars: Grammars, schema: dict):
        self.vocab_size = grammars.vocab_size
        self.eos_token_id = grammars.eos_token_id
        try:
            self.source = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise GrammarError(f"response_format schema: {e}") from None
        limits = _limits()
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            self.source, grammars.tokenizer, limits=limits)
        if is_error:
            raise GrammarError(f"response_format schema not supported: {'; '.join(messages)}")
        self._template = llguidance.LLMatcher(grammars.tokenizer, self.source, log_level=0, limits=limits)
        if self._template.is_error():
            raise GrammarError(f"response_format schema not supported: {self._template.get_error()}")

    def matcher(self) -> Matcher:
        """A fresh per-sequence state at the start of the grammar."""
        return Matcher(self._template.deep_copy(), self.vocab_size)


class Matcher:
    """One sequence's position in a :class:`Grammar`."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self._m = matcher
        self.vocab_size = vocab_size
        self._words = np.empty((vocab_size + 31) // 32, dtype=np.int32)
        self._mask: np.ndarray | None = None  # bool view of _words for the current position, once computed

    def _compute(self) -> np.ndarray:
        if self._mask is None:
            self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
            self._check()
            self._mask = np.unpackbits(self._words.view(np.uint8), count=self.vocab_size,
                                       bitorder="little").view(np.bool_)
        return self._mask

    def _check(self) -> None:
        if self._m.is_error():
            raise GrammarError(f"structured output: {self._m.get_error()}")

    def allowed(self) -> np.ndarray:
        """bool [vocab_size]: the tokens allowed next; EOS exactly when the text so far is a complete value."""
        return self._compute().copy()

    def accept(self, token_id: int) -> None:
        """Advance by ``token_id``; :class:`GrammarError` (state unchanged) when the grammar does not allow it."""
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size or not self._compute()[token_id]:
            raise GrammarError(f"structured output: token {token_id} is not allowed here")
        self._mask = None
        if not self._m.consume_token(token_id):
            self._check()
            raise GrammarError(f"structured output: token {token_id} was refused")

    def is_finished(self) -> bool:
        """True once the text is a complete value and nothing may follow it (or EOS was accepted)."""
        return self._m.is_stopped() and not self._m.is_error()


def measure(grammars: Grammars, response_format: dict, tokens: int = 2000, seed: int = 0) -> dict:
    """Micro-measurement: mean µs per generated token of ``allowed()`` and ``accept()`` while sampling uniformly
    from the mask (restarting at each end), and the compile time. Not used by the server."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    grammar = Grammar(grammars, _schema_of(response_format))
    compile_ms = (time.perf_counter() - t0) * 1e3
    t_allowed = t_accept = 0.0
    n = 0
    m = grammar.matcher()
    while n < tokens:
        t0 = time.perf_counter()
        mask = m.allowed()
        t1 = time.perf_counter()
        ids = np.flatnonzero(mask)
        token = grammars.eos_token_id if mask[grammars.eos_token_id] and rng.random() < 0.5 else int(rng.choice(ids))
        t2 = time.perf_counter()
        m.accept(token)
        t3 = time.perf_counter()
        t_allowed += t1 - t0
        t_accept += t3 - t2
        n += 1
        if token == grammars.eos_token_id or m.is_finished():
            m = grammar.matcher()
    return {"vocab_size": grammars.vocab_size, "compile_ms": round(compile_ms, 2),
            "allowed_us": round(t_allowed / n * 1e6, 1), "accept_us": round(t_accept / n * 1e6, 1)}


if __name__ == "__main__":  # python -m server.pipelines.grammar path/to/tokenizer.json [vocab_size] [eos_id]
    import sys

    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)
    size = int(sys.argv[2]) if len(sys.argv) > 2 else tok.get_vocab_size()
    eos = int(sys.argv[3]) if len(sys.argv) > 3 else (tok.token_to_id("<|endoftext|>") or 0)
    g = Grammars(text, eos, size)
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4}},
        "required": ["name", "age", "color", "tags"], "additionalProperties": False}
    print(measure(g, {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}))
    print(measure(g, {"type": "json_object"}))
