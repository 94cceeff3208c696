"""The continuous-batching generation engine: a :class:`~server.scheduling.base.Scheduler`.

One thread runs the loop; each iteration **plans** (:class:`Planner`: which sequences
run and how many tokens each, under the token and KV-block budgets), **runs** (one
batched forward pass through the model runner) and **accounts** (sample, stream out,
retire, free). Requests arrive from the event loop through an inbox; their responses go
back through one asyncio queue each. A request whose consumer goes away is cancelled at
the next iteration boundary, which frees its blocks.

A request (a :class:`Job` of the model's tensors and request parameters):

- the prompt: ``text_input`` (BYTES, encoded with the tokenizer's special tokens) or
  ``input_ids`` (INT32 token ids, as given);
- ``max_tokens`` (INT32, optional; also a parameter) and ``stream`` (BOOL, optional; also
  a parameter): streaming sends a response per generated token, otherwise one response
  per choice with its whole text;
- parameters: :func:`~server.scheduling.generation.sampling.params_from` (``temperature``,
  ``top_p``, ``top_k``, ``seed``, ``stop``, ``stop_token_ids``, penalties, ``logprobs``,
  ``top_logprobs``, ``n``, ``response_format``), and ``priority`` (lower runs first).

Each response carries ``text_output``, ``index`` (the choice), ``token_ids``,
``logprobs``, ``top_logprob_ids``/``top_logprobs`` (when asked), ``finish_reason``
(``""`` until the choice ends, then ``stop`` or ``length``) and the request's usage:
``prompt_tokens``, ``cached_tokens`` (from the prefix cache), ``completion_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from server.core.errors import DeepserveError, InvalidInput, ModelError, QueueFull, Unavailable
from server.observability.metrics import GenerationMetrics
from server.pipelines.grammar import Grammar, GrammarError, Grammars, Matcher
from server.pipelines.text import Detokenizer, TextCodec
from server.scheduling.base import Job, Outputs
from server.scheduling.batcher import BatchObserver, BatchTimings, NullObserver
from server.scheduling.generation.blocks import BlockManager
from server.scheduling.generation.planner import Budget, Planner, Seq
from server.scheduling.generation.sampling import Draw, SamplingParams, params_from, sample
from server.scheduling.generation.work import SeqWork

log = logging.getLogger(__name__)

_END = object()


class Runner(Protocol):
    def step(self, work: list[SeqWork]) -> np.ndarray: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    vocab_size: int
    max_model_len: int
    block_size: int
    num_blocks: int
    eos_token_ids: tuple[int, ...]
    budget: Budget = Budget()
    max_waiting: int = 1024  # requests waiting for their first admission
    prefix_caching: bool = True


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one response carries for one choice."""

    index: int
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...]
    top: tuple[tuple[tuple[int, float], ...], ...]
    finish_reason: str  # "" while the choice goes on


@dataclass(eq=False)
class _Request:
    prompt_tokens: int
    params: SamplingParams
    stream: bool
    arrival: float
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    choices: list[_Choice] = field(default_factory=list)
    cached_tokens: int = 0
    done: bool = False

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass(eq=False)
class _Choice:
    request: _Request
    index: int
    seq: Seq
    rng: np.random.Generator
    detok: Detokenizer
    matcher: Matcher | None
    text: str = ""
    sent_chars: int = 0
    counts: Counter = field(default_factory=Counter)
    pending: list[Draw] = field(default_factory=list)  # drawn, not yet sent
    last_token_s: float | None = None
    finish_reason: str = ""


class GenerationEngine:
    def __init__(self, runner: Runner, codec: TextCodec, grammars: Grammars | None, config: EngineConfig,
                 metrics: GenerationMetrics, clock: Callable[[], float] = time.monotonic,
                 observer: BatchObserver | None = None) -> None:
        self.runner, self.codec, self.grammars, self.config = runner, codec, grammars, config
        self.metrics, self.clock = metrics, clock
        # Triton's statistics and the batch metrics, per iteration: the sequences stepped are
        # its batch, the step its compute, the wait for a first admission its queue time
        # (reported on the event loop, where the observer lives).
        self._observer = observer or NullObserver()
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self.blocks = BlockManager(config.num_blocks, config.block_size, config.prefix_caching)
        self.planner = Planner(self.blocks, config.budget)
        self._choices: dict[int, _Choice] = {}  # seq id -> its choice
        self._inbox: list[tuple[str, _Request]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._unadmitted = 0  # sequences submitted and never admitted (the waiting-queue bound)
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._reported = (0, 0)  # prefix queries / hits already counted

    # -- Scheduler ------------------------------------------------------------------------
    def start(self) -> None:
        self._server_loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self._thread.start()

    async def infer(self, job: Job) -> Outputs:
        responses = [outputs async for outputs in self.stream(job)]
        if len(responses) != 1:
            raise InvalidInput(f"this request produced {len(responses)} responses; stream it "
                               "(gRPC ModelStreamInfer or HTTP .../generate_stream)")
        return responses[0]

    async def stream(self, job: Job) -> AsyncIterator[Outputs]:
        request = self._request(job)
        self._submit(request)
        try:
            while True:
                item = await request.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not request.done:
                self._post("cancel", request)

    async def aclose(self) -> None:
        self._accepting = False
        await asyncio.to_thread(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                busy = bool(self._inbox or self._choices)
            if not busy:
                break
            self._idle.wait(0.05)
        self._post("stop", None)
        if self._thread is not None:
            self._thread.join()
        self.runner.close()

    # -- requests -------------------------------------------------------------------------
    def _request(self, job: Job) -> _Request:
        if not self._accepting:
            raise Unavailable("the model is unloading")
        p = dict(job.parameters or {})
        for name in ("max_tokens", "stream"):
            if name in job.inputs:
                p[name] = job.inputs[name].reshape(-1)[0].item()
        if isinstance(p.get("response_format"), str):  # gRPC parameters are scalars: JSON text
            try:
                p["response_format"] = json.loads(p["response_format"])
            except ValueError:
                raise InvalidInput("'response_format' must be a JSON object") from None
        stream = p.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidInput("'stream' must be true or false")
        params = params_from(p, self.config.vocab_size)
        prompt = self._prompt(job)
        params = self._fit(prompt, params)
        priority = p.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidInput("'priority' must be an integer (lower runs first)")
        grammar = self._grammar(params)
        loop = asyncio.get_running_loop()
        request = _Request(len(prompt), params, stream, self.clock(), loop, asyncio.Queue())
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            seq = Seq(list(prompt), params.max_tokens, priority, request.arrival)
            request.choices.append(_Choice(request, index, seq, np.random.default_rng(seed), self.codec.stream(),
                                           grammar.matcher() if grammar is not None else None))
        return request

    def _prompt(self, job: Job) -> list[int]:
        text, ids = job.inputs.get("text_input"), job.inputs.get("input_ids")
        if (text is None) == (ids is None):
            raise InvalidInput("give the prompt as exactly one of 'text_input' (text) and 'input_ids' (token ids)")
        if text is not None:
            if text.size != 1:
                raise InvalidInput(f"'text_input' must hold one prompt, not {text.size}")
            value = text.reshape(-1)[0]
            prompt = self.codec.encode(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        else:
            prompt = [int(t) for t in ids.reshape(-1)]
            bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
            if bad:
                raise InvalidInput(f"'input_ids' has ids outside the vocabulary [0, {self.config.vocab_size}): {bad[:5]}")
        if not prompt:
            raise InvalidInput("the prompt is empty (no tokens)")
        return prompt

    def _fit(self, prompt: list[int], params: SamplingParams) -> SamplingParams:
        """Check the prompt and ``max_tokens`` against the context and the KV cache."""
        limit, size = self.config.max_model_len, len(prompt)
        if size >= limit:
            raise InvalidInput(f"the prompt has {size} tokens; this model's context is {limit} tokens, "
                               f"which leaves no room to generate")
        room = limit - size
        if params.max_tokens is not None and params.max_tokens > room:
            raise InvalidInput(f"max_tokens is {params.max_tokens}, but the context of {limit} tokens leaves "
                               f"{room} after the prompt's {size}")
        usable = self.config.num_blocks - self.config.budget.watermark_blocks
        capacity = usable * self.config.block_size  # tokens one sequence can hold in the whole cache
        max_tokens = params.max_tokens or min(room, capacity - size)  # unasked: as much as fits
        need = self.blocks.blocks_for(size + max_tokens)
        if max_tokens < 1 or need > usable:
            raise InvalidInput(f"the prompt ({size} tokens) plus max_tokens ({max_tokens}) needs {need} KV-cache blocks "
                               f"of {self.config.block_size} tokens; this model's cache has {usable}")
        return replace(params, max_tokens=max_tokens)

    def _grammar(self, params: SamplingParams) -> Grammar | None:
        if params.response_format is None:
            return None
        if self.grammars is None:
            raise InvalidInput("this model does not support 'response_format'")
        try:
            return self.grammars.compile(dict(params.response_format))
        except GrammarError as exc:
            raise InvalidInput(f"'response_format': {exc}") from None

    def _submit(self, request: _Request) -> None:
        with self._lock:
            if self._unadmitted + len(request.choices) > self.config.max_waiting:
                raise QueueFull(f"the waiting queue is full ({self._unadmitted} sequences waiting, limit "
                                f"{self.config.max_waiting}); retry later", retry_after_s=1.0)
            self._unadmitted += len(request.choices)
            self._inbox.append(("add", request))
            self._idle.clear()
        self._wake.set()

    def _post(self, what: str, request: _Request | None) -> None:
        with self._lock:
            self._inbox.append((what, request))
        self._wake.set()

    # -- the loop (engine thread) ---------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                inbox, self._inbox = self._inbox, []
            for what, request in inbox:
                if what == "stop":
                    return
                if what == "add":
                    for choice in request.choices:
                        self._choices[choice.seq.id] = choice
                        self.planner.add(choice.seq)
                elif what == "cancel":
                    self._cancel(request)
            if not self.planner.running and not self.planner.waiting:
                self._report()
                with self._lock:
                    if self._inbox:
                        continue
                    self._idle.set()
                    self._wake.clear()
                self._wake.wait()
                continue
            try:
                self._iteration()
            except Exception as exc:  # the runner failed: every sequence in flight fails with it
                log.exception("generation step failed")
                self._fail_all(ModelError(f"generation failed: {exc!r}"))
            self._report()

    def _iteration(self) -> None:
        plan = self.planner.schedule()
        for seq in plan.admitted:
            if seq.preemptions == 0:
                self._first_admission(seq)
        if plan.preempted:
            self.metrics.preemptions.inc(len(plan.preempted))
        if not plan.work:
            self._wake.wait(0.001)
            return
        started = self.clock()
        logits = self.runner.step([SeqWork(w.seq.span(w.start, w.count), w.start, tuple(w.seq.table))
                                   for w in plan.work])
        stepped = self.clock()
        sampled: dict[int, int] = {}
        draws: list[tuple[_Choice, Draw]] = []
        for row, w in enumerate(plan.work):
            if not w.samples:
                continue
            choice = self._choices[w.seq.id]
            allowed = choice.matcher.allowed() if choice.matcher is not None else None
            draw = sample(logits[row], choice.request.params, choice.rng, choice.counts, allowed)
            sampled[w.seq.id] = draw.token
            draws.append((choice, draw))
        self.planner.account(plan, sampled)
        now = self.clock()
        queued = tuple(started - seq.arrival for seq in plan.admitted if seq.preemptions == 0)
        self._report_batch(len(plan.work), BatchTimings(queued, 0.0, stepped - started, now - stepped))
        for choice, draw in draws:
            self._advance(choice, draw, now)

    def _report_batch(self, sequences: int, timings: BatchTimings) -> None:
        if self._server_loop is not None and not self._server_loop.is_closed():
            self._server_loop.call_soon_threadsafe(self._observer.batch_done, sequences, sequences, timings, True)

    def _first_admission(self, seq: Seq) -> None:
        choice = self._choices[seq.id]
        with self._lock:
            self._unadmitted -= 1
        if choice.index == 0:
            choice.request.cached_tokens = seq.cached_tokens
            self.metrics.prompt_tokens.inc(len(seq.prompt))

    def _advance(self, choice: _Choice, draw: Draw, now: float) -> None:
        request, params, seq = choice.request, choice.request.params, choice.seq
        if choice.last_token_s is None:
            self.metrics.ttft.observe(now - request.arrival)
        else:
            self.metrics.tpot.observe(now - choice.last_token_s)
        choice.last_token_s = now
        self.metrics.output_tokens.inc()
        token = draw.token
        choice.counts[token] += 1
        choice.pending.append(draw)
        if choice.matcher is not None:
            choice.matcher.accept(token)
        eos = token in self.config.eos_token_ids and not params.ignore_eos
        if eos or token in params.stop_token_ids:
            choice.finish_reason = "stop"
        else:
            choice.text += choice.detok.step(token)
            if params.stop and self._cut_at_stop(choice):
                choice.finish_reason = "stop"
            elif choice.matcher is not None and choice.matcher.is_finished():
                choice.finish_reason = "stop"
        if not choice.finish_reason and (len(seq.output) >= params.max_tokens or seq.length >= self.config.max_model_len):
            choice.finish_reason = "length"
        if choice.finish_reason:
            self.planner.finish(seq)
            del self._choices[seq.id]
        if request.stream or choice.finish_reason:
            self._send(choice)
        if choice.finish_reason and all(c.finish_reason for c in request.choices):
            request.done = True
            self.metrics.e2e.observe(now - request.arrival)
            request.put(_END)

    def _cut_at_stop(self, choice: _Choice) -> bool:
        longest = max(len(s) for s in choice.request.params.stop)
        start = max(0, choice.sent_chars - longest)
        found = [i for i in (choice.text.find(s, start) for s in choice.request.params.stop) if i >= 0]
        if not found:
            return False
        choice.text = choice.text[:min(found)]
        return True

    def _send(self, choice: _Choice) -> None:
        request, params = choice.request, choice.request.params
        end = len(choice.text)
        if not choice.finish_reason and params.stop:  # hold back what may be the start of a stop string
            end = max(choice.sent_chars, end - (max(len(s) for s in params.stop) - 1))
        text, choice.sent_chars = choice.text[choice.sent_chars:end], end
        draws, choice.pending = choice.pending, []  # without streaming: every draw, sent once at the end
        chunk = Chunk(choice.index, tuple(d.token for d in draws), text, tuple(d.logprob for d in draws),
                      tuple(d.top for d in draws), choice.finish_reason)
        request.put(self._outputs(request, choice, chunk))

    def _outputs(self, request: _Request, choice: _Choice, chunk: Chunk) -> Outputs:
        width = request.params.top_logprobs
        top_ids = np.zeros((len(chunk.token_ids), width), dtype=np.int32)
        top_lp = np.zeros((len(chunk.token_ids), width), dtype=np.float32)
        for row, entries in enumerate(chunk.top):
            for column, (token, logprob) in enumerate(entries):
                top_ids[row, column], top_lp[row, column] = token, logprob
        return {
            "text_output": np.array([chunk.text.encode("utf-8")], dtype=np.object_),
            "index": np.array([chunk.index], dtype=np.int32),
            "finish_reason": np.array([chunk.finish_reason.encode()], dtype=np.object_),
            "token_ids": np.array(chunk.token_ids, dtype=np.int32),
            "logprobs": np.array(chunk.logprobs, dtype=np.float32),
            "top_logprob_ids": top_ids,
            "top_logprobs": top_lp,
            "prompt_tokens": np.array([request.prompt_tokens], dtype=np.int32),
            "cached_tokens": np.array([request.cached_tokens], dtype=np.int32),
            "completion_tokens": np.array([len(choice.seq.output)], dtype=np.int32),
        }

    def _cancel(self, request: _Request) -> None:
        for choice in request.choices:
            if choice.seq.id in self._choices:
                if not choice.seq.admitted:
                    with self._lock:
                        self._unadmitted -= 1
                self.planner.finish(choice.seq)
                del self._choices[choice.seq.id]
        request.done = True

    def _fail_all(self, error: DeepserveError) -> None:
        requests = {id(c.request): c.request for c in self._choices.values()}
        for request in requests.values():
            self._cancel(request)
            request.put(error)

    def _report(self) -> None:
        queries, hits = self.planner.prefix_queries, self.planner.prefix_hits
        seen_q, seen_h = self._reported
        if queries > seen_q:
            self.metrics.prefix_queries.inc(queries - seen_q)
            self.metrics.prefix_hits.inc(hits - seen_h)
            self._reported = (queries, hits)
        self.metrics.occupancy(len(self.planner.running), len(self.planner.waiting), self.blocks.usage())
