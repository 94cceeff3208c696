"""Weights with their config: safetensors whose metadata carries the ``@dataclass`` config
(string -> string), so a file says which shape of network it holds (pruned widths too)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch


def config_to_metadata(config) -> dict[str, str]:
    """A dataclass config as safetensors metadata; tuples become comma lists."""
    return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in asdict(config).items()}


def config_from_metadata(cls, meta: dict[str, str] | None):
    """The inverse of :func:`config_to_metadata`: a ``cls`` (a dataclass) whose fields are
    parsed as their defaults' types (tuples as comma lists); missing ones keep the default."""
    if not meta:
        return cls()
    values = {}
    for f in fields(cls):
        if f.name not in meta:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        text = meta[f.name]
        if isinstance(default, tuple):
            values[f.name] = tuple(type(default[0])(v) for v in text.split(",")) if default else ()
        elif isinstance(default, bool):
            values[f.name] = text == "True"
        else:
            values[f.name] = type(default)(text)
    return cls(**values)


def save(model: torch.nn.Module, path: Path) -> None:
    """``model.state_dict()`` with ``model.config`` in the metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=config_to_metadata(model.config))


def metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def load_into(model: torch.nn.Module, path: Path, device: str) -> torch.nn.Module:
    """Load the file's tensors into ``model`` (built from :func:`metadata`), in eval mode."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path), device=device))
    return model.to(device).eval()
