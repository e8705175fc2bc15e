"""The gRPC face of the API: each RPC is one of `Calls`, with domain errors mapped to status
codes and the caller's deadline passed on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from lamina.server.api.calls import CallRecord, Calls
from lamina.server.errors import LaminaError
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc

Reply = TypeVar("Reply")
Context = grpc.aio.ServicerContext[Any, Any]


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
