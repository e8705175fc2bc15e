"""The gRPC face of the engine: convert once at the edge, map domain errors to status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from lamina.server.api import convert
from lamina.server.engine import Engine
from lamina.server.errors import LaminaError, Unavailable
from lamina.server.metrics import Metrics
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")


class ServingState:
    """Whether RPCs are answered: not while starting up nor while draining."""

    def __init__(self) -> None:
        self.reason: str | None = "starting up: models are loading"
        self.in_flight = 0  # RPCs being answered now

    def check(self) -> None:
        if self.reason is not None:
            raise Unavailable(self.reason)


class EmbedServicer(pb_grpc.EmbedServiceServicer):
    def __init__(self, engine: Engine, state: ServingState, metrics: Metrics) -> None:
        self.engine = engine
        self.state = state
        self.metrics = metrics

    async def Embed(  # gRPC method names
        self,
        request: pb.EmbedRequest,
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> pb.EmbedResponse:
        async def answer() -> pb.EmbedResponse:
            result = await self.engine.embed(
                convert.embed_request(request), timeout=context.time_remaining()
            )
            return convert.embed_response(result)

        # Labels only: a hosting value outside the API's set is rejected before it counts.
        hosting = request.hosting if request.hosting in convert.HOSTINGS else None
        return await self._serve("Embed", request.model, context, answer, request.nice, hosting)

    async def SemanticEmbed(
        self,
        request: pb.SemanticEmbedRequest,
        context: grpc.aio.ServicerContext[pb.SemanticEmbedRequest, pb.SemanticEmbedResponse],
    ) -> pb.SemanticEmbedResponse:
        async def answer() -> pb.SemanticEmbedResponse:
            result = await self.engine.semantic_embed(
                convert.semantic_embed_request(request), timeout=context.time_remaining()
            )
            return convert.semantic_embed_response(result)

        hosting = request.hosting if request.hosting in convert.HOSTINGS else None
        return await self._serve(
            "SemanticEmbed", request.model, context, answer, request.nice, hosting
        )

    async def BatchSemanticEmbed(
        self,
        request: pb.BatchSemanticEmbedRequest,
        context: grpc.aio.ServicerContext[
            pb.BatchSemanticEmbedRequest, pb.BatchSemanticEmbedResponse
        ],
    ) -> pb.BatchSemanticEmbedResponse:
        async def answer() -> pb.BatchSemanticEmbedResponse:
            result = await self.engine.semantic_embed(
                convert.batch_semantic_embed_request(request), timeout=context.time_remaining()
            )
            return convert.batch_semantic_embed_response(result)

        hosting = request.hosting if request.hosting in convert.HOSTINGS else None
        return await self._serve(
            "BatchSemanticEmbed", request.model, context, answer, request.nice, hosting
        )

    async def ModelsAvailable(
        self,
        request: pb.ModelsAvailableRequest,
        context: grpc.aio.ServicerContext[pb.ModelsAvailableRequest, pb.ModelsAvailableResponse],
    ) -> pb.ModelsAvailableResponse:
        async def answer() -> pb.ModelsAvailableResponse:
            return pb.ModelsAvailableResponse(
                models=[convert.model_info(m) for m in self.engine.models()]
            )

        return await self._serve("ModelsAvailable", "", context, answer)

    async def Tokenize(
        self,
        request: pb.TokenizeRequest,
        context: grpc.aio.ServicerContext[pb.TokenizeRequest, pb.TokenizeResponse],
    ) -> pb.TokenizeResponse:
        async def answer() -> pb.TokenizeResponse:
            pieces, ids = await self.engine.tokenize(request.model, request.prompt)
            response = pb.TokenizeResponse()
            # SetInParent: an asked-for list is present even when the text has no tokens.
            if request.tokens:
                response.tokens.SetInParent()
                response.tokens.tokens.extend(pieces)
            if request.token_ids:
                response.token_ids.SetInParent()
                response.token_ids.ids.extend(ids)
            return response

        return await self._serve("Tokenize", request.model, context, answer)

    async def Detokenize(
        self,
        request: pb.DetokenizeRequest,
        context: grpc.aio.ServicerContext[pb.DetokenizeRequest, pb.DetokenizeResponse],
    ) -> pb.DetokenizeResponse:
        async def answer() -> pb.DetokenizeResponse:
            text = await self.engine.detokenize(request.model, list(request.token_ids))
            return pb.DetokenizeResponse(result=text)

        return await self._serve("Detokenize", request.model, context, answer)

    async def _serve(
        self,
        method: str,
        model: str,
        context: grpc.aio.ServicerContext[Any, Any],
        answer: Callable[[], Awaitable[Reply]],
        nice: bool = False,
        hosting: str | None = None,
    ) -> Reply:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        self.state.in_flight += 1
        try:
            self.state.check()
            return await answer()
        except LaminaError as error:
            code = grpc.StatusCode[error.code.value]
            retry = error.retry_after_seconds
            # Clients and proxies read the hint from trailing metadata as well as from the text.
            trailers = () if retry is None else (("retry-after", str(max(1, round(retry)))),)
            await context.abort(code, error.message, trailing_metadata=trailers)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the caller went away: nothing to answer or log
            raise
        except Exception:
            log.exception("%s failed", method)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, f"{method}: internal error; the server logged the details")
        finally:
            self.state.in_flight -= 1
            # Label only served model names: arbitrary client strings would explode the series.
            known = model if model in self.engine else ""
            elapsed = time.monotonic() - started
            self.metrics.observe_rpc(method, known, code.name, elapsed, nice, hosting)
        raise AssertionError("unreachable: context.abort raises")
