"""Following one request through a real server: its spans (the SDK's in-memory exporter in
process; a real OTLP/HTTP receiver on loopback for a `lamina serve` process), its request id on
both edges, its JSON log lines, and the exemplar linking its latency to its trace. No prompt text
ever shows in a span or a log line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lamina.server.observability import logs, tracing
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.gateway.support import Gateway, threaded_server
from tests.integration.support import wait_until_serving

MINILM = "all-minilm-l6-v2"
SECRET = "zebra-pass-phrase"  # prompt text that must never leave the request
CHILDREN = {"tokenize", "admission", "queue", "batch", "pooling", "reply"}


def traceparent(trace: int, span: int) -> str:
    return f"00-{trace:032x}-{span:016x}-01"


def embed(text: str) -> pb.EmbedRequest:
    item = pb.PromptItem(text=pb.TextItem(data=text))
    return pb.EmbedRequest(
        model=MINILM, prompt=pb.Prompt(items=[item]), layers=[-1], pooling=["mean"]
    )


@pytest.fixture(scope="module")
def gateway(model_repository: Path) -> Iterator[Gateway]:
    # Batches run whole and wait a moment for company: six concurrent requests share one.
    scheduling = SchedulingPolicy(max_wait_seconds=0.05, segment_seconds=0)
    with threaded_server(
        model_repository, metrics_port=free_port(), scheduling=scheduling
    ) as running:
        yield running


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


@pytest.fixture
def json_lines() -> Iterator[list[dict[str, object]]]:
    """What the server logs meanwhile, through the JSON formatter --log-format json installs."""
    lines: list[dict[str, object]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = Collect()
    handler.addFilter(logs.RequestFields())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)  # setLevel, not the attribute: loggers cache isEnabledFor
    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def no_secret_in(spans: tuple[ReadableSpan, ...]) -> None:
    for span in spans:
        texts = [span.name, *(str(v) for v in (span.attributes or {}).values())]
        assert not any(SECRET in text for text in texts), span.name


def test_a_batched_grpc_request_is_one_trace_from_the_caller_through_its_batch(
    gateway: Gateway, spans: InMemorySpanExporter, json_lines: list[dict[str, object]]
) -> None:
    callers = {f"caller-{i}": (0xABC0 + i, 0x100 + i) for i in range(6)}
    with grpc.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.EmbedServiceStub(channel)
        calls = {
            rid: stub.Embed.future(
                embed(f"{SECRET} number {i} " * 20),
                metadata=(("x-request-id", rid), ("traceparent", traceparent(*ids))),
            )
            for i, (rid, ids) in enumerate(callers.items())
        }
        for rid, call in calls.items():
            assert call.result(timeout=60).embeddings
            assert ("x-request-id", rid) in call.initial_metadata()
    finished = spans.get_finished_spans()
    no_secret_in(finished)
    by_id = {s.context.span_id: s for s in finished if s.context is not None}
    batches = [s for s in finished if s.name == "batch" and s.parent is None]
    assert max(len(s.links) for s in batches) >= 2, "no batch served two of the requests"
    for batch in batches:
        attributes = batch.attributes or {}
        assert attributes["lamina.batch.rows"] == len(batch.links)
        assert attributes["lamina.provider"] == "CPUExecutionProvider"
        assert attributes["lamina.precision"] == "fp32" and attributes["lamina.model"] == MINILM
    for rid, (trace, parent) in callers.items():
        (server,) = [s for s in finished if (s.attributes or {}).get("lamina.request_id") == rid]
        assert server.name == "lamina.v1.EmbedService/Embed"
        assert server.context is not None and server.context.trace_id == trace
        assert server.parent is not None and server.parent.span_id == parent
        assert (server.attributes or {})["rpc.grpc.status_code"] == 0
        children = [
            s
            for s in finished
            if s.parent is not None and s.parent.span_id == server.context.span_id
        ]
        assert {s.name for s in children} == CHILDREN
        (ran_in,) = [s for s in children if s.name == "batch"]
        (link,) = ran_in.links
        batch = by_id[link.context.span_id]
        assert any(back.context.span_id == server.context.span_id for back in batch.links)
        access = [
            line
            for line in json_lines
            if line["logger"] == "lamina.access" and line["request_id"] == rid
        ]
        assert len(access) == 1
        assert access[0]["trace_id"] == format(trace, "032x")
        assert access[0]["status"] == "OK" and access[0]["edge"] == "grpc"
        assert access[0]["tokens"] and access[0]["model"] == MINILM
    assert not any(SECRET in json.dumps(line) for line in json_lines)


def post(
    gateway: Gateway, path: str, body: object, headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        gateway.url + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_http_requests_carry_their_id_and_the_callers_trace(
    gateway: Gateway, spans: InMemorySpanExporter, json_lines: list[dict[str, object]]
) -> None:
    good = {"model": MINILM, "prompt": f"{SECRET} over http", "layers": [-1], "pooling": ["mean"]}
    status, headers = post(
        gateway, "embed", good, {"x-request-id": "http-1", "traceparent": traceparent(7, 9)}
    )
    assert status == 200 and headers["x-request-id"] == "http-1"
    bad = {**good, "pooling": ["no-such-pooling"]}
    status, headers = post(gateway, "embed", bad, {})
    made = headers["x-request-id"]
    assert status == 400 and len(made) == 32
    finished = spans.get_finished_spans()
    no_secret_in(finished)
    servers = {
        (s.attributes or {}).get("lamina.request_id"): s
        for s in finished
        if s.name == "POST /embed"
    }
    ok, refused = servers["http-1"], servers[made]
    assert ok.context is not None and ok.context.trace_id == 7
    assert (ok.attributes or {})["http.response.status_code"] == 200
    assert {
        s.name for s in finished if s.parent and s.parent.span_id == ok.context.span_id
    } == CHILDREN
    assert (refused.attributes or {})["http.response.status_code"] == 400
    access = {line["request_id"]: line for line in json_lines if line["logger"] == "lamina.access"}
    assert access["http-1"]["edge"] == "http" and access["http-1"]["status"] == "OK"
    assert access[made]["status"] == "INVALID_ARGUMENT"
    assert not any(SECRET in json.dumps(line) for line in json_lines)


def test_latency_exemplars_name_the_trace(gateway: Gateway, spans: InMemorySpanExporter) -> None:
    trace = 0x5EED
    status, _ = post(
        gateway,
        "embed",
        {"model": MINILM, "prompt": "exemplar", "layers": [-1], "pooling": ["mean"]},
        {"traceparent": traceparent(trace, 1)},
    )
    assert status == 200
    port = gateway.instance.settings.metrics_port
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("lamina_request_duration_seconds_bucket")
    ]
    assert any(f'trace_id="{trace:032x}"' in line for line in lines)


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector's traces endpoint: every export it is sent, decoded."""

    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        assert self.path == "/v1/traces", self.path
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        Receiver.received.append(export)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_lamina_serve_exports_traces_over_otlp_and_logs_json(model_repository: Path) -> None:
    collector = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamina.server",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "0",
        "--model-repository",
        str(model_repository),
        "--threads",
        "1",
        "--log-format",
        "json",
        "--otlp-endpoint",
        f"http://127.0.0.1:{collector.server_address[1]}",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_serving(f"127.0.0.1:{port}", timeout=120)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            metadata = (("x-request-id", "otlp-1"), ("traceparent", traceparent(0xF00D, 3)))
            await stub.Embed(embed(f"{SECRET} to a collector"), metadata=metadata)
        process.send_signal(signal.SIGTERM)  # the exporter flushes on the way out
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        collector.shutdown()
    exported = [
        span
        for export in Receiver.received
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for span in exported if span.trace_id == (0xF00D).to_bytes(16, "big")}
    assert names == {"lamina.v1.EmbedService/Embed", *CHILDREN}
    assert SECRET not in str(Receiver.received)
    assert process.stderr is not None
    output = (await process.stderr.read()).decode().splitlines()
    lines = [json.loads(line) for line in output if line.startswith("{")]
    (access,) = [line for line in lines if line.get("request_id") == "otlp-1"]
    assert access["logger"] == "lamina.access" and access["trace_id"] == f"{0xF00D:032x}"
    assert not any(SECRET in json.dumps(line) for line in lines)
