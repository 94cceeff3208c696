"""Text generation: streaming tokens/s, TTFT and TPOT at 1, 4 and 16 streams, one run.

The issue's requirement (#14), measured here: *on this CPU, with the default model,
measured in one run: aggregate tokens/s at 16 concurrent streams >= 5 x a single stream;
p50 and p99 time to first token and time per output token at 1, 4 and 16 streams;
compared against a one-request-at-a-time loop over transformers' generate() on the same
weights (the naive baseline), and against transformers' static batching* -- and what
``response_format`` (json_object, json_schema) costs in throughput.

  * server    ``python -m server.cli serve`` on 127.0.0.1, a temp repository holding only
              ``textgen`` (a copy of ``models/weights/textgen``; ``--tiny`` serves a tiny
              random gpt2 under that name instead, for a smoke test);
  * phases    n clients (asyncio + httpx, one keep-alive connection each) streaming
              ``POST /v1/completions`` back to back for ``--seconds``: ``max_tokens``
              64, temperature 0, ``ignore_eos`` (every request generates 64 tokens);
              per request the send -> first text event time (TTFT), every text event's
              time (gaps, TPOT) and the usage chunk's ``completion_tokens``;
  * structured  the same at ``--structured-level`` streams with ``response_format``
              json_object, then json_schema (no ``ignore_eos``: they stop early);
  * baselines after the server stopped: transformers ``generate()`` on the same weights and
              prompt ids, one at a time (naive) and one left-padded batch (static).

    .venv/bin/python -m loadtests.generation_bench --json loadtests/results/generation-$(date -u +%F).json
    .venv/bin/python -m loadtests.generation_report --from-json loadtests/results/generation-<date>.json \\
        --out docs/benchmarks-generation.md
    .venv/bin/python -m loadtests.generation_bench --tiny --seconds 3 --structured-seconds 2 \\
        --naive-requests 2 --quiet-wait 0                   # smoke test

All traffic is loopback; server and load generator share the host's cores. A benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from loadtests.generation_report import LEVELS, MODEL, TARGET_SPEEDUP, quantile, render
from loadtests.procs import busy_cpu_s, own_cpu_s, tree_cpu_s
from loadtests.runinfo import add_output_arguments, finish, note_edits, package_version, record, wait_for_quiet

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "weights" / MODEL
ROUTE = "/v1/completions"
MAX_TOKENS = 64
MAX_ERROR_SHARE = 0.1
PROMPTS = (
    "Return a new list containing all items from the iterable",
    "Open the file and return a stream.",
    "Create a new dictionary with keys from the iterable",
    "Return the number of items in a container.",
    "Split the string at the last occurrence of sep",
    "Raise a ValueError if the value is not present.",
    "Convert a number or string to an integer",
    "Return a copy of the string with leading whitespace removed.",
    "Read and return one line from the stream.",
    "Decode the bytes using the codec registered for encoding.",
    "Remove and return an arbitrary set element.",
    "Return True if the path refers to an existing directory.",
    "Serialize obj to a JSON formatted str.",
    "Parse a URL into six components",
    "Sleep for the given number of seconds.",
    "Return the absolute value of the argument.",
)
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "color": {"enum": ["red", "green", "blue"]}},
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}
FORMATS = {"json_object": {"type": "json_object"},
           "json_schema": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}}

# The measured code, checked for uncommitted edits before and after a run.
WATCHED = ("server/", "tests/integration/server_fixtures.py", "loadtests/procs.py", "loadtests/generation_bench.py",
           "models/weights/textgen")


# ---- the client -------------------------------------------------------------------------------


class Client:
    def __init__(self, base_url: str, connections: int) -> None:
        import httpx

        self.http = httpx.AsyncClient(base_url=base_url, timeout=300.0,
                                      limits=httpx.Limits(max_connections=connections,
                                                          max_keepalive_connections=connections))

    async def stream(self, prompt: str, extra: dict) -> dict:
        """One streamed completion: TTFT, every text event's time, tokens, finish reason, text."""
        body = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, **extra}
        sent = time.perf_counter()
        events: list[float] = []
        text: list[str] = []
        usage, finish_reason = None, None
        async with self.http.stream("POST", ROUTE, json=body) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"stream error: {chunk['error']}")
                now = time.perf_counter()
                for choice in chunk.get("choices") or []:
                    if choice.get("text"):
                        events.append(now)
                        text.append(choice["text"])
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                if chunk.get("usage"):
                    usage = chunk["usage"]
        done = time.perf_counter()
        if usage is None:
            raise RuntimeError("no usage chunk")
        return {"sent": sent, "events": events, "done": done, "tokens": usage["completion_tokens"],
                "cached": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
                "finish": finish_reason or "none", "text": "".join(text)}

    async def metrics(self) -> dict:
        """The generation families of ``MODEL``: histogram sums / counts, the output-token counter."""
        from prometheus_client.parser import text_string_to_metric_families

        resp = await self.http.get("/metrics")
        resp.raise_for_status()
        out: dict = {}
        for family in text_string_to_metric_families(resp.text):
            if not family.name.startswith("deepserve_generation_"):
                continue
            for s in family.samples:
                if s.labels.get("model") == MODEL and (s.name.endswith(("_sum", "_count", "_total"))):
                    out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    async def tokenize(self, prompt: str) -> list[int]:
        resp = await self.http.post("/tokenize", json={"model": MODEL, "prompt": prompt})
        resp.raise_for_status()
        return resp.json()["tokens"]

    async def close(self) -> None:
        await self.http.aclose()


def _metrics_delta(before: dict, after: dict) -> dict:
    p = "deepserve_generation_"

    def d(name: str) -> float:
        return after.get(p + name, 0.0) - before.get(p + name, 0.0)

    return {"tpot_sum_s": d("time_per_output_token_seconds_sum"), "tpot_count": d("time_per_output_token_seconds_count"),
            "ttft_sum_s": d("time_to_first_token_seconds_sum"), "ttft_count": d("time_to_first_token_seconds_count"),
            "output_tokens": d("output_tokens_total"), "preemptions": d("preemptions_total")}


def _valid(text: str, kind: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if kind == "json_schema":
        import jsonschema

        try:
            jsonschema.validate(value, SCHEMA)
        except jsonschema.ValidationError:
            return False
    return isinstance(value, dict)


async def phase(client: Client, server_pid: int, level: int, seconds: float, extra: dict, kind: str = "free") -> dict:
    """``level`` clients streaming back to back for ``seconds`` (after one warm-up request
    each): per-request figures, wall time, CPU use."""
    counter = iter(range(10**9))
    await asyncio.gather(*(client.stream(PROMPTS[c % len(PROMPTS)], extra) for c in range(level)))  # warm-up
    results: list[dict] = []
    errors: list[str] = []
    before = await client.metrics()
    server0, client0, busy0 = tree_cpu_s(server_pid), own_cpu_s(), busy_cpu_s()
    started = time.perf_counter()
    deadline = started + seconds

    async def one_client() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            try:
                results.append(await client.stream(PROMPTS[i % len(PROMPTS)], extra))
            except Exception as exc:  # counted and reported
                errors.append(f"{type(exc).__name__}: {exc}"[:300])

    await asyncio.gather(*(one_client() for _ in range(level)))
    wall = time.perf_counter() - started
    server_s, client_s = tree_cpu_s(server_pid) - server0, own_cpu_s() - client0
    others = max(0.0, (busy_cpu_s() - busy0 - server_s - client_s) / wall)
    after = await client.metrics()
    count = len(results) + len(errors)
    if len(errors) > MAX_ERROR_SHARE * max(1, count):
        raise RuntimeError(f"{level} streams ({kind}): {len(errors)} of {count} requests failed; first: {errors[:1]}")
    ttft, tpot, itl, e2e, finish = [], [], [], [], {}
    for r in results:
        ev = r["events"]
        if not ev:
            continue
        ttft.append(round((ev[0] - r["sent"]) * 1e3, 3))
        e2e.append(round((r["done"] - r["sent"]) * 1e3, 3))
        if r["tokens"] > 1:
            tpot.append(round((ev[-1] - ev[0]) * 1e3 / (r["tokens"] - 1), 4))
        itl += [round((b - a) * 1e3, 3) for a, b in zip(ev, ev[1:], strict=False)]
        finish[r["finish"]] = finish.get(r["finish"], 0) + 1
    out = {
        "level": level, "kind": kind, "requests": count, "errors": len(errors), "error_messages": errors[:3],
        "wall_s": wall, "output_tokens": sum(r["tokens"] for r in results if r["events"]),
        "ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": e2e, "finish": finish,
        # every gap would make the file ~1 MB: their quantiles (the report's quantile function)
        "itl_q": {"p50_ms": quantile(itl, 0.5), "p99_ms": quantile(itl, 0.99), "count": len(itl)},
        "cached_tokens": sum(r["cached"] for r in results),
        "server_cores": server_s / wall, "client_cores": client_s / wall, "others_cores": others,
        "server": _metrics_delta(before, after),
    }
    if kind != "free":
        out["valid_json"] = sum(_valid(r["text"], kind) for r in results)
        out["examples"] = [r["text"] for r in results[:2]]
    return out


async def measure(base_url: str, server_pid: int, args: argparse.Namespace) -> dict:
    levels = sorted(set(args.levels) | {1})
    client = Client(base_url, max(levels) + 4)
    quiet, budget = [], args.quiet_wait
    out: dict = {"levels": {}, "quiet_wait": quiet}
    try:
        out["prompt_ids"] = [await client.tokenize(p) for p in PROMPTS]
        await client.stream(PROMPTS[0], {"ignore_eos": True})  # first request: compiles nothing, warms caches
        measured = 0.0
        for lv in levels:
            seen = await wait_for_quiet(server_pid, args.quiet_cores, budget)
            budget = max(0.0, budget - seen["waited_s"])
            quiet.append(seen)
            p = await phase(client, server_pid, lv, args.seconds, {"ignore_eos": True})
            out["levels"][str(lv)] = p
            measured += p["wall_s"]
            print(f"  {lv} streams: {p['output_tokens'] / p['wall_s']:.1f} tokens/s", flush=True)
        if args.structured_level:
            s: dict = {"level": args.structured_level, "schema": SCHEMA}
            for kind, fmt in FORMATS.items():
                seen = await wait_for_quiet(server_pid, args.quiet_cores, budget)
                budget = max(0.0, budget - seen["waited_s"])
                quiet.append(seen)
                p = await phase(client, server_pid, args.structured_level, args.structured_seconds,
                                {"response_format": fmt}, kind)
                s[kind] = p
                measured += p["wall_s"]
                print(f"  {kind}: {p['output_tokens'] / p['wall_s']:.1f} tokens/s", flush=True)
            out["structured"] = s
        out["measured_s"] = measured
    finally:
        await client.close()
    phases = list(out["levels"].values()) + [v for k, v in (out.get("structured") or {}).items() if k in FORMATS]
    wall = sum(p["wall_s"] for p in phases)
    out["others_cores"] = sum(p["others_cores"] * p["wall_s"] for p in phases) / wall if wall else 0.0
    out["error_messages"] = [m for p in phases for m in p.pop("error_messages")][:5]
    return out


# ---- the baselines ----------------------------------------------------------------------------


def baselines(folder: Path, prompt_ids: list[list[int]], naive_requests: int, batch: int, static_runs: int,
              eos: int) -> dict:
    """transformers ``generate()`` on the same weights and prompt ids: one at a time, then one
    left-padded batch."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    kwargs = {"do_sample": False, "max_new_tokens": MAX_TOKENS, "min_new_tokens": MAX_TOKENS, "pad_token_id": eos}

    def one(ids: list[int]) -> tuple[float, int]:
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = model.generate(x, attention_mask=torch.ones_like(x), **kwargs)
        return time.perf_counter() - t0, int(y.shape[1] - x.shape[1])

    one(prompt_ids[0])  # warm-up
    naive = [one(prompt_ids[i % len(prompt_ids)]) for i in range(naive_requests)]

    rows = [prompt_ids[i % len(prompt_ids)] for i in range(batch)]
    width = max(map(len, rows))
    x = torch.tensor([[eos] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])

    def batched() -> tuple[float, int]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = model.generate(x, attention_mask=mask, **kwargs)
        return time.perf_counter() - t0, int((y.shape[1] - width) * batch)

    batched()  # warm-up
    runs = [batched() for _ in range(static_runs)]
    return {
        "threads": torch.get_num_threads(),
        "naive": {"per_request_s": [s for s, _ in naive], "tokens": sum(n for _, n in naive)},
        "static": {"batch": batch, "runs_s": [s for s, _ in runs], "tokens_per_run": runs[0][1], "prompt_width": width},
    }


# ---- the run ----------------------------------------------------------------------------------


def model_facts(folder: Path) -> dict:
    from safetensors import safe_open

    cfg = json.loads((folder / "config.json").read_text())
    params = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                params += math.prod(st.get_slice(k).get_shape())
    return {"model_type": cfg.get("model_type"), "n_layer": cfg.get("n_layer", cfg.get("num_hidden_layers")),
            "n_embd": cfg.get("n_embd", cfg.get("hidden_size")), "n_head": cfg.get("n_head", cfg.get("num_attention_heads")),
            "vocab_size": cfg.get("vocab_size"), "n_positions": cfg.get("n_positions", cfg.get("max_position_embeddings")),
            "params": params, "eos_token_id": cfg.get("eos_token_id")}


def write_standin(folder: Path, tmp: Path) -> None:
    """A checkpoint of textgen's shape, untrained: train_gpt's tokenizer recipe on its corpus,
    ``models.gpt.GPT`` at train_gpt's default sizes (seeded random weights), ``save_hf``."""
    import torch

    from models import text_corpus
    from models.gpt import GPT, GPTConfig, save_hf
    from models.train_gpt import train_tokenizer

    defaults = {"vocab": 4096, "n_layer": 4, "n_head": 4, "n_embd": 192, "block_size": 256}
    train_docs, _ = text_corpus.split(text_corpus.documents())
    tok = train_tokenizer([d.text for d in train_docs], defaults["vocab"])
    tok.save(str(tmp / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=defaults["block_size"],
                          n_layer=defaults["n_layer"], n_head=defaults["n_head"], n_embd=defaults["n_embd"])).eval()
    save_hf(model, tmp / "tokenizer.json", folder)


def run(args: argparse.Namespace) -> dict:
    import torch

    from tests.integration import server_fixtures as fx

    wall0 = time.perf_counter()
    results: dict = {**record("loadtests.generation_bench", WATCHED, args.json)}
    results["machine"].update(torch=torch.__version__, transformers=package_version("transformers"),
                              httpx=package_version("httpx"))
    levels = sorted(set(args.levels) | {1})
    with tempfile.TemporaryDirectory(prefix="deepserve-generation-") as tmp:
        repo = Path(tmp) / "repo"
        folder = repo / MODEL / "1"
        if args.standin:
            write_standin(folder, Path(tmp))
            weights = {"path": "models.train_gpt's recipe, untrained", "fallback": True,
                       "note": "models/weights/textgen was not there when the run began; this is a stand-in of the "
                               "same shape and layout (models.gpt.GPT with train_gpt's default sizes, its tokenizer "
                               "trained on the same corpus, random weights, saved by models.gpt.save_hf): the same "
                               "compute per token, but its answers are not the trained model's (structured-output "
                               "lengths differ)"}
        elif args.tiny:
            from tests.integration.generation_fixtures import write_gpt2

            write_gpt2(folder)
            weights = {"path": "tests/integration/generation_fixtures.py:write_gpt2", "fallback": True,
                       "note": "a tiny random gpt2 (tests' fixture), served under the default model's name"}
        else:
            if not (WEIGHTS / "model.safetensors").is_file():
                raise SystemExit(f"{WEIGHTS} has no model.safetensors (train it, or pass --standin / --tiny)")
            shutil.copytree(WEIGHTS, folder)
            weights = {"path": str(WEIGHTS.relative_to(ROOT)), "fallback": False}
        weights["sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
        facts = model_facts(folder)
        results["settings"] = {
            "model": MODEL, "weights": weights, "model_facts": facts, "route": ROUTE, "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True, "levels": levels, "seconds": args.seconds,
            "structured_seconds": args.structured_seconds, "targets": {"speedup": TARGET_SPEEDUP},
            "client": "httpx " + package_version("httpx") + ", asyncio", "prompts": list(PROMPTS),
            "threads": {"server": "the engine's default: 1 torch thread in its stepping thread for a model of "
                                  "hidden size <= 512 (server/scheduling/generation/runner.py)",
                        "baseline": torch.get_num_threads()},
        }
        with fx.server_process(repo, timeout_s=300) as (server, _proc):
            results.update(asyncio.run(measure(f"http://{server.http_url}", server.pid, args)))
            results["server_log"] = [line for line in server.log().splitlines() if line.strip()][-30:]
        results["settings"]["prompt_tokens"] = [len(ids) for ids in results["prompt_ids"]]
        eos = facts.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else (0 if eos is None else eos)
        t, busy0, own0 = time.perf_counter(), busy_cpu_s(), own_cpu_s()
        print("  baselines ...", flush=True)
        results["baselines"] = baselines(folder, results["prompt_ids"], args.naive_requests, max(levels),
                                         args.static_runs, eos)
        wall = time.perf_counter() - t
        results["baselines"]["seconds"] = wall
        results["baselines"]["others_cores"] = max(0.0, (busy_cpu_s() - busy0 - (own_cpu_s() - own0)) / wall)
        results["settings"]["threads"]["baseline"] = results["baselines"]["threads"]
    results["total_s"] = time.perf_counter() - wall0
    note_edits(results, WATCHED)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent streams (1 always runs)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each stream phase (s)")
    parser.add_argument("--structured-level", type=int, default=4, help="streams of the structured-output phases (0: skip)")
    parser.add_argument("--structured-seconds", type=float, default=15.0, help="length of each structured phase (s)")
    parser.add_argument("--naive-requests", type=int, default=8, help="requests of the naive transformers loop")
    parser.add_argument("--static-runs", type=int, default=3, help="timed runs of the static batch (median)")
    parser.add_argument("--standin", action="store_true",
                        help="serve an untrained checkpoint of textgen's shape (when models/weights/textgen is missing)")
    parser.add_argument("--tiny", action="store_true", help="serve a tiny random gpt2 instead of models/weights/textgen")
    add_output_arguments(parser, quiet_wait_s=60.0)
    args = parser.parse_args()
    finish(args, run, render)


if __name__ == "__main__":
    main()
