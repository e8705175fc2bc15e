"""The gRPC edge: each RPC converts its message to domain types once (api/wire.py), runs one of
`Calls` with the caller's deadline, and converts the result back; domain errors become status
codes and protobuf field paths (api/status.py).

The servicer is registered with lenient request deserializers (`add_to_server`): bytes that do not
parse as the method's request message are answered INVALID_ARGUMENT and logged as one warning
line, where gRPC's own handling would answer UNKNOWN and log a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from lamina.server.api import wire
from lamina.server.api.status import status_of
from lamina.server.calls import CallRecord, Calls
from lamina.server.errors import LaminaError
from lamina.server.observability import tracing
from lamina.server.observability.requests import REQUEST_ID_HEADER, Incoming, request_id_from
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")
Context = grpc.aio.ServicerContext[Any, Any]
SERVICE = pb.DESCRIPTOR.services_by_name["EmbedService"]
# One warning line per this many seconds at most, however many bad messages arrive.
UNDECODABLE_LOG_SECONDS = 10.0


class EmbedServicer(pb_grpc.EmbedServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        async def answer() -> pb.EmbedResponse:
            embed = await _converted(wire.embed_request, request)
            result = await self.calls.embed(embed, context.time_remaining())
            with tracing.child("reply"):
                return wire.embed_response(result)

        return await self._answer(_labelled("Embed", request), context, answer)

    async def SemanticEmbed(
        self, request: pb.SemanticEmbedRequest, context: Context
    ) -> pb.SemanticEmbedResponse:
        async def answer() -> pb.SemanticEmbedResponse:
            semantic = await _converted(wire.semantic_embed_request, request)
            result = await self.calls.semantic_embed(semantic, context.time_remaining())
            with tracing.child("reply"):
                return wire.semantic_embed_response(result)

        return await self._answer(_labelled("SemanticEmbed", request), context, answer)

    async def BatchSemanticEmbed(
        self, request: pb.BatchSemanticEmbedRequest, context: Context
    ) -> pb.BatchSemanticEmbedResponse:
        async def answer() -> pb.BatchSemanticEmbedResponse:
            semantic = await _converted(wire.batch_semantic_embed_request, request)
            result = await self.calls.semantic_embed(semantic, context.time_remaining())
            with tracing.child("reply"):
                return wire.batch_semantic_embed_response(result)

        return await self._answer(_labelled("BatchSemanticEmbed", request), context, answer)

    async def Embeddings(
        self, request: pb.EmbeddingsRequest, context: Context
    ) -> pb.EmbeddingsResponse:
        async def answer() -> pb.EmbeddingsResponse:
            converted = await _converted(wire.embeddings_request, request)
            result = await self.calls.embeddings(converted, context.time_remaining())
            with tracing.child("reply"):
                return wire.embeddings_response(converted.model, result)

        return await self._answer(_labelled("Embeddings", request), context, answer)

    async def InstructableEmbed(
        self, request: pb.InstructableEmbedRequest, context: Context
    ) -> pb.InstructableEmbedResponse:
        async def answer() -> pb.InstructableEmbedResponse:
            instructable = await _converted(wire.instructable_embed_request, request)
            result = await self.calls.instructable_embed(instructable, context.time_remaining())
            with tracing.child("reply"):
                return wire.instructable_embed_response(result)

        return await self._answer(_labelled("InstructableEmbed", request), context, answer)

    async def ModelsAvailable(
        self, request: pb.ModelsAvailableRequest, context: Context
    ) -> pb.ModelsAvailableResponse:
        async def answer() -> pb.ModelsAvailableResponse:
            return pb.ModelsAvailableResponse(
                models=[wire.model_info(m) for m in self.calls.models()],
                versions=wire.version_states(self.calls.version_states()),
            )

        return await self._answer(CallRecord("ModelsAvailable"), context, answer)

    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        async def answer() -> pb.TokenizeResponse:
            pieces, ids = await self.calls.tokenize(request.model, request.prompt)
            return wire.tokenize_response(request, pieces, ids)

        record = CallRecord("Tokenize")
        record.set_labels(request.model)
        return await self._answer(record, context, answer)

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: Context
    ) -> pb.DetokenizeResponse:
        async def answer() -> pb.DetokenizeResponse:
            text = await self.calls.detokenize(request.model, request.token_ids)
            return pb.DetokenizeResponse(result=text)

        record = CallRecord("Detokenize")
        record.set_labels(request.model)
        return await self._answer(record, context, answer)

    async def _answer(
        self, record: CallRecord, context: Context, answer: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        incoming = _incoming(record.method, context)
        await context.send_initial_metadata(((REQUEST_ID_HEADER, incoming.request_id),))
        try:
            with self.calls.answering(record, incoming):
                return await answer()
        except LaminaError as error:
            status, details = status_of(error)
            retry = error.retry_after_seconds
            # Clients and proxies read the hint from trailing metadata as well as from the text.
            trailers = () if retry is None else (("retry-after", str(max(1, round(retry)))),)
            await context.abort(status, details, trailing_metadata=trailers)
        raise AssertionError("unreachable: context.abort raises")


def _incoming(method: str, context: Context) -> Incoming:
    """The call as the request scope sees it, its span named and described by OpenTelemetry's
    RPC conventions."""
    headers = {
        key: value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)  # binary (-bin) entries carry no id nor trace context
    }
    return Incoming(
        "grpc",
        request_id_from(headers),
        headers,
        span_name=f"{SERVICE.full_name}/{method}",
        attributes={"rpc.system": "grpc", "rpc.service": SERVICE.full_name, "rpc.method": method},
        status_attributes=_grpc_status,
    )


def _grpc_status(name: str) -> dict[str, str | int]:
    code: int = grpc.StatusCode[name].value[0]
    return {"rpc.grpc.status_code": code}


def _labelled(method: str, request: wire.AnyEmbedRequest | pb.EmbeddingsRequest) -> CallRecord:
    record = CallRecord(method)
    hosting = request.hosting if request.HasField("hosting") else None
    record.set_labels(request.model, request.nice, hosting)
    return record


# Converting a message walks every token id in Python: past this size it runs on a thread, so the
# event loop keeps answering others while it does.
LARGE_MESSAGE_BYTES = 1 << 20
M = TypeVar("M", bound=Message)
D = TypeVar("D")


async def _converted(conversion: Callable[[M], D], message: M) -> D:
    if message.ByteSize() > LARGE_MESSAGE_BYTES:
        return await asyncio.to_thread(conversion, message)
    return conversion(message)


@dataclass(frozen=True)
class Undecodable:
    """What the lenient deserializer hands on for bytes that are not the request message."""

    problem: str


class _UndecodableLog:
    """Warns about the first undecodable message, then at most once per interval with a count."""

    def __init__(self, interval: float = UNDECODABLE_LOG_SECONDS) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._unlogged = 0

    def record(self, method: str, problem: str) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more since the last warning)" if self._unlogged else ""
        log.warning(
            "%s: undecodable request message answered INVALID_ARGUMENT: %s%s", method, problem, more
        )
        self._last, self._unlogged = now, 0


def _lenient(message_type: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, UnicodeDecodeError) as error:
            return Undecodable(f"{type(error).__name__}: {str(error)[:200]}")

    return deserialize


def add_to_server(
    servicer: EmbedServicer, server: grpc.aio.Server, on_undecodable: Callable[[str], None]
) -> None:
    """Register every EmbedService method, as the generated add_*_to_server does, with lenient
    deserializers. `on_undecodable(method)` counts each refused message."""
    warnings = _UndecodableLog()

    def handler(method: str, request_type: type[Message]) -> grpc.RpcMethodHandler[Any, Any]:
        answer = getattr(servicer, method)

        async def behaviour(request: Message | Undecodable, context: Context) -> Message:
            if isinstance(request, Undecodable):
                on_undecodable(method)
                warnings.record(method, request.problem)
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {request_type.DESCRIPTOR.full_name} message "
                    f"({request.problem})",
                )
            reply: Message = await answer(request, context)
            return reply

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=_lenient(request_type),
            response_serializer=lambda reply: reply.SerializeToString(),
        )

    handlers = {
        method.name: handler(method.name, getattr(pb, method.input_type.name))
        for method in SERVICE.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]
