"""Prometheus metrics, on their own registry and port (names prefixed `lamina_`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lamina.server.scheduling.job import Job
from lamina.server.scheduling.queue import RequestQueue

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Finer around the default segment (25 ms), which bounds how long urgent work waits.
_SEGMENT_SECONDS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 1, 5)
_TOKENS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
_RATIO = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class _QueueCollector(Collector):
    """Queue depth by tier and hosting, read from the queue at scrape time."""

    def __init__(self, queue: Callable[[], RequestQueue | None]) -> None:
        self._queue = queue

    def collect(self) -> Iterable[Metric]:
        requests = GaugeMetricFamily(
            "lamina_queue_depth_requests",
            "Requests waiting for a batch, by tier (normal/nice) and hosting (autoscaling signal).",
            labels=["tier", "hosting"],
        )
        tokens = GaugeMetricFamily(
            "lamina_queue_depth_tokens",
            "Prompt tokens waiting for a batch, by tier and hosting.",
            labels=["tier", "hosting"],
        )
        queue = self._queue()
        depth = queue.depth(time.monotonic()) if queue is not None else {}
        for tier in ("normal", "nice"):
            for hosting in sorted({h for _, h in depth} | {"any"}):
                seen = depth.get((tier, hosting))
                requests.add_metric([tier, hosting], seen.requests if seen else 0)
                tokens.add_metric([tier, hosting], seen.tokens if seen else 0)
        yield requests
        yield tokens


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._queue: RequestQueue | None = None
        self._parked_models: dict[str, set[str]] = {}  # by pool: every model ever parked there
        r.register(_QueueCollector(lambda: self._queue))
        self.requests = Counter(
            "lamina_requests",
            "RPCs answered, by method, model, gRPC status code, nice and hosting.",
            ["method", "model", "code", "nice", "hosting"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "lamina_request_duration_seconds",
            "End to end: receiving an RPC to answering it.",
            ["method", "model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "lamina_queue_duration_seconds",
            "Time a request waited before its batch ran.",
            ["model", "nice"],
            buckets=_SECONDS,
            registry=r,
        )
        self.tokenization_seconds = Histogram(
            "lamina_tokenization_duration_seconds",
            "Time to build a request's token sequence.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.prompt_tokens = Histogram(
            "lamina_prompt_tokens",
            "Prompt positions per embed request, special tokens included.",
            ["model"],
            buckets=_TOKENS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "lamina_batch_duration_seconds",
            "Inference and pooling time of one batch.",
            ["pool", "model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "lamina_batch_rows", "Requests per batch.", ["pool", "model"], buckets=_ROWS, registry=r
        )
        self.batch_tokens = Histogram(
            "lamina_batch_padded_tokens",
            "Rows x padded length per batch.",
            ["pool", "model"],
            buckets=_TOKENS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "lamina_batch_padding_ratio",
            "Share of a batch's positions that are padding.",
            ["pool", "model"],
            buckets=_RATIO,
            registry=r,
        )
        self.tokens_processed = Counter(
            "lamina_tokens_processed",
            "Prompt tokens run through a model (padding excluded).",
            ["pool", "model"],
            registry=r,
        )
        self.pool_requests = Counter(
            "lamina_pool_requests",
            "Requests run by each pool, by the hosting they asked for.",
            ["pool", "hosting"],
            registry=r,
        )
        self.pool_busy_seconds = Counter(
            "lamina_pool_busy_seconds",
            "Time each pool spent running batches.",
            ["pool"],
            registry=r,
        )
        self.segment_seconds = Histogram(
            "lamina_segment_duration_seconds",
            "One segment of a batch: the longest a pool runs before it can yield to urgent work.",
            ["pool", "model"],
            buckets=_SEGMENT_SECONDS,
            registry=r,
        )
        self.preemptions = Counter(
            "lamina_preemptions",
            "Batches parked between segments so that more urgent work could run first.",
            ["pool", "model"],
            registry=r,
        )
        self.parked_batches = Gauge(
            "lamina_parked_batches",
            "Batches parked on each pool now, waiting to resume.",
            ["pool", "model"],
            registry=r,
        )
        self.parked_bytes = Gauge(
            "lamina_parked_bytes",
            "Memory the parked batches hold (inputs, state, layers returned so far).",
            ["pool", "model"],
            registry=r,
        )
        self.model_version = Gauge(
            "lamina_model_version",
            "The version of each model that serves (0: none loaded).",
            ["model"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "lamina_model_load_failures",
            "Model versions rejected because they failed to load.",
            ["model"],
            registry=r,
        )
        self.nonfinite_results = Counter(
            "lamina_nonfinite_results",
            "Embeddings with NaN or infinity, answered INTERNAL instead (should stay 0).",
            ["model"],
            registry=r,
        )
        self.undecodable_requests = Counter(
            "lamina_undecodable_requests",
            "gRPC messages that did not parse as their request type (INVALID_ARGUMENT).",
            ["method"],
            registry=r,
        )
        self.ready = Gauge("lamina_ready", "1 while the server is serving.", registry=r)
        self.in_flight = Gauge("lamina_in_flight_requests", "RPCs being answered now.", registry=r)
        self.auth_refused = Counter(
            "lamina_auth_refused",
            "RPCs refused as UNAUTHENTICATED (missing or unknown bearer token).",
            registry=r,
        )

    def track(self, queue: RequestQueue, in_flight: Callable[[], int]) -> None:
        self._queue = queue
        self.in_flight.set_function(lambda: float(in_flight()))

    def model_loaded(self, model: str, version: int) -> None:
        self.model_version.labels(model).set(version)

    def model_rejected(self, model: str) -> None:
        self.model_load_failures.labels(model).inc()

    def observe_request(
        self, model: str, prompt_tokens: int, queue_seconds: float, nice: bool
    ) -> None:
        self.prompt_tokens.labels(model).observe(prompt_tokens)
        self.queue_seconds.labels(model, str(nice).lower()).observe(queue_seconds)

    def observe_batch(self, pool: str, jobs: Sequence[Job], seconds: float) -> None:
        model = jobs[0].model.name
        real = sum(job.tokens for job in jobs)
        padded = max(job.tokens for job in jobs) * len(jobs)
        self.batch_seconds.labels(pool, model).observe(seconds)
        self.batch_rows.labels(pool, model).observe(len(jobs))
        self.batch_tokens.labels(pool, model).observe(padded)
        self.padding_ratio.labels(pool, model).observe(1 - real / padded)
        self.tokens_processed.labels(pool, model).inc(real)
        self.pool_busy_seconds.labels(pool).inc(seconds)
        for job in jobs:
            self.pool_requests.labels(pool, job.hosting or "any").inc()

    def observe_parked(self, pool: str, held: Mapping[str, tuple[int, int]]) -> None:
        """`held`: what is parked on `pool` now, by model; models absent hold nothing."""
        for model in self._parked_models.setdefault(pool, set()) | set(held):
            batches, size = held.get(model, (0, 0))
            self.parked_batches.labels(pool, model).set(batches)
            self.parked_bytes.labels(pool, model).set(size)
        self._parked_models[pool] |= set(held)

    def observe_rpc(
        self,
        method: str,
        model: str,
        code: str,
        seconds: float,
        nice: bool,
        hosting: str | None,
        trace_id: str = "",
    ) -> None:
        self.requests.labels(method, model, code, str(nice).lower(), hosting or "any").inc()
        # The exemplar links the bucket to a trace (OpenMetrics exposition only).
        exemplar = {"trace_id": trace_id} if trace_id else None
        self.request_seconds.labels(method, model).observe(seconds, exemplar)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
