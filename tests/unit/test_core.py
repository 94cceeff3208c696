"""Core: datatypes, request validation, classification, config auto-complete."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from server.core import datatypes as dt
from server.core.errors import InvalidInput
from server.core.types import InferenceRequest, RequestedOutput, TensorSpec
from server.core.validation import check_request, classify
from server.repository.config import complete_config, config_to_json
from server.runtimes import KINDS
from server.runtimes.base import Signature
from server.scheduling.policy import TimeoutAction, batch_policy_from_config


def test_bytes_round_trip_and_truncation():
    array = np.array([b"a", b"", "é".encode()], dtype=object)
    assert list(dt.deserialize_bytes(dt.serialize_bytes(array), 3)) == list(array)
    with pytest.raises(InvalidInput, match="truncated"):
        dt.deserialize_bytes(b"\x05\0\0\0ab")
    with pytest.raises(InvalidInput, match="holds 1"):
        dt.deserialize_bytes(dt.serialize_bytes(array[:1]), 2)


def test_datatype_names():
    assert dt.config_to_wire("TYPE_STRING") == "BYTES" and dt.wire_to_config("FP16") == "TYPE_FP16"
    assert dt.datatype_of(np.zeros(1, np.uint16)) == "UINT16" and dt.element_size("FP64") == 8


SPECS = {"x": TensorSpec("x", "FP32", (-1, 3))}
OUT = (TensorSpec("y", "FP32", (-1, 2)),)


def req(array, **kw) -> InferenceRequest:
    return InferenceRequest("m", {"x": array}, **kw)


def test_check_request_counts_rows_and_refuses_what_does_not_fit():
    assert check_request(req(np.zeros((5, 3), np.float32)), SPECS, OUT, 8) == 5
    with pytest.raises(InvalidInput, match="max_batch_size"):
        check_request(req(np.zeros((9, 3), np.float32)), SPECS, OUT, 8)
    with pytest.raises(InvalidInput, match=r"expects \[-1,3\]"):
        check_request(req(np.zeros((1, 4), np.float32)), SPECS, OUT, 8)
    with pytest.raises(InvalidInput, match="dtype"):
        check_request(req(np.zeros((1, 3), np.int32)), SPECS, OUT, 8)
    with pytest.raises(InvalidInput, match="unknown output"):
        check_request(req(np.zeros((1, 3), np.float32), outputs=[RequestedOutput("z")]), SPECS, OUT, 8)
    with pytest.raises(InvalidInput, match="batch size 0"):
        check_request(req(np.zeros((0, 3), np.float32)), SPECS, OUT, 8)


def test_classify_top_k_with_labels():
    out = classify(np.array([[0.1, 0.7, 0.2]], np.float32), 2, ["a", "b", "c"], batched=True)
    assert out.shape == (1, 2) and out[0, 0] == b"0.700000:1:b" and out[0, 1] == b"0.200000:2:c"
    assert classify(np.array([3.0, 1.0]), 1, None, batched=False).tolist() == [b"3.000000:0"]


def test_auto_complete_from_the_file_signature():
    signature = Signature((TensorSpec("in", "FP32", (-1, 4)),), (TensorSpec("out", "INT64", (-1,)),))
    config = complete_config(mc.ModelConfig(), "m", KINDS[0], signature, default_max_batch_size=4)
    assert config.name == "m" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert list(config.input[0].dims) == [4] and config.HasField("dynamic_batching")
    assert config_to_json(config)["input"][0]["dims"] == [4]  # int64 as JSON numbers


def test_config_naming_a_tensor_the_file_lacks_is_refused():
    signature = Signature((TensorSpec("in", "FP32", (-1, 4)),), (TensorSpec("out", "FP32", (-1, 4)),))
    config = text_format.Parse('input [{ name: "other" data_type: TYPE_FP32 dims: [4] }]', mc.ModelConfig())
    with pytest.raises(InvalidInput, match="other"):
        complete_config(config, "m", KINDS[0], signature, 4)


def test_batch_policy_from_dynamic_batching_block():
    config = text_format.Parse(
        """max_batch_size: 16 dynamic_batching { preferred_batch_size: [4, 32] max_queue_delay_microseconds: 100
           priority_levels: 3 default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5 max_queue_size: 7 }
           priority_queue_policy { key: 1 value: { max_queue_size: 2 } } }""",
        mc.ModelConfig(),
    )
    policy = batch_policy_from_config(config, default_max_queue_size=1024)
    assert policy.batching and policy.preferred_batch_sizes == (4,)  # 32 > max_batch_size is dropped
    assert policy.priority_levels == 3 and policy.default_priority_level == 3
    assert policy.default_queue_policy.timeout_action is TimeoutAction.DELAY
    assert policy.default_queue_policy.max_queue_size == 7 and policy.queue_policy(1).max_queue_size == 2
    no_block = batch_policy_from_config(mc.ModelConfig(max_batch_size=8), 1024)
    assert not no_block.batching and no_block.default_queue_policy.max_queue_size == 1024


def test_text_inputs_must_be_utf8_before_queueing():
    from server.core.validation import check_utf8

    good = InferenceRequest("m", {"t": np.array([b"caf\xc3\xa9"], dtype=object)})
    check_utf8(good, frozenset({"t"}))
    bad = InferenceRequest("m", {"t": np.array([b"\xff"], dtype=object)})
    check_utf8(bad, frozenset())  # not a text input: any bytes go
    with pytest.raises(InvalidInput, match="UTF-8"):
        check_utf8(bad, frozenset({"t"}))
