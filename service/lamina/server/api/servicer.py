"""The gRPC face of the API: each RPC is one of `Calls`, with domain errors mapped to status
codes and the caller's deadline passed on.

The servicer is registered with lenient request deserializers (`add_to_server`): bytes that do not
parse as the method's request message are answered INVALID_ARGUMENT and logged as one warning
line, where gRPC's own handling would answer UNKNOWN and log a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from lamina.server.calls import CallRecord, Calls
from lamina.server.errors import LaminaError
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
        record = CallRecord("Embed")
        return await self._answer(
            record, context, lambda: self.calls.embed(request, context.time_remaining(), record)
        )

    async def SemanticEmbed(
        self, request: pb.SemanticEmbedRequest, context: Context
    ) -> pb.SemanticEmbedResponse:
        record = CallRecord("SemanticEmbed")
        return await self._answer(
            record,
            context,
            lambda: self.calls.semantic_embed(request, context.time_remaining(), record),
        )

    async def BatchSemanticEmbed(
        self, request: pb.BatchSemanticEmbedRequest, context: Context
    ) -> pb.BatchSemanticEmbedResponse:
        record = CallRecord("BatchSemanticEmbed")
        return await self._answer(
            record,
            context,
            lambda: self.calls.batch_semantic_embed(request, context.time_remaining(), record),
        )

    async def ModelsAvailable(
        self, request: pb.ModelsAvailableRequest, context: Context
    ) -> pb.ModelsAvailableResponse:
        async def answer() -> pb.ModelsAvailableResponse:
            return self.calls.models_available()

        return await self._answer(CallRecord("ModelsAvailable"), context, answer)

    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        record = CallRecord("Tokenize")
        return await self._answer(record, context, lambda: self.calls.tokenize(request, record))

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: Context
    ) -> pb.DetokenizeResponse:
        record = CallRecord("Detokenize")
        return await self._answer(record, context, lambda: self.calls.detokenize(request, record))

    async def _answer(
        self, record: CallRecord, context: Context, answer: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        try:
            with self.calls.answering(record):
                return await answer()
        except LaminaError as error:
            retry = error.retry_after_seconds
            # Clients and proxies read the hint from trailing metadata as well as from the text.
            trailers = () if retry is None else (("retry-after", str(max(1, round(retry)))),)
            await context.abort(
                grpc.StatusCode[error.code.value], error.message, trailing_metadata=trailers
            )
        raise AssertionError("unreachable: context.abort raises")


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
