"""Triton's statistics extension: per model version counts and cumulative nanoseconds.

``telemetry`` is the one observer a model version hands its batcher and the service:
it feeds both the Prometheus children and these statistics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from server.core.errors import CANCEL_COUNTED, DeepserveError
from server.observability.metrics import ModelMetrics
from server.scheduling.batcher import BatchTimings


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStat:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ResponseStat:
    """Triton's per-response-index statistics of a decoupled model."""

    success: Duration = field(default_factory=Duration)
    cancel: Duration = field(default_factory=Duration)

    def as_json(self) -> dict:
        zero = Duration().as_json()
        return {
            "compute_infer": self.success.as_json(),
            "compute_output": zero,
            "success": self.success.as_json(),
            "fail": zero,
            "empty_response": zero,
            "cancel": self.cancel.as_json(),
        }


@dataclass(slots=True)
class ModelStatistics:
    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStat] = field(default_factory=dict)
    responses: dict[int, ResponseStat] = field(default_factory=dict)  # decoupled: by response index
    memory_usage: list[dict] = field(default_factory=list)  # what the load took: {type, id, byte_size}

    def as_json(self) -> dict:
        """Triton's ``ModelStatistics`` JSON shape."""
        zero = Duration().as_json()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": self.compute_input.as_json(),
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": self.compute_output.as_json(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "response_stats": {str(i): r.as_json() for i, r in sorted(self.responses.items())},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": stat.compute_input.as_json(),
                    "compute_infer": stat.compute_infer.as_json(),
                    "compute_output": stat.compute_output.as_json(),
                }
                for size, stat in sorted(self.batches.items())
            ],
            "memory_usage": list(self.memory_usage),
        }


class ModelTelemetry:
    """The observer of one model version: Prometheus children plus Triton statistics.

    Every call comes from the event loop (the batcher reports after its instance thread
    is done, frontends read on the loop), so nothing here needs a lock.
    """

    def __init__(self, metrics: ModelMetrics, name: str, version: str) -> None:
        self.metrics = metrics
        self.stats = ModelStatistics(name, version)
        self.inflight = 0  # accepted, not yet answered (the repository evicts idle models only)

    # BatchObserver
    def pending(self, count: int) -> None:
        self.metrics.pending.set(count)

    def batch_done(self, batch_rows: int, requests: int, timings: BatchTimings, ok: bool) -> None:
        m, s = self.metrics, self.stats
        for queue_s in timings.queue_s:
            m.queue_s.observe(queue_s)
        if not ok:
            return
        m.inferences.inc(batch_rows)
        m.executions.inc()
        m.compute_s.observe(timings.input_s + timings.infer_s + timings.output_s)
        m.batch_size.observe(batch_rows)
        s.inference_count += batch_rows
        s.execution_count += 1
        s.last_inference_ms = int(time.time() * 1000)
        for queue_s in timings.queue_s:
            s.queue.add(queue_s)
        # Triton counts compute per request; the batch's time is charged to each.
        s.compute_input.add(timings.input_s * requests, requests)
        s.compute_infer.add(timings.infer_s * requests, requests)
        s.compute_output.add(timings.output_s * requests, requests)
        stat = s.batches.setdefault(batch_rows, BatchStat())
        stat.compute_input.add(timings.input_s)
        stat.compute_infer.add(timings.infer_s)
        stat.compute_output.add(timings.output_s)

    def batch_closed(self, reason: str) -> None:
        self.metrics.batch_close(reason)

    def response_sent(self, index: int, compute_s: float) -> None:
        self.metrics.responses.inc()
        self.stats.responses.setdefault(index, ResponseStat()).success.add(compute_s)

    def stream_cancelled(self, index: int) -> None:
        self.stats.responses.setdefault(index, ResponseStat()).cancel.add(0.0)

    def image_generated(self) -> None:
        self.metrics.images.inc()

    # TranscriptionObserver
    def transcribed(self, audio_seconds: float, wall_seconds: float, chunks: int) -> None:
        self.metrics.audio_s.inc(audio_seconds)
        if audio_seconds > 0:
            self.metrics.rtf.observe(wall_seconds / audio_seconds)
        self.metrics.chunks.observe(chunks)

    # EnsembleObserver
    def step_done(self, step: str, duration_s: float) -> None:
        self.metrics.step(step).observe(duration_s)

    def ensemble_done(self, rows: int, steps_s: float, ok: bool) -> None:
        """An ensemble request: its steps' wall time is its compute (Triton sums the
        composing models' compute into the ensemble's statistics)."""
        if ok:
            self.batch_done(rows, 1, BatchTimings((0.0,), 0.0, steps_s, 0.0), ok)

    # the service's side
    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one request from acceptance to answer; a caller that leaves (a
        cancelled task, a closed stream) counts as CANCELED."""
        started = time.perf_counter()
        self.request_started()
        failure: str | None = "CANCELED"
        try:
            yield
            failure = None
        except DeepserveError as exc:
            failure = exc.reason
            exc.counted = True
            raise
        except Exception:
            failure = "OTHER"
            raise
        finally:
            self.request_finished(time.perf_counter() - started, failure)
            if failure == "CANCELED":
                CANCEL_COUNTED.set(True)

    def request_started(self) -> None:
        self.inflight += 1
        self.metrics.inflight.inc()

    def request_refused(self, reason: str) -> None:
        """A request for this model that failed before it was accepted (it could not be
        decoded, the server is draining): a failure, never in flight."""
        self.metrics.failure(reason)
        self.stats.fail.add(0.0)

    def request_finished(self, duration_s: float, failure_reason: str | None) -> None:
        self.inflight -= 1
        self.metrics.inflight.dec()
        if failure_reason is None:
            self.metrics.success.inc()
            self.metrics.request_s.observe(duration_s)
        else:
            self.metrics.failure(failure_reason)
        (self.stats.success if failure_reason is None else self.stats.fail).add(duration_s)

    def snapshot(self) -> dict:
        return self.stats.as_json()
