"""Model kinds through a real server and real clients: ensembles of Python models and
the digits CNN, decoupled streaming (gRPC and SSE), Python models, the torch runtime."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.spec import ELEMENTWISE_TOLERANCES
from tests.integration import server_fixtures as fx
from tests.integration.kinds_fixtures import build_kinds_repository, digit_pngs, pixels_from_png, png

STATS_WAIT_S = 20.0  # upper bound while waiting for the server to record a cancellation


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[fx.ServerHandle]:
    repo = build_kinds_repository(tmp_path_factory.mktemp("kinds"))
    with fx.running_server(repo, wait_for="live") as handle:
        yield handle


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def images(digits) -> tuple[np.ndarray, np.ndarray]:
    """64 held-out digits as PNG bytes, shape (64, 1), and their labels."""
    x, y = digits
    return np.array(digit_pngs(x[:64]), dtype=object).reshape(-1, 1), y[:64]


def bytes_input(module, name: str, array: np.ndarray, binary: bool = True):
    tensor = module.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, **({"binary_data": binary} if module is httpclient else {}))
    return tensor


def direct_argmax(http, pngs: np.ndarray) -> np.ndarray:
    """The digits network called directly on the pixels the pipeline decodes."""
    pixels = np.stack([pixels_from_png(data) for data in pngs.reshape(-1)])
    tensor = httpclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    return http.infer("digits", [tensor]).as_numpy("logits").argmax(axis=1)


# ---- ensembles ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_pipeline_turns_pngs_into_the_right_labels(request, images, protocol):
    pngs, y = images
    client = request.getfixturevalue(protocol)
    module = httpclient if protocol == "http" else grpcclient
    result = client.infer("digits_pipeline", [bytes_input(module, "IMAGE", pngs)])
    labels, scores, size = result.as_numpy("LABELS"), result.as_numpy("SCORES"), result.as_numpy("SIZE")
    top1 = np.array([int(row[0]) for row in labels])
    assert labels.shape == (64, 3) and scores.shape == (64, 3)
    assert (top1 == direct_argmax(request.getfixturevalue("http"), pngs)).all()
    assert (top1 == y).mean() >= 0.97
    assert (np.diff(scores, axis=1) <= 0).all() and (scores.sum(axis=1) <= 1.0 + 1e-5).all()
    assert (size == [8, 8]).all()  # the fan-out branch saw the same bytes


def test_a_failing_step_names_itself_and_keeps_its_status(http, grpc):
    junk = np.array([[b"not an image"]], dtype=object)
    with pytest.raises(InferenceServerException) as info:
        http.infer("digits_pipeline", [bytes_input(httpclient, "IMAGE", junk)])
    assert info.value.status() == "400"
    assert "ensemble 'digits_pipeline' step '" in info.value.message() and "cannot be decoded" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        grpc.infer("digits_pipeline", [bytes_input(grpcclient, "IMAGE", junk)])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "step '" in info.value.message()


def test_a_bad_image_fails_only_its_own_request(http, images):
    pngs, _ = images
    bodies = [pngs[i : i + 1] for i in range(12)]
    bodies[5] = np.array([[b"\x89PNG broken"]], dtype=object)
    pending = [http.async_infer("digits_preprocess", [bytes_input(httpclient, "IMAGE", b)]) for b in bodies]
    outcomes = []
    for item in pending:
        try:
            outcomes.append(item.get_result().as_numpy("PIXELS").shape)
        except InferenceServerException as exc:
            outcomes.append(exc.status())
    assert outcomes[5] == "400" and outcomes[:5] + outcomes[6:] == [(1, 1, 8, 8)] * 11


def test_ensemble_and_step_statistics_and_metrics(http, server, images):
    pngs, _ = images
    before = {m: http.get_inference_statistics(m)["model_stats"][0] for m in ("digits_pipeline", "digits")}
    http.infer("digits_pipeline", [bytes_input(httpclient, "IMAGE", pngs[:4])])
    after = {m: http.get_inference_statistics(m)["model_stats"][0] for m in ("digits_pipeline", "digits")}
    ok = lambda s: s["inference_stats"]["success"]["count"]
    assert ok(after["digits_pipeline"]) == ok(before["digits_pipeline"]) + 1
    assert after["digits"]["inference_count"] == before["digits"]["inference_count"] + 4  # the step counts too
    text = httpx.get(f"http://{server.http_url}/metrics").text
    for step in ("digits_preprocess", "digits", "digits_topk", "image_size"):
        assert f'deepserve_ensemble_step_duration_seconds_count{{model="digits_pipeline",step="{step}",version="1"}}' in text


def index_of(http) -> dict[str, dict]:
    return {row["name"]: row for row in http.get_model_repository_index()}


def test_unloading_a_step_makes_its_ensemble_unavailable_until_it_is_back(http):
    image = np.array([[png(np.eye(8))]], dtype=object)
    assert http.infer("size_pipeline", [bytes_input(httpclient, "IMAGE", image)]).as_numpy("SIZE").tolist() == [[8, 8]]
    http.unload_model("image_size_b")
    row = index_of(http)["size_pipeline"]
    assert row["state"] == "UNAVAILABLE" and "image_size_b" in row["reason"]
    assert not http.is_model_ready("size_pipeline")
    with pytest.raises(InferenceServerException) as info:
        http.infer("size_pipeline", [bytes_input(httpclient, "IMAGE", image)])
    assert info.value.status() == "503" and "image_size_b" in info.value.message()
    http.load_model("image_size_b")
    assert http.is_model_ready("size_pipeline") and index_of(http)["size_pipeline"]["state"] == "READY"


def test_every_request_is_answered_once_while_a_step_is_unloaded_and_loaded(server, http):
    image = np.array([[png(np.eye(8))]], dtype=object)
    answers: queue.Queue = queue.Queue()
    stop = threading.Event()
    sent = [0] * 4

    def traffic(worker: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            while not stop.is_set() and sent[worker] < 150:
                sent[worker] += 1
                try:
                    size = client.infer("size_pipeline", [bytes_input(httpclient, "IMAGE", image)]).as_numpy("SIZE")
                    answers.put("ok" if size.tolist() == [[8, 8]] else f"wrong {size}")
                except InferenceServerException as exc:
                    answers.put(exc.status())
        finally:
            client.close()

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(3):
        http.unload_model("image_size_b")
        http.load_model("image_size_b")
    stop.set()
    for t in threads:
        t.join(60)
    got = [answers.get_nowait() for _ in range(answers.qsize())]
    assert len(got) == sum(sent) and sum(sent) > 0
    assert set(got) <= {"ok", "503"}, set(got)
    assert http.is_model_ready("size_pipeline")


def test_unload_dependents_unloads_the_steps_and_load_brings_them_back(http):
    http.unload_model("size_pipeline", unload_dependents=True)
    rows = index_of(http)
    assert rows["size_pipeline"]["reason"] == "unloaded" and rows["image_size_b"]["reason"] == "unloaded"
    assert rows["image_size"]["state"] == "READY"  # a step of another ensemble is kept
    http.load_model("size_pipeline")  # loading follows dependencies
    assert http.is_model_ready("image_size_b") and http.is_model_ready("size_pipeline")


# ---- Python models ----------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "binary"), [("http", False), ("http", True), ("grpc", True)])
def test_python_model_takes_bytes_over_every_encoding(request, protocol, binary):
    client = request.getfixturevalue(protocol)
    module = httpclient if protocol == "http" else grpcclient
    text = np.array([[b"hello"], [b"deep serve"]], dtype=object)
    result = client.infer("shout", [bytes_input(module, "TEXT", text, binary)])
    assert result.as_numpy("LOUD").tolist() == [[b"HELLO!"], [b"DEEP SERVE!"]]


def test_broken_python_models_are_unavailable_with_the_last_traceback_line(http):
    rows = index_of(http)
    assert rows["broken_import"]["state"] == "UNAVAILABLE"
    assert rows["broken_import"]["reason"].endswith("ModuleNotFoundError: No module named 'deepserve_no_such_module'")
    assert rows["broken_setup"]["reason"].endswith("ValueError: bad parameter k")
    assert rows["shout"]["state"] == "READY"


# ---- decoupled: streaming ----------------------------------------------------------------


def repeat_inputs(module, value: int, count: int, delay_ms: int) -> list:
    tensors = []
    for name, v in (("IN", value), ("REPEAT", count), ("DELAY_MS", delay_ms)):
        tensor = module.InferInput(name, [1], "INT32")
        tensor.set_data_from_numpy(np.array([v], np.int32))
        tensors.append(tensor)
    return tensors


def test_repeat_streams_each_response_in_order_over_grpc(grpc):
    results: queue.Queue = queue.Queue()
    grpc.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        grpc.async_stream_infer("repeat", repeat_inputs(grpcclient, 7, 5, 5), request_id="r1", enable_empty_final_response=True)
        answers = [results.get(timeout=30) for _ in range(6)]
    finally:
        grpc.stop_stream()
    assert all(error is None for _, error in answers)
    final = [r.get_response().parameters["triton_final_response"].bool_param for r, _ in answers]
    assert final == [False] * 5 + [True]
    assert [int(r.as_numpy("IDX")[0]) for r, _ in answers[:5]] == [0, 1, 2, 3, 4]
    assert {int(r.as_numpy("OUT")[0]) for r, _ in answers[:5]} == {7}
    assert not answers[5][0].get_response().outputs and answers[5][0].get_response().id == "r1"


def test_a_long_stream_does_not_hold_back_later_requests_on_the_same_grpc_stream(grpc):
    results: queue.Queue = queue.Queue()
    grpc.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        grpc.async_stream_infer("repeat", repeat_inputs(grpcclient, 1, 30, 20), request_id="long")
        text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"quick"]], dtype=object))
        grpc.async_stream_infer("shout", [text], request_id="quick")
        ids = [results.get(timeout=30)[0].get_response().id for _ in range(31)]
    finally:
        grpc.stop_stream()
    assert ids.count("long") == 30 and ids.index("quick") < 29  # answered while "long" was still streaming


def sse_events(response: httpx.Response) -> Iterator[dict]:
    import json

    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])


def test_repeat_streams_over_generate_stream_and_generate_answers_once(server):
    with httpx.stream("POST", f"http://{server.http_url}/v2/models/repeat/generate_stream",
                      json={"IN": 3, "REPEAT": 4, "DELAY_MS": 5}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    assert [e["IDX"] for e in events] == [0, 1, 2, 3] and {e["OUT"] for e in events} == {3}
    one = httpx.post(f"http://{server.http_url}/v2/models/repeat/generate", json={"IN": 9, "REPEAT": 1, "DELAY_MS": 0})
    assert one.status_code == 200 and one.json() == {"model_name": "repeat", "model_version": "1", "OUT": 9, "IDX": 0}
    many = httpx.post(f"http://{server.http_url}/v2/models/repeat/generate", json={"IN": 9, "REPEAT": 2, "DELAY_MS": 0})
    assert many.status_code == 400 and "generate_stream" in many.json()["error"]


def test_generate_works_for_models_that_are_not_decoupled(server, digits):
    x, y = digits
    response = httpx.post(f"http://{server.http_url}/v2/models/digits/generate", json={"input": x[0].tolist()})
    assert response.status_code == 200 and int(np.argmax(response.json()["logits"])) == y[0]
    shout = httpx.post(f"http://{server.http_url}/v2/models/shout/generate_stream", json={"TEXT": "hi"})
    assert list(sse_events(shout)) == [{"model_name": "shout", "model_version": "1", "LOUD": "HI!"}]
    bad = httpx.post(f"http://{server.http_url}/v2/models/shout/generate_stream", json={"NOPE": "hi"})
    assert bad.status_code == 400 and "TEXT" in bad.json()["error"]


def test_infer_on_a_decoupled_model_is_a_400_that_says_to_stream(http):
    with pytest.raises(InferenceServerException) as info:
        http.infer("repeat", repeat_inputs(httpclient, 1, 1, 0))
    assert info.value.status() == "400" and "generate_stream" in info.value.message()


def cancelled_streams(http) -> tuple[int, int]:
    """(responses cancelled, highest response index produced) of the repeat model."""
    stats = http.get_inference_statistics("repeat")["model_stats"][0]["response_stats"]
    return sum(s["cancel"]["count"] for s in stats.values()), max((int(i) for i in stats), default=-1)


def wait_for_cancel(http, before: int) -> int:
    deadline = time.monotonic() + STATS_WAIT_S
    while time.monotonic() < deadline:
        cancelled, highest = cancelled_streams(http)
        if cancelled > before:
            return highest
        time.sleep(0.05)
    raise AssertionError("the server never recorded the cancelled stream")


def test_a_client_that_leaves_an_sse_stream_stops_the_producer(server, http):
    before, _ = cancelled_streams(http)
    with httpx.stream("POST", f"http://{server.http_url}/v2/models/repeat/generate_stream",
                      json={"IN": 1, "REPEAT": 400, "DELAY_MS": 20}, timeout=30) as response:
        events = sse_events(response)
        assert [next(events)["IDX"] for _ in range(3)] == [0, 1, 2]
    assert wait_for_cancel(http, before) < 399  # it stopped long before its 400th response
    # the one instance is free again
    one = httpx.post(f"http://{server.http_url}/v2/models/repeat/generate", json={"IN": 2, "REPEAT": 1, "DELAY_MS": 0})
    assert one.json()["OUT"] == 2


def test_a_cancelled_grpc_stream_stops_the_producer(grpc, http):
    before, _ = cancelled_streams(http)
    results: queue.Queue = queue.Queue()
    grpc.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        grpc.async_stream_infer("repeat", repeat_inputs(grpcclient, 5, 400, 20))
        assert [int(results.get(timeout=30)[0].as_numpy("IDX")[0]) for _ in range(3)] == [0, 1, 2]
    finally:
        grpc.stop_stream(cancel_requests=True)
    assert wait_for_cancel(http, before) < 399


# ---- the torch runtime --------------------------------------------------------------------


def test_torch_program_answers_as_the_onnx_export(grpc, digits):
    x, y = digits
    x = np.ascontiguousarray(x[:64])
    metadata = grpc.get_model_metadata("digits_pt2", as_json=True)
    assert metadata["platform"] == "pytorch_libtorch" and metadata["inputs"][0]["shape"] == ["-1", "1", "8", "8"]
    outputs = {}
    for model, (inp, out) in {"digits": ("input", "logits"), "digits_pt2": ("x", "output")}.items():
        tensor = grpcclient.InferInput(inp, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        outputs[model] = grpc.infer(model, [tensor]).as_numpy(out)
    tolerance = ELEMENTWISE_TOLERANCES["fp32"]
    np.testing.assert_allclose(outputs["digits_pt2"], outputs["digits"], atol=tolerance.atol, rtol=tolerance.rtol)
    assert (outputs["digits_pt2"].argmax(axis=1) == outputs["digits"].argmax(axis=1)).all()
    assert (outputs["digits_pt2"].argmax(axis=1) == y[:64]).mean() >= 0.97
