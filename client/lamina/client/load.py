"""The engine of `lamina-client load`: ghz's load model on grpc.aio.

`concurrency` workers share `connections` channels round-robin (worker i uses channel i mod N);
each worker claims the next request number, waits for that number's slot when a rate is set
(slot k starts k / rps seconds into the run, so the whole run, not each worker, keeps the
pace), renders the call data for it, sends it and records latency and status. A run stops
after `total` requests, or, when `duration` is set, once it has run that long; calls already
in flight then finish and are counted (ghz's --duration-stop=wait).

Methods are resolved through the compiled descriptors this package carries, not server
reflection: those of lamina.v1 (and grpc.health.v1 when grpcio-health-checking is installed),
unary only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from lamina.client._channel import Security, open_aio_channel
from lamina.client.load_report import CallRecord, Report, progress_line
from lamina.client.load_templates import CallContext, Template, TemplateError, compile_template
from lamina.v1 import embed_pb2

DEFAULT_CALL = "lamina.v1.EmbedService.Embed"


class LoadError(Exception):
    """A load run that cannot start or go on: a bad call, bad data, no connection."""


@dataclass(frozen=True)
class LoadOptions:
    """One run, with every ghz setting already resolved to plain values."""

    host: str
    call: str = DEFAULT_CALL
    data: str = "{}"  # JSON text of one request object or an array of them, with templates
    metadata: Mapping[str, str] = field(default_factory=dict)  # values may hold templates
    concurrency: int = 50
    connections: int = 1
    rps: float = 0.0  # 0: as fast as the workers go
    total: int = 200  # ignored when duration is set
    duration: float = 0.0  # seconds; 0: stop after `total`
    max_duration: float = 0.0  # seconds; with `total`, stop early when this has passed
    timeout: float = 20.0  # per call, seconds; 0: none
    connect_timeout: float = 10.0
    skip_first: int = 0  # calls left out of the report, e.g. a warm-up
    max_recv_message_size: int | None = None  # bytes; None: Lamina's client default
    max_send_message_size: int | None = None
    security: Security = field(default_factory=Security)
    name: str = ""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.connections < 1:
            raise LoadError("concurrency and connections must be at least 1")
        if self.connections > self.concurrency:
            raise LoadError(
                f"{self.connections} connections need at least as many workers "
                f"(concurrency is {self.concurrency})"
            )
        if self.duration <= 0 and self.total < 1:
            raise LoadError("set a total of at least 1 request, or a duration")
        if min(self.rps, self.duration, self.max_duration, self.timeout, self.skip_first) < 0:
            raise LoadError("rps, durations, timeout and skipFirst cannot be negative")

    def described(self) -> dict[str, Any]:
        """The options as ghz's JSON report lists them (durations in nanoseconds)."""
        described: dict[str, Any] = {
            "call": self.call,
            "host": self.host,
            "insecure": not self.security.tls,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "rps": self.rps,
            "total": 0 if self.duration else self.total,
            "duration": round(self.duration * 1e9),
            "timeout": round(self.timeout * 1e9),
            "skipFirst": self.skip_first,
        }
        if self.name:
            described["name"] = self.name
        return described


@dataclass(frozen=True)
class Method:
    full_name: str  # lamina.v1.EmbedService.Embed
    path: str  # /lamina.v1.EmbedService/Embed, as it goes on the wire
    input_class: type[Message]
    output_class: type[Message]


def resolve_method(call: str) -> Method:
    """'package.Service.Method' or 'package.Service/Method' to the method's message classes."""
    name = call.strip().lstrip("/").replace("/", ".")
    pool = descriptor_pool.Default()
    try:
        descriptor: MethodDescriptor = pool.FindMethodByName(name)
    except KeyError:
        raise LoadError(f"unknown call {call!r}; known: {', '.join(known_methods())}") from None
    if descriptor.client_streaming or descriptor.server_streaming:
        raise LoadError(f"{name} is a streaming method; lamina-client load sends unary calls")
    service = descriptor.containing_service.full_name
    return Method(
        full_name=name,
        path=f"/{service}/{descriptor.name}",
        input_class=message_factory.GetMessageClass(descriptor.input_type),
        output_class=message_factory.GetMessageClass(descriptor.output_type),
    )


def known_methods() -> list[str]:
    services = list(embed_pb2.DESCRIPTOR.services_by_name.values())
    try:  # grpcio-health-checking is the server's, not the bare client's
        from grpc_health.v1 import health_pb2

        services += health_pb2.DESCRIPTOR.services_by_name.values()
    except ImportError:
        pass
    return [
        f"{service.full_name}.{method.name}"
        for service in services
        for method in service.methods
        if not (method.client_streaming or method.server_streaming)
    ]


class RequestData:
    """Call data: JSON text of one request or an array of them (sent round-robin), whose
    templates are rendered per request before it is parsed into the method's request type."""

    def __init__(self, text: str, method: Method) -> None:
        self._method = method
        self._template = compile_template(text)
        # Without templates every request of one array slot is the same: parse once.
        self._fixed = self._parse(text) if self._template.static else None

    def request(self, context: CallContext) -> Message:
        number = context.request_number
        if self._fixed is not None:
            return self._fixed[number % len(self._fixed)]
        return self._parse(self._template.render(context), number)[0]

    def _parse(self, text: str, number: int | None = None) -> list[Message]:
        """Every message of `text`; with a request `number`, only the one that request sends."""
        which = "" if number is None else f" (request {number})"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise LoadError(f"call data{which} is not valid JSON: {error}") from None
        objects = data if isinstance(data, list) else [data]
        if not objects or not all(isinstance(o, dict) for o in objects):
            raise LoadError("call data must be a JSON object or a non-empty array of objects")
        messages = []
        for i, obj in enumerate(objects if number is None else [objects[number % len(objects)]]):
            message = self._method.input_class()
            try:
                json_format.ParseDict(obj, message)
            except json_format.ParseError as error:
                name = self._method.input_class.DESCRIPTOR.full_name
                where = f" item {i}" if len(objects) > 1 and number is None else ""
                raise LoadError(f"call data{which}{where} is not a {name}: {error}") from None
            messages.append(message)
        return messages


def status_name(code: grpc.StatusCode) -> str:
    """The code as ghz (Go) prints it: OK, NotFound, InvalidArgument, Canceled, ..."""
    special = {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}
    return special.get(code) or "".join(word.capitalize() for word in code.name.split("_"))


Call = Callable[..., Any]  # a grpc.aio unary-unary multicallable


class LoadRun:
    """One run of `options`: checked on construction, then `await run()` once.

    `calls` and `errors` count as the run goes, for progress lines; `report()` can also be
    asked of a run cut short.
    """

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.method = resolve_method(options.call)
        self._data = RequestData(options.data, self.method)
        self._metadata: dict[str, Template] = {
            # gRPC metadata keys are lowercase; ghz lowercases them too.
            key.lower(): compile_template(value)
            for key, value in options.metadata.items()
        }
        self._fixed_metadata = options.security.metadata()
        self.records: list[CallRecord] = []
        self.errors = 0
        self._next = 0
        self._started: float | None = None
        self._finished: float | None = None
        self._interval = 1 / options.rps if options.rps else 0.0
        stops = [s for s in (options.duration, options.max_duration) if s > 0]
        self._stop_after = min(stops) if stops else None
        # Render the first request now, so bad data fails before any call is made.
        self._data.request(self._context("g0c0w0", 0))

    @property
    def calls(self) -> int:
        return len(self.records)

    @property
    def started(self) -> bool:
        return self._started is not None

    def elapsed(self) -> float:
        if self._started is None:
            return 0.0
        return (self._finished or time.perf_counter()) - self._started

    async def run(self) -> Report:
        options = self.options
        channels = [
            open_aio_channel(options.host, options.security, self._channel_options())
            for _ in range(options.connections)
        ]
        try:
            await self._connect(channels)
            calls = [
                channel.unary_unary(
                    self.method.path,
                    request_serializer=_serialize,
                    response_deserializer=self.method.output_class.FromString,
                )
                for channel in channels
            ]
            self._started = time.perf_counter()
            await asyncio.gather(
                *(self._worker(i, calls[i % len(calls)]) for i in range(options.concurrency))
            )
            self._finished = time.perf_counter()
        finally:
            await asyncio.gather(*(channel.close(None) for channel in channels))
        return self.report()

    def report(self, end_reason: str = "normal") -> Report:
        return Report.of(
            self.records[self.options.skip_first :],
            self.elapsed(),
            end_reason=end_reason,
            options=self.options.described(),
        )

    def _channel_options(self) -> list[tuple[str, Any]]:
        # Channels with equal arguments share one TCP connection in gRPC core; a local
        # subchannel pool gives each its own, as --connections promises.
        extra: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
        if self.options.max_recv_message_size is not None:
            extra.append(("grpc.max_receive_message_length", self.options.max_recv_message_size))
        if self.options.max_send_message_size is not None:
            extra.append(("grpc.max_send_message_length", self.options.max_send_message_size))
        return extra

    async def _connect(self, channels: list[grpc.aio.Channel]) -> None:
        seconds = self.options.connect_timeout
        try:
            await asyncio.wait_for(
                asyncio.gather(*(channel.channel_ready() for channel in channels)), seconds
            )
        except TimeoutError:
            raise LoadError(
                f"could not connect to {self.options.host} within {seconds:g} s"
            ) from None

    def _claim(self) -> int | None:
        """The next request number to send, or None when the run is over."""
        number = self._next
        if self.options.duration <= 0 and number >= self.options.total:
            return None
        # With a time limit, a number whose slot (without a rate: now) is past it is not sent.
        due = max(number * self._interval, self.elapsed())
        if self._stop_after is not None and due >= self._stop_after:
            return None
        self._next += 1
        return number

    async def _worker(self, index: int, call: Call) -> None:
        worker_id = f"g0c{index % self.options.connections}w{index}"
        timeout = self.options.timeout or None
        while (number := self._claim()) is not None:
            if self._interval and self._started is not None:
                delay = self._started + number * self._interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            context = self._context(worker_id, number)
            request = self._data.request(context)
            metadata = self._fixed_metadata + tuple(
                (key, template.render(context)) for key, template in self._metadata.items()
            )
            started = time.perf_counter()
            try:
                await call(request, timeout=timeout, metadata=metadata)
                record = CallRecord(time.perf_counter() - started, "OK")
            except grpc.aio.AioRpcError as error:
                status = status_name(error.code())
                record = CallRecord(
                    time.perf_counter() - started,
                    status,
                    f"rpc error: code = {status} desc = {error.details()}",
                )
                self.errors += 1
            self.records.append(record)

    def _context(self, worker_id: str, number: int) -> CallContext:
        return CallContext.now(
            worker_id,
            number,
            self.method.full_name,
            self.method.input_class.DESCRIPTOR.name,
            self.method.output_class.DESCRIPTOR.name,
        )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def run_with_progress(run: LoadRun, stream: TextIO, interval: float | None = None) -> Report:
    """`run.run()` with a progress line on `stream`: rewritten in place on a terminal; else a
    new line every `interval` seconds (default 5) and a last one when the run ends."""
    tty = stream.isatty()
    interval = interval or (0.5 if tty else 5.0)
    task = asyncio.ensure_future(run.run())
    while not task.done():
        await asyncio.wait([task], timeout=interval)
        if run.started:
            line = progress_line(run.elapsed(), run.calls, run.errors)
            ending = "\n" if task.done() else ""
            stream.write(f"\r{line}\x1b[K{ending}" if tty else f"{line}\n")
            stream.flush()
    return task.result()


__all__ = [
    "DEFAULT_CALL",
    "LoadError",
    "LoadOptions",
    "LoadRun",
    "TemplateError",
    "resolve_method",
    "run_with_progress",
]
