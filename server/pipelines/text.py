"""Text in and out of a generation model: its Hugging Face tokenizer and chat template.

From a checkpoint folder: ``tokenizer.json`` (required; the ``tokenizers`` library, no
``transformers``), ``tokenizer_config.json`` (special tokens, ``chat_template``) and
``generation_config.json`` / ``config.json`` (end-of-sequence ids). The chat template is
the checkpoint's own (``chat_template.jinja``, else ``tokenizer_config.json``'s
``chat_template``), rendered with jinja2 in a sandbox the way ``transformers`` does;
a checkpoint without one gets :data:`DEFAULT_CHAT_TEMPLATE`: one ``role: content`` line
per message, then ``assistant:`` when a reply is wanted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from server.core.errors import InvalidInput

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
ROLES = ("system", "user", "assistant", "developer", "tool")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


class TextCodec:
    def __init__(self, folder: Path) -> None:
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise InvalidInput("a generation model needs its tokenizer.json beside the weights")
        self.tokenizer_json = path.read_text(encoding="utf-8")
        self.tokenizer = Tokenizer.from_str(self.tokenizer_json)
        config = _read_json(folder / "tokenizer_config.json")
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.template_source = self._template(folder, config)
        eos: list[int] = []
        for source in (_read_json(folder / "generation_config.json"), _read_json(folder / "config.json")):
            eos += _ids(source.get("eos_token_id"))
        if self.eos_token is not None and (token := self.tokenizer.token_to_id(self.eos_token)) is not None:
            eos.append(token)
        self.eos_token_ids = tuple(dict.fromkeys(eos))

    @staticmethod
    def _template(folder: Path, config: dict) -> str:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE

    @cached_property
    def _chat(self) -> jinja2.Template:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

        def raise_exception(message: str) -> None:
            raise InvalidInput(f"the model's chat template refused the messages: {message}")

        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        try:
            return env.from_string(self.template_source)
        except jinja2.TemplateError as exc:
            raise InvalidInput(f"the model's chat template does not parse: {exc}") from None

    def render_chat(self, messages: Any, add_generation_prompt: bool = True) -> str:
        """The prompt text for a list of chat messages (OpenAI's shape, text content)."""
        checked = check_messages(messages)
        try:
            return self._chat.render(messages=checked, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except jinja2.TemplateError as exc:
            raise InvalidInput(f"the model's chat template failed on these messages: {exc}") from None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_chat(self, messages: Any, add_generation_prompt: bool = True) -> list[int]:
        # The template writes the special tokens itself (as transformers tokenizes it).
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's own text (what OpenAI's logprobs call ``token``)."""
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def stream(self) -> Detokenizer:
        return Detokenizer(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


@dataclass(frozen=True, slots=True)
class TextModel:
    """What the OpenAI routes need of a generation model besides its engine."""

    codec: TextCodec
    max_model_len: int


class Detokenizer:
    """Incremental decoding: text appears once its UTF-8 bytes are complete."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer, self._stream = tokenizer, DecodeStream(skip_special_tokens=True)

    def step(self, token: int) -> str:
        try:
            return self._stream.step(self._tokenizer, token) or ""
        except Exception:  # an id the tokenizer does not know (a model wider than its vocabulary)
            return ""


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages, reduced to what templates read: role and text content
    (a list of ``{"type": "text", "text": ...}`` parts is joined)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidInput(f"messages[{index}] must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidInput(f"messages[{index}].role must be one of {list(ROLES)}, not {role!r}")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise InvalidInput(f"messages[{index}].content: only text parts are supported")
                parts.append(part["text"])
            content = "".join(parts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{index}].content must be a string or a list of text parts")
        out.append({**{k: v for k, v in message.items() if k != "content"}, "role": role, "content": content})
    return out
