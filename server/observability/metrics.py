"""Prometheus metrics, one registry per server (never the module-global default).

Per model and version (labels ``model``, ``version``):

===========================================  =========  ==========================================
name                                         type       meaning
===========================================  =========  ==========================================
deepserve_request_success_total              counter    requests answered with outputs
deepserve_request_failure_total{reason}      counter    INVALID, NOT_FOUND, OVERLOAD, TIMEOUT,
                                                        REJECTED, CANCELED, BACKEND, UNAVAILABLE,
                                                        OTHER; a request naming no known model is
                                                        counted with model="" and version=""
deepserve_inference_count_total              counter    rows inferred (a batch of n counts n)
deepserve_execution_count_total              counter    runtime executions (batches)
deepserve_request_duration_seconds           histogram  end to end, decode to encode
deepserve_queue_duration_seconds             histogram  enqueue -> batch start
deepserve_compute_duration_seconds           histogram  runtime execute, per batch
deepserve_batch_size                         histogram  rows per execution
deepserve_pending_requests                   gauge      queued, not yet running
deepserve_inflight_requests                  gauge      accepted, not yet answered
deepserve_model_load_duration_seconds        gauge      time the last load took
deepserve_model_resident_bytes               gauge      process RSS delta across its load (the
                                                        size the memory budget counts)
deepserve_response_count_total               counter    responses sent by decoupled models
deepserve_generated_images_total             counter    final images of generation models
deepserve_audio_seconds_total                counter    audio transcribed (seconds of recording)
deepserve_transcription_real_time_factor     histogram  a request's wall time / its audio's duration
deepserve_transcription_chunks               histogram  chunks a recording was cut into
===========================================  =========  ==========================================

Per ensemble step (labels ``model``, ``version``, ``step`` = the step's model):
``deepserve_ensemble_step_duration_seconds`` (histogram), the step's time within the
ensemble's requests; the step model's own series count the same requests too. A
transcription model reports its stages the same way (``step`` = ``decode``, ``split``,
``features``, ``network`` (the acoustic model's queue and compute, which its own
``deepserve_queue_duration_seconds`` and ``deepserve_compute_duration_seconds`` split),
``ctc``).

GPU (label ``gpu_uuid``), read through NVML at scrape time when a GPU is present:
``deepserve_gpu_utilization_ratio``, ``deepserve_gpu_memory_used_bytes``,
``deepserve_gpu_memory_total_bytes``.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# The `reason` label of deepserve_request_failure_total: the core errors' reasons, and
# CANCELED for a client that went away.
FAILURE_REASONS = ("INVALID", "NOT_FOUND", "UNAVAILABLE", "OVERLOAD", "TIMEOUT", "REJECTED", "CANCELED", "BACKEND", "OTHER")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("model", "version")
        r = self.registry
        self.success = Counter("deepserve_request_success", "Requests answered with outputs", labels, registry=r)
        self.failure = Counter("deepserve_request_failure", "Requests answered with an error", (*labels, "reason"), registry=r)
        self.inferences = Counter("deepserve_inference_count", "Rows inferred (batch n counts n)", labels, registry=r)
        self.executions = Counter("deepserve_execution_count", "Runtime executions (batches)", labels, registry=r)
        self.request_s = Histogram(
            "deepserve_request_duration_seconds", "End-to-end request latency", labels, buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.queue_s = Histogram(
            "deepserve_queue_duration_seconds", "Time queued before the batch starts", labels, buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.compute_s = Histogram(
            "deepserve_compute_duration_seconds", "Runtime execution time per batch", labels, buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.batch_size = Histogram("deepserve_batch_size", "Rows per execution", labels, buckets=BATCH_BUCKETS, registry=r)
        self.pending = Gauge("deepserve_pending_requests", "Requests queued, not yet running", labels, registry=r)
        self.inflight = Gauge("deepserve_inflight_requests", "Requests accepted, not yet answered", labels, registry=r)
        self.load_s = Gauge("deepserve_model_load_duration_seconds", "Time the last load of the model took", labels, registry=r)
        self.resident = Gauge(
            "deepserve_model_resident_bytes", "Resident memory the model's load took (process RSS delta)", labels, registry=r
        )
        self.responses = Counter("deepserve_response_count", "Responses sent by decoupled models", labels, registry=r)
        self.images = Counter("deepserve_generated_images", "Final images of generation models", labels, registry=r)
        self.audio_s = Counter("deepserve_audio_seconds", "Seconds of audio transcribed", labels, registry=r)
        self.rtf = Histogram("deepserve_transcription_real_time_factor", "Wall time of a transcription / its audio "
                             "duration", labels, buckets=RTF_BUCKETS, registry=r)
        self.chunks = Histogram("deepserve_transcription_chunks", "Chunks a recording was cut into", labels,
                                buckets=BATCH_BUCKETS, registry=r)
        self.step_s = Histogram(
            "deepserve_ensemble_step_duration_seconds", "Time of one step within an ensemble request", (*labels, "step"),
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.step_labels: set[tuple[str, str, str]] = set()  # the step series made so far
        self.registry.register(GpuCollector())

    def unrouted_failure(self, reason: str) -> None:
        """A failed request that names no model the repository knows (no model label)."""
        self.failure.labels("", "", reason).inc()

    def model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)

    def forget(self, name: str, version: str) -> None:
        """Drop a model version's series when it is unloaded."""
        for metric in (self.success, self.inferences, self.executions, self.request_s, self.queue_s,
                       self.compute_s, self.batch_size, self.pending, self.inflight, self.load_s, self.resident, self.responses, self.images,
                       self.audio_s, self.rtf, self.chunks):
            try:
                metric.remove(name, version)
            except KeyError:
                pass
        for reason in FAILURE_REASONS:
            try:
                self.failure.remove(name, version, reason)
            except KeyError:
                pass
        for labels in [k for k in self.step_labels if k[:2] == (name, version)]:
            self.step_s.remove(*labels)
            self.step_labels.discard(labels)


class ModelMetrics:
    """The children of every family for one model version (label lookups done once)."""

    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self._metrics, self._labels = metrics, (name, version)
        m = metrics
        self.success = m.success.labels(name, version)
        self.inferences = m.inferences.labels(name, version)
        self.executions = m.executions.labels(name, version)
        self.request_s = m.request_s.labels(name, version)
        self.queue_s = m.queue_s.labels(name, version)
        self.compute_s = m.compute_s.labels(name, version)
        self.batch_size = m.batch_size.labels(name, version)
        self.pending = m.pending.labels(name, version)
        self.inflight = m.inflight.labels(name, version)
        self.load_s = m.load_s.labels(name, version)
        self.resident = m.resident.labels(name, version)
        self.responses = m.responses.labels(name, version)
        self.images = m.images.labels(name, version)
        self.audio_s = m.audio_s.labels(name, version)
        self.rtf = m.rtf.labels(name, version)
        self.chunks = m.chunks.labels(name, version)

    def step(self, step: str):
        labels = (*self._labels, step)
        self._metrics.step_labels.add(labels)
        return self._metrics.step_s.labels(*labels)

    def failure(self, reason: str) -> None:
        self._metrics.failure.labels(*self._labels, reason).inc()


class GpuCollector:
    """NVML readings at scrape time; yields nothing on a host without a GPU or pynvml."""

    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # ImportError, or NVMLError on a host without a driver
            self._nvml = None

    def collect(self):
        if self._nvml is None:
            return
        nv = self._nvml
        util = GaugeMetricFamily("deepserve_gpu_utilization_ratio", "GPU utilization (0..1)", labels=["gpu_uuid"])
        used = GaugeMetricFamily("deepserve_gpu_memory_used_bytes", "GPU memory used", labels=["gpu_uuid"])
        total = GaugeMetricFamily("deepserve_gpu_memory_total_bytes", "GPU memory total", labels=["gpu_uuid"])
        try:
            for index in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                uuid = nv.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([uuid], nv.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                used.add_metric([uuid], memory.used)
                total.add_metric([uuid], memory.total)
        except nv.NVMLError as exc:
            log.warning("NVML read failed: %s", exc)
        yield from (util, used, total)
