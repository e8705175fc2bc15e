"""observability/ as units: request ids, log lines (text and JSON) carrying them, and the request
span `Calls.answering` opens, continuing a caller's W3C trace context, with the SDK's in-memory
exporter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import cast

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lamina.server.calls import CallRecord
from lamina.server.domain import Timing
from lamina.server.errors import QueueFull
from lamina.server.observability import logs, tracing
from lamina.server.observability.requests import (
    Incoming,
    RequestScope,
    current,
    note_timing,
    request_id_from,
)
from tests.server.test_calls import REQUEST, SERVED, FakeEngine, calls_of

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


def test_a_sensible_caller_request_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_from({"x-request-id": "req-42.a:b"}) == "req-42.a:b"
    for bad in ("", "has space", "x" * 129, "new\nline", "ünï"):
        made = request_id_from({"x-request-id": bad})
        assert made != bad and len(made) == 32 and int(made, 16) >= 0
    assert request_id_from({}) != request_id_from({})  # a new one each time


def captured(log_format: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RequestFields())
    handler.setFormatter(logs.JsonFormatter() if log_format == "json" else logs.TextFormatter())
    logger = logging.getLogger(f"lamina.test.{log_format}")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.INFO
    return logger, stream


def test_json_lines_parse_and_carry_the_request_they_were_written_for() -> None:
    logger, stream = captured("json")
    logger.info("outside any call")
    token = current.set(RequestScope("rid-1", "grpc", "Embed", trace_id=CALLER_TRACE))
    try:
        logger.warning("inside %s", "a call")
    finally:
        current.reset(token)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert outside["request_id"] is None and outside["message"] == "outside any call"
    assert inside["request_id"] == "rid-1" and inside["trace_id"] == CALLER_TRACE
    assert inside["level"] == "WARNING" and inside["logger"] == "lamina.test.json"
    assert inside["message"] == "inside a call" and inside["time"].endswith("+00:00")


def test_text_lines_name_the_request_too() -> None:
    logger, stream = captured("text")
    token = current.set(RequestScope("rid-2", "http", "Embed"))
    try:
        logger.info("hello")
    finally:
        current.reset(token)
    assert stream.getvalue().rstrip().endswith("hello [request_id=rid-2]")


def test_the_access_line_holds_outcome_and_timing(caplog: pytest.LogCaptureFixture) -> None:
    scope = RequestScope("rid-3", "grpc", "Embed")
    token = current.set(scope)
    try:
        note_timing(Timing(0.001, 0.002, 0.003, 0.004), tokens=7)
        with caplog.at_level(logging.INFO, logger="lamina.access"):
            logs.access(scope, SERVED, "OK", 0.0125)
    finally:
        current.reset(token)
    (record,) = caplog.records
    fields = getattr(record, logs.FIELDS)
    assert fields == {
        "edge": "grpc",
        "method": "Embed",
        "model": SERVED,
        "status": "OK",
        "duration_seconds": 0.0125,
        "tokens": 7,
        "queue_seconds": 0.001,
        "tokenization_seconds": 0.002,
        "inference_seconds": 0.003,
        "parked_seconds": 0.004,
    }
    assert json.loads(logs.JsonFormatter().format(record))["status"] == "OK"


async def test_a_call_continues_the_callers_trace_and_says_how_it_ended(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()
    calls = calls_of(engine)
    incoming = Incoming(
        "grpc",
        "rid-4",
        {"traceparent": TRACEPARENT},
        span_name="lamina.v1.EmbedService/Embed",
        attributes={"rpc.system": "grpc"},
        status_attributes=lambda name: {"edge.status": name.lower()},
    )
    record = CallRecord("Embed")
    record.set_labels(SERVED)
    caplog.handler.addFilter(logs.RequestFields())
    with caplog.at_level(logging.INFO, logger="lamina.access"):
        with calls.answering(record, incoming) as scope:
            assert scope.trace_id == CALLER_TRACE and current.get() is scope
            await calls.embed(REQUEST, None)
        engine.answer = QueueFull(3, 30, "limits", retry_after_seconds=1.0)
        with pytest.raises(QueueFull), calls.answering(CallRecord("Embed"), incoming):
            await calls.embed(REQUEST, None)
    assert current.get() is None
    ok, refused = cast(tuple[ReadableSpan, ReadableSpan], spans.get_finished_spans())
    for span in (ok, refused):
        assert span.kind == SpanKind.SERVER and span.name == "lamina.v1.EmbedService/Embed"
        assert span.context is not None and format(span.context.trace_id, "032x") == CALLER_TRACE
        assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN
        assert span.attributes is not None and span.attributes["lamina.request_id"] == "rid-4"
    assert ok.attributes is not None and ok.attributes["edge.status"] == "ok"
    assert ok.attributes["lamina.model"] == SERVED and ok.status.status_code == StatusCode.UNSET
    assert refused.attributes is not None
    assert refused.attributes["lamina.status"] == "RESOURCE_EXHAUSTED"
    assert refused.status.status_code == StatusCode.ERROR
    statuses = [getattr(r, logs.FIELDS)["status"] for r in caplog.records]
    assert statuses == ["OK", "RESOURCE_EXHAUSTED"]
    assert [r.request_id for r in caplog.records] == ["rid-4", "rid-4"]  # type: ignore[attr-defined]


async def test_without_an_endpoint_nothing_is_traced() -> None:
    assert tracing.install(None, None, "0", environ={}) is None
    assert not tracing.enabled()
    calls = calls_of(FakeEngine())
    with calls.answering(CallRecord("Embed"), Incoming("http", "rid-5")) as scope:
        assert scope.trace_id == ""


def test_the_endpoint_flag_is_a_base_address_as_the_sdk_variable_is() -> None:
    exporter = tracing._exporter("http://collector:4318/", None, {})
    assert getattr(exporter, "_endpoint", None) == "http://collector:4318/v1/traces"
    with pytest.raises(ValueError, match="OTLP protocol 'thrift'"):
        tracing._exporter("http://collector:4318", "thrift", {})


def test_grpc_is_the_other_protocol_and_the_variables_choose_too() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

    assert isinstance(tracing._exporter("http://127.0.0.1:4317", "grpc", {}), Grpc)
    chosen = tracing._exporter(None, None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert isinstance(chosen, Grpc)
    assert tracing.configured_endpoint(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c"})
    assert not tracing.configured_endpoint(None, {})
