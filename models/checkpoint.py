"""Weights with their config: safetensors whose metadata carries the ``@dataclass`` config
(string -> string), so a file says which shape of network it holds (pruned widths too)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch


def config_to_metadata(config) -> dict[str, str]:
    """A dataclass config as safetensors metadata; tuples become comma lists."""
    return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in asdict(config).items()}


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
