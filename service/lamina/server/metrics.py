"""Prometheus metrics, on their own registry and port (names prefixed `lamina_`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lamina.server.scheduling.job import Job

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOKENS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lamina_requests",
            "RPCs answered, by method, model and gRPC status code.",
            ["method", "model", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "lamina_request_duration_seconds",
            "Time from receiving an RPC to answering it.",
            ["method", "model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "lamina_queue_duration_seconds",
            "Time a request waited before its batch ran.",
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
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "lamina_batch_rows", "Requests per batch.", ["model"], buckets=_ROWS, registry=r
        )
        self.batch_tokens = Histogram(
            "lamina_batch_padded_tokens",
            "Rows x padded length per batch.",
            ["model"],
            buckets=_TOKENS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "lamina_queue_depth",
            "Requests waiting for a batch, all models (autoscaling signal).",
            registry=r,
        )
        self.ready = Gauge("lamina_ready", "1 while the server is serving.", registry=r)
        self.in_flight = Gauge("lamina_in_flight_requests", "RPCs being answered now.", registry=r)

    def track(self, queue_depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(queue_depth()))
        self.in_flight.set_function(lambda: float(in_flight()))

    def observe_request(self, model: str, prompt_tokens: int, queue_seconds: float) -> None:
        self.prompt_tokens.labels(model).observe(prompt_tokens)
        self.queue_seconds.labels(model).observe(queue_seconds)

    def observe_batch(self, model: str, jobs: Sequence[Job], seconds: float) -> None:
        longest = max(job.prompt.length for job in jobs)
        self.batch_seconds.labels(model).observe(seconds)
        self.batch_rows.labels(model).observe(len(jobs))
        self.batch_tokens.labels(model).observe(longest * len(jobs))

    def observe_rpc(self, method: str, model: str, code: str, seconds: float) -> None:
        self.requests.labels(method, model, code).inc()
        self.request_seconds.labels(method, model).observe(seconds)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
