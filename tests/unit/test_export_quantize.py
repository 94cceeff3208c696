"""INT8 (static QDQ, dynamic) and FP16 variants of the default classifier, with their parity checks."""

from __future__ import annotations

import onnx
import pytest

from export.families import get_family
from export.parity import ParityError
from export.quantize import QuantSpec, quantize_static_qdq
from export.spec import MetricTolerance
from export.variants import VariantBuilder


@pytest.fixture(scope="module")
def digits() -> VariantBuilder:
    return VariantBuilder(get_family("digits"))


def test_int8_static_meets_the_bars(digits) -> None:
    fp32, int8 = digits.build("fp32"), digits.build("int8-static")
    report = int8.parity
    assert report.passed and report.kind == "metric"
    assert report.reference_metric - report.metric <= 0.01  # <= 1 accuracy point lost
    assert report.top1_agreement >= 0.97
    assert fp32.size_bytes / int8.size_bytes >= 3.5
    ops = {n.op_type for n in int8.onnx_model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(digits, method) -> None:
    family = digits.family
    model = quantize_static_qdq(digits.fp32, family.calibration_samples(), QuantSpec(calibration=method))
    onnx.checker.check_model(model)


def test_unknown_calibration_method_is_refused(digits) -> None:
    with pytest.raises(ValueError, match="calibration must be one of"):
        quantize_static_qdq(digits.fp32, digits.family.calibration_samples(), QuantSpec(calibration="magic"))


def test_fp16_keeps_float32_io_and_passes_elementwise(digits) -> None:
    art = digits.build("fp16")
    elem = {v.name: v.type.tensor_type.elem_type for v in (*art.onnx_model.graph.input, *art.onnx_model.graph.output)}
    assert elem == {"input": onnx.TensorProto.FLOAT, "logits": onnx.TensorProto.FLOAT}
    assert art.parity.kind == "elementwise" and art.parity.passed and art.parity.max_abs_err > 0
    inits = [i for i in art.onnx_model.graph.initializer if i.dims]
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in inits if len(i.dims) > 1)


def test_int8_dynamic(digits) -> None:
    art = digits.build("int8-dynamic")
    assert art.parity.passed and art.parity.reference_metric - art.parity.metric <= 0.01


def test_int8_over_the_bar_is_not_built(digits) -> None:
    """An impossible bar (top-1 agreement > 1) fails with the numbers in the message."""
    spec = digits.spec
    strict = VariantBuilder.__new__(VariantBuilder)
    strict.__dict__.update(digits.__dict__)
    strict.spec = type(spec)(spec.inputs, spec.outputs, metric_tolerances={"int8-static": MetricTolerance(0.0, 1.01)})
    with pytest.raises(ParityError, match=r"FAIL .*accuracy 0\.\d+ vs fp32 0\.\d+.*top-1 agreement"):
        strict.build("int8-static")


def test_calibration_samples_are_real_training_images(digits) -> None:
    from models.digits_data import load_split

    samples = digits.family.calibration_samples()["input"]
    train = {x.tobytes() for x in load_split().x_train}
    assert samples.shape == (256, 1, 8, 8)
    assert all(x.tobytes() in train for x in samples)
