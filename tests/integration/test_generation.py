"""Text generation end to end: a real server on loopback serving Hugging Face checkpoints
(tiny ``gpt2`` and ``llama`` written by the test, random weights; the shipped ``textgen``),
called with the ``openai`` SDK, raw HTTP (OpenAI and Triton's generate routes) and
``tritonclient`` gRPC. ``transformers`` is the reference (full recompute, no KV cache)."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import numpy as np
import openai
import pytest

from tests.integration import server_fixtures as fx
from tests.integration.generation_fixtures import TEXTGEN, build_generation_repository, reference

pytest.importorskip("transformers")

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer", "minimum": 0, "maximum": 99},
                   "color": {"enum": ["red", "green", "blue"]}},
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = build_generation_repository(tmp_path_factory.mktemp("generation-repo"))
    with fx.running_server(repo, timeout_s=180) as handle:
        yield handle
        assert "Traceback" not in handle.log(), handle.log()[-4000:]


@pytest.fixture(scope="module")
def url(server) -> str:
    return f"http://{server.http_url}"


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def generate(url: str, model: str, body: dict) -> dict:
    response = httpx.post(f"{url}/v2/models/{model}/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def metric(url: str, name: str, model: str) -> float:
    pattern = re.compile(rf'^{re.escape(name)}\{{[^}}]*model(?:_name)?="{model}"[^}}]*\}} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(metrics(url)))


def reference_greedy(folder, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their logprobs by full recompute of every prefix (no KV cache)."""
    import torch

    model = reference(folder)
    ids, tokens, logprobs = list(prompt), [], []
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1].double()
            lp = torch.log_softmax(logits, -1)
            token = int(torch.argmax(lp))
            tokens.append(token)
            logprobs.append(float(lp[token]))
            ids.append(token)
    return tokens, logprobs


# -- correctness ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_llama", "textgen"])
def test_greedy_tokens_and_logprobs_equal_a_full_recompute_in_transformers(server, url, model):
    folder = server.repository / model / "1"
    if not folder.is_dir():
        pytest.fail(f"{TEXTGEN} is missing: the default model's weights must ship")
    prompt = [5, 17, 42, 99, 7, 63, 120, 3, 11]  # 9 tokens: the KV cache crosses block boundaries while decoding
    steps = 40
    body = generate(url, model, {"input_ids": prompt, "max_tokens": steps,
                                 "parameters": {"temperature": 0, "logprobs": True, "ignore_eos": True}})
    want_tokens, want_logprobs = reference_greedy(folder, prompt, steps)
    assert body["token_ids"] == want_tokens
    np.testing.assert_allclose(body["logprobs"], want_logprobs, atol=2e-4)
    assert body["finish_reason"] == "length" and body["completion_tokens"] == steps


def test_a_seeded_sample_is_the_same_alone_and_among_15_others(client):
    def complete(prompt: str, seed: int) -> str:
        return client.completions.create(model="textgen", prompt=prompt, max_tokens=24, temperature=1.0, seed=seed,
                                         extra_body={"ignore_eos": True}).choices[0].text

    alone = complete("Return the number of items", 1234)
    others = [(f"Open the file number {i} and", i) for i in range(15)]
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(complete, p, s) for p, s in others]
        together = pool.submit(complete, "Return the number of items", 1234)
        texts = [f.result() for f in futures]
    assert together.result() == alone
    assert len(set(texts)) > 1  # the others really sampled


def test_json_schema_output_validates_from_a_model_that_never_writes_json(client):
    for seed in range(4):
        reply = client.chat.completions.create(
            model="tiny_gpt2", messages=[{"role": "user", "content": "Who are you?"}], max_tokens=80, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    free = client.chat.completions.create(model="tiny_gpt2", messages=[{"role": "user", "content": "Who are you?"}],
                                          max_tokens=30, seed=0)
    with pytest.raises(ValueError):
        json.loads(free.choices[0].message.content)


# -- the OpenAI SDK ---------------------------------------------------------------------------
def test_sdk_chat_and_completions_streaming_and_not(client, url):
    messages = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a list method."}]
    whole = client.chat.completions.create(model="textgen", messages=messages, max_tokens=20, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert 0 < whole.usage.completion_tokens <= 20
    chunks = list(client.chat.completions.create(model="textgen", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens

    completion = client.completions.create(model="textgen", prompt="def read(path):", max_tokens=12, temperature=0,
                                           logprobs=2)
    assert len(completion.choices[0].logprobs.tokens) == completion.usage.completion_tokens
    assert all(len(top) == 2 for top in completion.choices[0].logprobs.top_logprobs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="textgen", prompt="def read(path):", max_tokens=12, temperature=0, stream=True))
    assert streamed == completion.choices[0].text

    async def async_stream() -> str:
        async_client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = await async_client.chat.completions.create(model="textgen", messages=messages, max_tokens=20,
                                                            temperature=0, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await async_client.close()
        return "".join(parts)

    assert asyncio.run(async_stream()) == whole.choices[0].message.content


def test_n_choices_stop_strings_and_the_llama_chat_template(client):
    reply = client.completions.create(model="textgen", prompt="The file", max_tokens=10, n=3, seed=5, temperature=1.0)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert len({c.text for c in reply.choices}) > 1 and reply.usage.completion_tokens <= 30
    full = client.completions.create(model="tiny_gpt2", prompt="Hello", max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[5:7]
    cut = client.completions.create(model="tiny_gpt2", prompt="Hello", max_tokens=30, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)]
    chat = client.chat.completions.create(model="tiny_llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.usage.prompt_tokens > 4  # the checkpoint's own template wrapped the message


def test_32_concurrent_streams_all_complete(client):
    def stream(i: int) -> tuple[str | None, str]:
        parts, reason = [], None
        for chunk in client.chat.completions.create(model="textgen", messages=[{"role": "user", "content": f"item {i}"}],
                                                    max_tokens=16, seed=i, stream=True):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                reason = chunk.choices[0].finish_reason or reason
        return reason, "".join(parts)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(stream, range(32)))
    assert all(reason in ("stop", "length") for reason, _ in results)


def test_a_shared_system_prompt_hits_the_prefix_cache(client, url):
    system = {"role": "system", "content": "You are a helpful assistant for the Python standard library. " * 4}
    before = metric(url, "deepserve_generation_prefix_cache_hits_total", "textgen")
    first = client.chat.completions.create(model="textgen", messages=[system, {"role": "user", "content": "os"}],
                                           max_tokens=2)
    second = client.chat.completions.create(model="textgen", messages=[system, {"role": "user", "content": "sys"}],
                                            max_tokens=2)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 32 and cached < second.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < cached
    assert metric(url, "deepserve_generation_prefix_cache_hits_total", "textgen") - before >= cached


def test_a_cancelled_stream_frees_its_blocks(url):
    body = {"model": "tiny_gpt2", "prompt": "Hello", "max_tokens": 100, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert metric(url, "vllm:kv_cache_usage_perc", "tiny_gpt2") > 0
    deadline = time.monotonic() + 30
    while metric(url, "deepserve_generation_kv_cache_usage_ratio", "tiny_gpt2") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(url, "deepserve_generation_kv_cache_usage_ratio", "tiny_gpt2") == 0
    assert metric(url, "vllm:num_requests_running", "tiny_gpt2") == 0


def test_sequences_preempted_for_memory_are_recomputed_to_the_same_tokens(url):
    """Three greedy sequences of 2 + 30 tokens need 4 blocks each; the cache has 6 (5 usable): they preempt
    each other, and each still yields what it yields alone."""
    prompts = [[5, 17], [42, 99], [7, 63]]

    def run(prompt: list[int]) -> list[int]:
        return generate(url, "tiny_tight", {"input_ids": prompt, "max_tokens": 30,
                                            "parameters": {"temperature": 0, "ignore_eos": True}})["token_ids"]

    alone = [run(p) for p in prompts]
    before = metric(url, "deepserve_generation_preemptions_total", "tiny_tight")
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(run, prompts))
    assert together == alone
    assert metric(url, "deepserve_generation_preemptions_total", "tiny_tight") > before


def test_a_better_priority_preempts_a_full_batch(url):
    """tiny_small runs one sequence at a time: a priority-0 request arriving while a priority-5 one runs
    takes its place at once, and the preempted one still finishes, recomputed."""
    before = metric(url, "deepserve_generation_preemptions_total", "tiny_small")
    low = {"model": "tiny_small", "prompt": "Hello", "max_tokens": 80, "stream": True, "ignore_eos": True,
           "temperature": 0, "priority": 5}
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/v1/completions", json=low) as response:
        events = (line for line in response.iter_lines() if line.startswith("data: "))
        next(events)  # the low-priority sequence is running
        urgent = http.post(f"{url}/v1/completions", json={"model": "tiny_small", "prompt": "Hi", "max_tokens": 3,
                                                           "priority": 0, "ignore_eos": True, "temperature": 0})
        assert urgent.status_code == 200 and urgent.json()["choices"][0]["finish_reason"] == "length"
        rest = [json.loads(line[6:]) for line in events if line != "data: [DONE]"]
    assert rest[-1]["choices"][0]["finish_reason"] == "length"
    assert metric(url, "deepserve_generation_preemptions_total", "tiny_small") > before


# -- limits and bad input ---------------------------------------------------------------------
@pytest.mark.parametrize("body, status, words", [
    ({"model": "tiny_gpt2", "prompt": "word " * 200}, 400, "context is 128 tokens"),
    ({"model": "tiny_gpt2", "prompt": "Hello", "max_tokens": 500}, 400, "leaves 126 after the prompt's 2"),
    ({"model": "nope", "prompt": "x"}, 404, "nope"),
    ({"model": "tiny_gpt2", "prompt": 5}, 400, "'prompt'"),
    ({"model": "tiny_gpt2", "prompt": "x", "temperature": 9}, 400, "temperature"),
    ({"model": "tiny_gpt2", "prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}}, 400, "response_format"),
    ({"model": "tiny_gpt2", "prompt": [999999]}, 400, "outside the vocabulary"),
    ({"model": "tiny_gpt2", "prompt": "x", "tools": [{"type": "function"}]}, 400, "tools"),
    ({"model": "tiny_small", "prompt": "Hello", "max_tokens": 100}, 400, "needs 13 KV-cache blocks of 8 tokens"),
])
def test_limits_and_bad_input_in_openai_error_shape(url, body, status, words):
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and {"message", "type", "param", "code"} <= set(error)


def test_a_full_waiting_queue_is_503_with_retry_after(url):
    body = {"model": "tiny_small", "prompt": "Hello", "max_tokens": 60, "ignore_eos": True}
    statuses: queue.Queue = queue.Queue()

    def send() -> None:
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        statuses.put((response.status_code, response.headers.get("retry-after"), response.text))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [statuses.get() for _ in threads]
    refused = [r for r in results if r[0] == 503]
    assert refused and all(r[1] for r in refused) and "waiting queue is full" in refused[0][2]
    assert all(r[0] in (200, 503) for r in results) and any(r[0] == 200 for r in results)


# -- v2: Triton's generate extension and gRPC streaming ---------------------------------------------
def test_v2_generate_and_generate_stream(url):
    whole = generate(url, "textgen", {"text_input": "import os", "max_tokens": 8, "parameters": {"temperature": 0}})
    assert whole["finish_reason"] in ("stop", "length") and isinstance(whole["text_output"], str)
    with httpx.stream("POST", f"{url}/v2/models/textgen/generate_stream", timeout=60,
                      json={"text_input": "import os", "max_tokens": 8, "stream": True,
                            "parameters": {"temperature": 0}}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) == whole["completion_tokens"]
    assert "".join(e["text_output"] for e in events) == whole["text_output"]


def test_grpc_model_stream_infer_gives_a_response_per_token(server):
    import tritonclient.grpc as grpcclient

    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"import sys"], dtype=object))
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    client.async_stream_infer("textgen", [text, stream], request_id="g1",
                              parameters={"max_tokens": 6, "temperature": 0.0, "ignore_eos": True})
    pieces = []
    while len(pieces) < 6:
        result, error = results.get(timeout=60)
        assert error is None, error
        pieces.append(result.as_numpy("text_output")[0].decode())
        reason = result.as_numpy("finish_reason")[0].decode()
    client.stop_stream()
    assert reason == "length"
    whole = generate(f"http://{server.http_url}", "textgen", {"text_input": "import sys", "max_tokens": 6,
                                                               "parameters": {"temperature": 0, "ignore_eos": True}})
    assert "".join(pieces) == whole["text_output"]


def test_tokenize_detokenize_and_models_list(client, url):
    tokens = httpx.post(f"{url}/tokenize", json={"model": "textgen", "prompt": "import os"}).json()
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] > 0
    text = httpx.post(f"{url}/detokenize", json={"model": "textgen", "tokens": tokens["tokens"]}).json()
    assert text["prompt"] == "import os"
    chat = httpx.post(f"{url}/tokenize", json={"model": "tiny_llama", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.json()["count"] > 2
    bad = httpx.post(f"{url}/detokenize", json={"model": "textgen", "tokens": [-1]})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    ids = {m.id for m in client.models.list()}
    assert {"textgen", "tiny_gpt2", "tiny_llama"} <= ids


def test_generation_metrics_under_ours_and_vllms_names(url, client):
    client.completions.create(model="textgen", prompt="x", max_tokens=3)
    text = metrics(url)
    for name in ("deepserve_generation_time_to_first_token_seconds_bucket",
                 "deepserve_generation_time_per_output_token_seconds_bucket",
                 "deepserve_generation_e2e_request_latency_seconds_bucket", "deepserve_generation_prompt_tokens_total",
                 "deepserve_generation_output_tokens_total", "deepserve_generation_requests_running",
                 "deepserve_generation_requests_waiting", "deepserve_generation_kv_cache_usage_ratio",
                 "deepserve_generation_prefix_cache_queries_total", "deepserve_generation_preemptions_total",
                 "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        assert re.search(rf'^{re.escape(name)}\{{[^}}]*"textgen"', text, re.M), name
    assert metric(url, "deepserve_generation_output_tokens_total", "textgen") >= 3
    # Triton's statistics: an iteration is an execution of its sequences, the wait for admission the queue
    stats = httpx.get(f"{url}/v2/models/textgen/stats", timeout=30).json()["model_stats"][0]
    assert stats["execution_count"] >= 3 and stats["inference_count"] >= stats["execution_count"]
    assert stats["inference_stats"]["queue"]["count"] >= 1 and stats["inference_stats"]["compute_infer"]["ns"] > 0

