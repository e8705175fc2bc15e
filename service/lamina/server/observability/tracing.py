"""OpenTelemetry traces of requests and batches.

Off unless an OTLP endpoint is configured: `--otlp-endpoint` (with `--otlp-protocol`), or the
SDK's own `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and the other
standard variables. Off, every call here is a no-op of the API's default tracer.

On, each call is one SERVER span that continues the caller's W3C `traceparent` (gRPC metadata or
HTTP header), with children for tokenization (and image decoding), admission, the queue wait,
the batch it ran in and pooling, and the reply. A batch serves many requests, so it is a span of
its own, linked to each request it served, and each request's `batch` child links back to it.
Spans carry counts, names and durations: never prompt content, never a credential.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

PROTOCOLS = ("http/protobuf", "grpc")
Attributes = Mapping[str, str | int | float | bool]

_tracer: trace.Tracer = trace.NoOpTracer()


def use(provider: TracerProvider | None) -> None:
    """Trace through `provider` from now on (None: not at all)."""
    global _tracer
    _tracer = trace.NoOpTracer() if provider is None else provider.get_tracer("lamina")


def enabled() -> bool:
    return not isinstance(_tracer, trace.NoOpTracer)


def configured_endpoint(flag: str | None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether tracing is on: the flag, or either of the SDK's endpoint variables."""
    return bool(
        flag
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def install(
    endpoint: str | None,
    protocol: str | None,
    version: str,
    environ: Mapping[str, str] = os.environ,
) -> TracerProvider | None:
    """The provider exporting to the configured endpoint, now in use; None when none is."""
    if not configured_endpoint(endpoint, environ):
        return None
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: "lamina", SERVICE_VERSION: version})
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(endpoint, protocol, environ)))
    use(provider)
    return provider


def _exporter(
    endpoint: str | None, protocol: str | None, environ: Mapping[str, str]
) -> SpanExporter:
    chosen = (
        protocol
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if chosen not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {chosen!r}: expected one of {', '.join(PROTOCOLS)}")
    # Without the flag, the SDK reads its variables itself (endpoint, headers, certificates).
    if chosen == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint) if endpoint else GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    if not endpoint:
        return HttpExporter()
    # As OTEL_EXPORTER_OTLP_ENDPOINT: the collector's base address, traces under /v1/traces.
    base = endpoint.rstrip("/")
    return HttpExporter(endpoint=base if base.endswith("/v1/traces") else f"{base}/v1/traces")


def continued(headers: Mapping[str, str]) -> otel_context.Context:
    """The caller's trace context (W3C traceparent and tracestate), or an empty one."""
    return propagate.extract(headers)


@contextlib.contextmanager
def request_span(
    name: str, headers: Mapping[str, str], attributes: Attributes
) -> Iterator[trace.Span]:
    """The call's SERVER span, current while the call runs."""
    span = _tracer.start_span(
        name, context=continued(headers), kind=SpanKind.SERVER, attributes=attributes
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    finally:
        otel_context.detach(token)
        span.end()


def finish(span: trace.Span, status: str, attributes: Attributes) -> None:
    span.set_attributes(attributes)
    span.set_attribute("lamina.status", status)
    if status not in ("OK", "CANCELLED"):
        span.set_status(Status(StatusCode.ERROR, status))


def trace_id(span: trace.Span) -> str:
    """The span's trace id in hex; empty when it is not recorded."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid and span.is_recording() else ""


@contextlib.contextmanager
def child(name: str, attributes: Attributes | None = None) -> Iterator[trace.Span]:
    """A child of the current span, around a step that runs now."""
    with _tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def current_context() -> SpanContext:
    return trace.get_current_span().get_span_context()


def wall_ns(monotonic_at: float) -> int:
    """A time.monotonic() reading as the wall-clock nanoseconds spans are stamped in."""
    return time.time_ns() - int((time.monotonic() - monotonic_at) * 1e9)


def span_between(
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Attributes | None = None,
    links: Sequence[SpanContext] = (),
    root: bool = False,
) -> SpanContext:
    """A span of something already over (a queue wait, a batch): a child of the current span,
    or a trace of its own (`root`)."""
    context = otel_context.Context() if root else None
    span = _tracer.start_span(
        name,
        context=context,
        start_time=start_ns,
        attributes=attributes,
        links=[Link(c) for c in links if c.is_valid],
    )
    span.end(end_time=max(start_ns, end_ns))
    return span.get_span_context()
