"""Pruning: unstructured magnitude (sparsity) and structured channel pruning (smaller net).

Structured pruning uses torch-pruning's dependency graph, so coupled layers (a conv and
its BatchNorm, the next conv's input channels, both sides of a residual add, a flatten
into a linear head) lose the same channels together. The network really shrinks: fewer
channels, fewer parameters, fewer FLOPs. Channels are ranked by the L1 norm of their
group's weights; the output layer keeps all its units. A network that keeps its widths in
a config (saved beside its weights) brings it up to date in an ``after_pruning()`` method,
called once the channels are gone; no network needs code here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PruneSpec:
    ratio: float = 0.5  # fraction of channels (structured) or weights (unstructured) removed
    ignore: tuple[str, ...] = ()  # module names whose outputs are never pruned (besides the last layer)


@dataclass(frozen=True)
class PruneResult:
    module: nn.Module
    params_before: int
    params_after: int  # nonzero parameters for unstructured pruning
    flops_before: int
    flops_after: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.params_after / self.params_before

    @property
    def flops_ratio(self) -> float:
        return self.flops_before / max(1, self.flops_after)


def count_flops(module: nn.Module, example: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass at the example's batch (2 per multiply-add), per torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(*example)
    return int(counter.get_total_flops())


def count_params(module: nn.Module, nonzero: bool = False) -> int:
    return int(sum((p != 0).sum().item() if nonzero else p.numel() for p in module.parameters()))


def prune_structured(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    spec: PruneSpec = PruneSpec(),
    finetune: Callable[[nn.Module], nn.Module] | None = None,
) -> PruneResult:
    """Remove ``spec.ratio`` of the channels of every prunable layer, then ``finetune`` the
    smaller network with the model's own recipe; returns a new module (the input is untouched)."""
    import torch_pruning as tp

    pruned = copy.deepcopy(module).eval()
    one = tuple(x[:1] for x in example)
    before_p, before_f = count_params(pruned), count_flops(pruned, one)
    ignored = [m for name, m in pruned.named_modules() if name in spec.ignore] + _output_layer(pruned)
    pruner = tp.pruner.MetaPruner(
        pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=spec.ratio, ignored_layers=ignored, round_to=None,
    )
    pruner.step()
    after = getattr(pruned, "after_pruning", None)
    if callable(after):  # the model's own hook: e.g. bring a saved config in step with its new widths
        after()
    if finetune is not None:
        finetune(pruned)
    pruned.eval()
    return PruneResult(pruned, before_p, count_params(pruned), before_f, count_flops(pruned, one))


def _output_layer(module: nn.Module) -> list[nn.Module]:
    """The last conv/linear layer: it produces the outputs (classes), whose count must not change."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    return layers[-1:]


def prune_unstructured(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    spec: PruneSpec = PruneSpec(),
    finetune: Callable[[nn.Module], nn.Module] | None = None,
) -> PruneResult:
    """Zero the ``spec.ratio`` smallest-magnitude weights (global, conv and linear); shapes unchanged.

    ``finetune`` runs while the masks are attached, so pruned weights stay zero.
    """
    from torch.nn.utils import prune

    pruned = copy.deepcopy(module).eval()
    one = tuple(x[:1] for x in example)
    before_p, flops = count_params(pruned), count_flops(pruned, one)
    last = _output_layer(pruned)
    targets = [(m, "weight") for name, m in pruned.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d)) and name not in spec.ignore and m not in last]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=spec.ratio)
    if finetune is not None:
        finetune(pruned)
    for m, name in targets:
        prune.remove(m, name)  # make the zeros permanent (plain weights, no masks)
    # Dense kernels do the same work on zeros: FLOPs unchanged, sparsity is what is reported.
    return PruneResult(pruned.eval(), before_p, count_params(pruned, nonzero=True), flops, flops)
