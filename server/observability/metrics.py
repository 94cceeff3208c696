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
deepserve_batch_close_total{reason}          counter    why each batch was closed: max_batch_size,
                                                        preferred_size, max_queue_delay, queue_empty,
                                                        instance_idle (docs/batching.md)
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

Generation models (the continuous-batching engine), labels ``model``, ``version``:

=====================================================  =========  ==================================
name                                                   type       meaning
=====================================================  =========  ==================================
deepserve_generation_time_to_first_token_seconds      histogram  arrival -> first token sampled
deepserve_generation_time_per_output_token_seconds    histogram  between successive tokens of a sequence
deepserve_generation_e2e_request_latency_seconds      histogram  arrival -> last token of a request
deepserve_generation_prompt_tokens_total              counter    prompt tokens of admitted requests
deepserve_generation_output_tokens_total              counter    tokens generated
deepserve_generation_requests_running                 gauge      sequences in the running batch
deepserve_generation_requests_waiting                 gauge      sequences waiting (new or preempted)
deepserve_generation_kv_cache_usage_ratio             gauge      KV-cache blocks in use / all (0..1)
deepserve_generation_prefix_cache_queries_total       counter    prompt tokens looked up in the prefix cache
deepserve_generation_prefix_cache_hits_total          counter    of those, tokens found (hit rate = hits / queries)
deepserve_generation_preemptions_total                counter    sequences preempted (their blocks freed, recomputed later)
=====================================================  =========  ==================================

The same running, waiting and KV-usage gauges are exported under vLLM's names, label
``model_name``, for the Gateway API Inference Extension and vLLM dashboards:
``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``
(0..1, as vLLM reports it).

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

from server.scheduling.queue import CLOSE_REASONS

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
REQUEST_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0)
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
        self.batch_close = Counter("deepserve_batch_close", "Batches closed, by why they were closed", (*labels, "reason"),
                                   registry=r)
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
        self.generation = GenerationFamilies(r, labels)
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
                       self.audio_s, self.rtf, self.chunks, *self.generation.per_version()):
            try:
                metric.remove(name, version)
            except KeyError:
                pass
        for metric in self.generation.per_name():
            try:
                metric.remove(name)
            except KeyError:
                pass
        for reason in FAILURE_REASONS:
            try:
                self.failure.remove(name, version, reason)
            except KeyError:
                pass
        for reason in CLOSE_REASONS:
            try:
                self.batch_close.remove(name, version, reason)
            except KeyError:
                pass
        for labels in [k for k in self.step_labels if k[:2] == (name, version)]:
            self.step_s.remove(*labels)
            self.step_labels.discard(labels)


class GenerationFamilies:
    """The generation engine's families (created with every registry, so dashboards and
    scrapers see them before a generation model loads)."""

    def __init__(self, r: CollectorRegistry, labels: tuple[str, str]) -> None:
        p = "deepserve_generation_"
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Arrival to first token", labels,
                              buckets=REQUEST_BUCKETS_S, registry=r)
        self.tpot = Histogram(p + "time_per_output_token_seconds", "Time between successive tokens of a sequence",
                              labels, buckets=TOKEN_LATENCY_BUCKETS_S, registry=r)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Arrival to last token of a request", labels,
                             buckets=REQUEST_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens of admitted requests", labels, registry=r)
        self.output_tokens = Counter(p + "output_tokens", "Tokens generated", labels, registry=r)
        self.running = Gauge(p + "requests_running", "Sequences in the running batch", labels, registry=r)
        self.waiting = Gauge(p + "requests_waiting", "Sequences waiting (new or preempted)", labels, registry=r)
        self.kv_usage = Gauge(p + "kv_cache_usage_ratio", "KV-cache blocks in use / all blocks", labels, registry=r)
        self.prefix_queries = Counter(p + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache", labels,
                                      registry=r)
        self.prefix_hits = Counter(p + "prefix_cache_hits", "Prompt tokens found in the prefix cache", labels, registry=r)
        self.preemptions = Counter(p + "preemptions", "Sequences preempted (blocks freed, recomputed later)", labels,
                                   registry=r)
        # vLLM's names (label model_name), read by the Gateway API Inference Extension.
        self.vllm_running = Gauge("vllm:num_requests_running", "Sequences running (vLLM's name)", ("model_name",), registry=r)
        self.vllm_waiting = Gauge("vllm:num_requests_waiting", "Sequences waiting (vLLM's name)", ("model_name",), registry=r)
        self.vllm_kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 0..1 (vLLM's name)", ("model_name",), registry=r)

    def per_version(self) -> tuple:
        return (self.ttft, self.tpot, self.e2e, self.prompt_tokens, self.output_tokens, self.running, self.waiting,
                self.kv_usage, self.prefix_queries, self.prefix_hits, self.preemptions)

    def per_name(self) -> tuple:
        return (self.vllm_running, self.vllm_waiting, self.vllm_kv)


class GenerationMetrics:
    """One generation model version's children (what the engine reports to)."""

    def __init__(self, families: GenerationFamilies, name: str, version: str) -> None:
        f, labels = families, (name, version)
        self.ttft, self.tpot, self.e2e = f.ttft.labels(*labels), f.tpot.labels(*labels), f.e2e.labels(*labels)
        self.prompt_tokens, self.output_tokens = f.prompt_tokens.labels(*labels), f.output_tokens.labels(*labels)
        self.prefix_queries, self.prefix_hits = f.prefix_queries.labels(*labels), f.prefix_hits.labels(*labels)
        self.preemptions = f.preemptions.labels(*labels)
        self._gauges = ((f.running.labels(*labels), f.vllm_running.labels(name)),
                        (f.waiting.labels(*labels), f.vllm_waiting.labels(name)),
                        (f.kv_usage.labels(*labels), f.vllm_kv.labels(name)))

    def occupancy(self, running: int, waiting: int, kv_usage: float) -> None:
        for (ours, vllm), value in zip(self._gauges, (running, waiting, kv_usage), strict=True):
            ours.set(value)
            vllm.set(value)


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

    def batch_close(self, reason: str) -> None:
        self._metrics.batch_close.labels(*self._labels, reason).inc()

    def generation(self) -> GenerationMetrics:
        return GenerationMetrics(self._metrics.generation, *self._labels)


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
