"""Structured (channels) and unstructured (magnitude) pruning of the default classifier."""

from __future__ import annotations

import pytest
import torch

from export.families import get_family
from export.prune import PruneSpec, count_params, prune_structured, prune_unstructured
from export.variants import VariantBuilder
from models import digits_cnn
from models.bench import resnet_bench


@pytest.fixture(scope="module")
def digits() -> VariantBuilder:
    return VariantBuilder(get_family("digits"))


def test_structured_pruning_shrinks_and_keeps_accuracy(digits, tmp_path) -> None:
    art = digits.build("pruned50")
    base = digits.build("fp32")
    assert art.parity.passed
    assert art.parity.reference_metric - art.parity.metric <= 0.015  # <= 1.5 points after the fine-tune
    assert base.flops / art.flops >= 1.5
    assert art.params < 0.5 * base.params and art.size_bytes < base.size_bytes / 2
    # The pruned network is a smaller DigitsCNN: it saves and loads like the shipped one.
    assert art.module.config.channels == (16, 32, 64)
    digits_cnn.save(art.module, tmp_path / "pruned.safetensors")
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(digits_cnn.load(tmp_path / "pruned.safetensors")(x), art.module(x))


def test_structured_pruning_follows_residual_dependencies() -> None:
    model = resnet_bench()
    example = (torch.rand(2, 3, 64, 64),)
    result = prune_structured(model, example, PruneSpec(ratio=0.5))
    assert result.module(example[0]).shape == (2, 10)
    assert result.flops_ratio >= 3.0 and result.params_after < result.params_before / 3
    assert count_params(model) == result.params_before  # the input network is untouched


def test_unstructured_pruning_reports_sparsity(digits) -> None:
    result = prune_unstructured(digits.module, digits.spec.example_inputs(), PruneSpec(ratio=0.5))
    assert 0.45 <= result.sparsity <= 0.5  # BN and bias parameters are not pruned
    assert result.flops_after == result.flops_before
    head = result.module.head.weight
    assert (head != 0).all()  # the output layer is left alone


def test_the_output_layer_keeps_its_units() -> None:
    from models.bench import mlp_tiny

    result = prune_structured(mlp_tiny(), (torch.rand(2, 64),), PruneSpec(ratio=0.5))
    assert result.module(torch.rand(3, 64)).shape == (3, 10)
    assert result.flops_ratio >= 2.0
