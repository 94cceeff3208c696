"""Step-level batched diffusion sampling: the scheduler of a ``scheduler: "diffusion"`` model.

Built like a generation engine's loop. Each turn::

    plan = planner.plan()              # every in-flight request, whatever step it is at
    eps = network.execute(plan.feed)   # ONE batched network call (worker thread)
    events = planner.account(plan, eps)  # advance each request one DDIM step

The timestep is a network input, so requests at different steps share the call. A
request with classifier-free guidance takes two rows (its class and the null class).
Finished requests retire at once and waiting ones join at the next turn, up to
``max_rows`` rows per call; beyond that they wait in a bounded queue (full: 503 at once).
A client that goes away is dropped at the next turn and its rows are free.

:class:`StepPlanner` is the pure part (numpy only, no device library; tested with a fake
network); :class:`DiffusionSampler` drives it on the event loop and one runtime instance.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from server.core.errors import DeepserveError, InvalidInput, ModelError, QueueFull, Unavailable
from server.pipelines import ddim
from server.runtimes.base import Runtime
from server.scheduling.base import Job, Outputs
from server.scheduling.batcher import BatchObserver, BatchTimings, NullObserver

# The request's tensors (v2 names) and the network's.
REQUEST_INPUTS = {"label": "INT32", "seed": "INT64", "steps": "INT32", "guidance_scale": "FP32", "preview_every": "INT32"}
REQUEST_OUTPUTS = {"image": "FP32", "step": "INT32"}
NETWORK_INPUTS = ("x", "t", "y")
NETWORK_OUTPUT = "eps"
MAX_GUIDANCE = 30.0


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    schedule: ddim.NoiseSchedule
    image_shape: tuple[int, ...]  # one image in model space, e.g. (1, 16, 16)
    classes: int = 10
    null_class: int = 10  # the label the network was trained to read as "no class"
    max_rows: int = 64  # network rows per call (a guided request takes two)
    max_queue: int = 256  # requests waiting to join
    default_steps: int = 25
    max_steps: int = 250
    default_guidance: float = 2.0


@dataclass(eq=False, slots=True)
class Sample:
    """One request's state between turns."""

    label: int
    seed: int
    guidance: float
    preview_every: int
    timesteps: np.ndarray  # int64, noisiest first
    x: np.ndarray  # the current latent, image_shape
    enqueued_s: float
    index: int = 0  # steps done
    cancelled: bool = False

    @property
    def rows(self) -> int:
        return 1 if self.guidance == 1.0 else 2

    @property
    def steps(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True, slots=True)
class StepPlan:
    samples: tuple[Sample, ...]
    feed: dict[str, np.ndarray]  # x, t, y: conditional rows first, then the guided ones' null rows
    guided: np.ndarray  # indices (into samples) of the guided requests, in row order
    admitted: tuple[Sample, ...]  # joined at this turn

    @property
    def rows(self) -> int:
        return len(self.feed["t"])


@dataclass(frozen=True, slots=True)
class Event:
    sample: Sample
    image: np.ndarray  # [0, 1], image_shape
    final: bool


@dataclass(slots=True)
class StepPlanner:
    config: SamplerConfig
    waiting: deque[Sample] = field(default_factory=deque)
    running: list[Sample] = field(default_factory=list)
    _alphas: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._alphas = self.config.schedule.alphas_cumprod()

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def new_sample(self, label: int, seed: int, steps: int, guidance: float, preview_every: int, now: float) -> Sample:
        """Check one request's parameters and build its starting state (x_T from its seed)."""
        c = self.config
        if not 0 <= label < c.classes:
            raise InvalidInput(f"label must be a class between 0 and {c.classes - 1}, not {label}")
        if not 1 <= steps <= c.max_steps:
            raise InvalidInput(f"steps must be between 1 and {c.max_steps}, not {steps}")
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise InvalidInput(f"guidance_scale must be between 0 and {MAX_GUIDANCE}, not {guidance}")
        if preview_every < 0:
            raise InvalidInput(f"preview_every must be 0 (final image only) or a positive step count, not {preview_every}")
        if seed < 0:
            raise InvalidInput(f"seed must be a non-negative integer, not {seed}")
        return Sample(label, seed, guidance, preview_every, c.schedule.timesteps(steps),
                      ddim.initial_noise(seed, c.image_shape), now)

    def add(self, sample: Sample) -> None:
        if len(self.waiting) >= self.config.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests are already waiting to be sampled; retry later", retry_after_s=1.0)
        self.waiting.append(sample)

    def plan(self) -> StepPlan | None:
        """Drop cancelled requests, admit waiting ones while rows fit, and lay out one call."""
        self.running = [s for s in self.running if not s.cancelled]
        self.waiting = deque(s for s in self.waiting if not s.cancelled)
        rows = sum(s.rows for s in self.running)
        admitted = []
        while self.waiting and rows + self.waiting[0].rows <= self.config.max_rows:
            sample = self.waiting.popleft()
            self.running.append(sample)
            admitted.append(sample)
            rows += sample.rows
        if not self.running:
            return None
        samples = tuple(self.running)
        guided = np.array([i for i, s in enumerate(samples) if s.rows == 2], np.int64)
        x = np.stack([s.x for s in samples])
        t = np.array([s.timesteps[s.index] for s in samples], np.int64)
        y = np.array([s.label for s in samples], np.int64)
        feed = {
            "x": np.concatenate([x, x[guided]]),
            "t": np.concatenate([t, t[guided]]),
            "y": np.concatenate([y, np.full(len(guided), self.config.null_class, np.int64)]),
        }
        return StepPlan(samples, feed, guided, tuple(admitted))

    def account(self, plan: StepPlan, eps: np.ndarray) -> list[Event]:
        """Advance every planned request one step; finished ones leave ``running``."""
        n = len(plan.samples)
        if eps.shape != plan.feed["x"].shape:
            raise ModelError(f"the network answered eps of shape {eps.shape}; expected {plan.feed['x'].shape}")
        eps_rows = eps[:n].copy()
        if len(plan.guided):
            scale = np.array([plan.samples[i].guidance for i in plan.guided], np.float32)
            eps_rows[plan.guided] = ddim.guide(eps[:n][plan.guided], eps[n:], scale)
        alpha = self._alphas[plan.feed["t"][:n]]
        alpha_prev = np.array([
            self._alphas[s.timesteps[s.index + 1]] if s.index + 1 < s.steps else 1.0 for s in plan.samples
        ])
        x_prev, x0 = ddim.ddim_step(plan.feed["x"][:n], eps_rows, alpha, alpha_prev)
        events: list[Event] = []
        for i, sample in enumerate(plan.samples):
            sample.x = x_prev[i]
            sample.index += 1
            final = sample.index == sample.steps
            if final or (sample.preview_every and sample.index % sample.preview_every == 0):
                events.append(Event(sample, ddim.to_unit(x0[i]), final))
        done = {id(e.sample) for e in events if e.final}
        self.running = [s for s in self.running if id(s) not in done]
        return events


class _Stream:
    """A request's responses, from the loop to the caller's iterator."""

    def __init__(self) -> None:
        self.items: asyncio.Queue = asyncio.Queue()
        self.sent = 0  # responses so far (Triton's response index)


_END = object()


class DiffusionSampler:
    """The :class:`~server.scheduling.base.Scheduler` of a diffusion model (always decoupled)."""

    def __init__(self, config: SamplerConfig, instance: Runtime, observer: BatchObserver | None = None,
                 clock: Callable[[], float] = time.monotonic, on_image: Callable[[], None] | None = None) -> None:
        self.planner = StepPlanner(config)
        self._instance = instance
        self._observer = observer or NullObserver()
        self._on_image = on_image or (lambda: None)
        self._clock = clock
        self._streams: dict[int, _Stream] = {}  # id(sample) -> its stream
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusion")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="diffusion-sampler")

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def infer(self, job: Job) -> Outputs:
        raise InvalidInput("this model is decoupled (it may send previews before the image); stream its responses")

    async def stream(self, job: Job) -> AsyncIterator[Outputs]:
        if self._closing or self._task is None:
            raise Unavailable("the model is unloading; retry when it is ready again", retry_after_s=1.0)
        sample = self._sample(job)
        self.planner.add(sample)
        stream = self._streams[id(sample)] = _Stream()
        self._observer.pending(len(self.planner.waiting))
        self._wake.set()
        finished = False
        try:
            while (item := await stream.items.get()) is not _END:
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
            finished = True
        finally:
            if not finished and not sample.cancelled:  # the caller left: free the rows at the next turn
                sample.cancelled = True
                self._observer.stream_cancelled(stream.sent)
                self._wake.set()
            self._streams.pop(id(sample), None)

    def _sample(self, job: Job) -> Sample:
        c = self.planner.config

        def scalar(name: str, default):
            value = job.inputs.get(name)
            if value is None:
                return default
            if value.size != 1:
                raise InvalidInput(f"input '{name}' must hold one value, not {value.size}")
            return value.reshape(-1)[0].item()

        seed = scalar("seed", None)
        return self.planner.new_sample(
            label=int(scalar("label", -1)),
            seed=int(seed) if seed is not None else int(np.random.default_rng().integers(2**31)),
            steps=int(scalar("steps", c.default_steps)),
            guidance=float(scalar("guidance_scale", c.default_guidance)),
            preview_every=int(scalar("preview_every", 0)),
            now=self._clock(),
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            plan = self.planner.plan()
            self._observer.pending(len(self.planner.waiting))
            if plan is None:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self._clock()
            queue_s = tuple(now - s.enqueued_s for s in plan.admitted)
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._instance.execute, plan.feed)
                events = self.planner.account(plan, outputs[NETWORK_OUTPUT])
            except Exception as exc:  # the network failed: every request in this call gets the error
                error = exc if isinstance(exc, DeepserveError) else ModelError(f"the network failed: {exc!r}")
                self._fail(plan, error)
                self._observer.batch_done(plan.rows, len(plan.samples), BatchTimings(queue_s, 0.0, 0.0, 0.0), False)
                continue
            self._observer.batch_done(
                plan.rows, len(plan.samples), BatchTimings(queue_s, 0.0, time.perf_counter() - started, 0.0), True)
            for event in events:
                self._deliver(event)

    def _deliver(self, event: Event) -> None:
        stream = self._streams.get(id(event.sample))
        if stream is None or event.sample.cancelled:
            return
        outputs = {"image": event.image, "step": np.array([event.sample.index], np.int32)}
        stream.items.put_nowait(outputs)
        self._observer.response_sent(stream.sent, 0.0)
        stream.sent += 1
        if event.final:
            self._on_image()
            stream.items.put_nowait(_END)

    def _fail(self, plan: StepPlan, error: DeepserveError) -> None:
        failed = {id(s) for s in plan.samples}
        self.planner.running = [s for s in self.planner.running if id(s) not in failed]
        for sample in plan.samples:
            stream = self._streams.get(id(sample))
            if stream is not None:
                stream.items.put_nowait(error)
