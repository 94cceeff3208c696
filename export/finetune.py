"""Fine-tuning after pruning (``--finetune``): the user's own function, or the built-in.

``--finetune PATH.py:FUNC`` names ``FUNC(module)``, which trains the pruned network in
place (any return value is ignored) with whatever data and loss the user has.
``--finetune builtin`` runs ten epochs of Adam (lr 1e-3, batches of 64) with cross-entropy on the first output's
(batch, classes) scores, over ``--eval-data``. That data is then also what the variant is
judged on, so the accuracy it reports is in-sample: prefer a function of your own with
training data when you have it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from export.errors import UserInputError
from export.families import HeldOut
from export.references import load_function, parse_module_ref
from export.spec import ExportSpec

BUILTIN = "builtin"
Finetune = Callable[[nn.Module], object]


@dataclass(frozen=True)
class BuiltinRecipe:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


def builtin_finetune(data: HeldOut, spec: ExportSpec, recipe: BuiltinRecipe = BuiltinRecipe()) -> Finetune:
    """Cross-entropy on ``data`` (inputs by name, integer labels), ``recipe.epochs`` passes."""
    feed, labels = data
    tensors = [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in spec.input_names]
    targets = torch.from_numpy(labels)

    def run(module: nn.Module) -> nn.Module:
        torch.manual_seed(recipe.seed)
        order = np.random.default_rng(recipe.seed)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=recipe.lr)
        module.train()
        for _ in range(recipe.epochs):
            perm = torch.from_numpy(order.permutation(len(targets)))
            for start in range(0, len(perm), recipe.batch_size):
                idx = perm[start : start + recipe.batch_size]
                out = module(*(t[idx] for t in tensors))
                logits = out[0] if isinstance(out, (tuple, list)) else out
                loss = nn.functional.cross_entropy(logits, targets[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return module.eval()

    return run


def user_finetune(ref: str) -> Finetune:
    """``PATH.py:FUNC`` -> a fine-tune whose failures name the flag."""
    func, name = load_function(ref, "--finetune"), parse_module_ref(ref, "--finetune")[1]

    def run(module: nn.Module) -> nn.Module:
        try:
            func(module)
        except Exception as err:
            raise UserInputError(f"--finetune: {name}(module) raised {type(err).__name__}: {err}") from None
        return module.eval()

    return run


def resolve(ref: str, data: HeldOut | None, spec: ExportSpec) -> Finetune | None:
    """The ``--finetune`` flag's value as a function (None when not given)."""
    if not ref:
        return None
    if ref != BUILTIN:
        return user_finetune(ref)
    if data is None:
        raise UserInputError("--finetune builtin trains on --eval-data (labelled): give --eval-data, or name "
                             "your own PATH.py:FUNC")
    if len(spec.outputs[0].shape) != 2:
        raise UserInputError(f"--finetune builtin: cross-entropy needs the first output to be (batch, classes) "
                             f"scores, '{spec.outputs[0].name}' is {spec.outputs[0].shape}")
    return builtin_finetune(data, spec)
