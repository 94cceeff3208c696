"""Lossy variants of the shapes detector are judged by detection quality (mAP@0.5), not top-1."""

from __future__ import annotations

import numpy as np
import pytest

from export.families import get_family, shapes_metric
from export.onnx import export_onnx, ort_runner
from export.parity import ParityError, check_metric

SCENES = 40  # a small held-out subset keeps this module fast


@pytest.fixture(scope="module")
def shapes():
    family = get_family("shapes")
    module = family.build(None)
    return family, module, ort_runner(export_onnx(module, family.spec), family.spec), shapes_metric(SCENES)


def test_the_family_declares_a_detection_metric_with_a_bar_that_can_fail() -> None:
    family = get_family("shapes")
    assert family.metric is not None and family.metric.name == "mAP@0.5" and family.metric.agreement is not None
    assert family.metric.samples >= 100
    assert 0.0 < family.spec.metric_tolerance("int8-static").max_metric_drop <= 0.05


def test_fp32_export_passes_the_metric_check(shapes) -> None:
    family, module, run, metric = shapes
    report = check_metric("int8-static", module, run, family.spec, task=metric)
    assert report.passed and report.kind == "metric" and report.n_inputs == SCENES
    assert report.metric > 0.8 and abs(report.metric - report.reference_metric) < 1e-3
    assert report.top1_agreement > 0.99  # box agreement with fp32's own detections
    assert "mAP@0.5" in report.summary() and "box agreement" in report.summary()


def test_a_broken_detector_fails_with_the_numbers(shapes) -> None:
    family, module, run, metric = shapes

    def heatmap_zeroed(feed):
        heatmap, *rest = run(feed)
        return [np.zeros_like(heatmap), *rest]

    with pytest.raises(ParityError, match=r"FAIL .*mAP@0\.5 0\.\d+ vs fp32 0\.\d+.*box agreement") as err:
        check_metric("int8-static", module, heatmap_zeroed, family.spec, task=metric)
    assert err.value.report.metric < 0.1 and err.value.report.reference_metric > 0.8
