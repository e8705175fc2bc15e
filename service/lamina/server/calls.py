"""The API's operations on its protobuf messages, shared by both edges: the gRPC servicer and the
HTTP gateway (which reads its JSON into the same messages). Each call converts once, asks the
engine, and is counted; the edges only move bytes and map errors to their status codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message
from tokenizers import Tokenizer

from lamina.server.api import wire
from lamina.server.engine import Engine
from lamina.server.errors import LaminaError, Unavailable
from lamina.server.metrics import Metrics
from lamina.v1 import embed_pb2 as pb

log = logging.getLogger(__name__)


class ServingState:
    """Whether calls are answered: not while starting up nor while draining."""

    def __init__(self) -> None:
        self.reason: str | None = "starting up: models are loading"
        self.in_flight = 0  # calls being answered now

    def check(self) -> None:
        if self.reason is not None:
            raise Unavailable(self.reason)


@dataclass
class CallRecord:
    """What the metrics label one call with; the labels are filled in once its request is read."""

    method: str  # the gRPC method name, also for HTTP routes
    model: str = ""
    nice: bool = False
    hosting: str | None = None

    def describe(self, message: wire.AnyEmbedRequest) -> None:
        self.model = message.model
        self.nice = message.nice
        # A hosting value outside the API's set is rejected before it would count.
        self.hosting = message.hosting if message.hosting in wire.HOSTINGS else None


class Calls:
    def __init__(self, engine: Engine, state: ServingState, metrics: Metrics) -> None:
        self.engine = engine
        self.state = state
        self.metrics = metrics

    @contextlib.contextmanager
    def answering(self, record: CallRecord) -> Iterator[None]:
        """Counts the call in flight and in the metrics, refuses it while not serving, and turns
        an unexpected failure into an INTERNAL LaminaError (the details go to the log only)."""
        started = time.monotonic()
        code = "OK"
        self.state.in_flight += 1
        try:
            self.state.check()
            yield
        except LaminaError as error:
            code = error.code.value
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"  # the caller went away: nothing to answer or log
            raise
        except Exception as error:
            log.exception("%s failed", record.method)
            code = "INTERNAL"
            raise LaminaError(
                f"{record.method}: internal error; the server logged the details"
            ) from error
        finally:
            self.state.in_flight -= 1
            # Label only served model names: arbitrary client strings would explode the series.
            known = record.model if record.model in self.engine else ""
            elapsed = time.monotonic() - started
            self.metrics.observe_rpc(
                record.method, known, code, elapsed, record.nice, record.hosting
            )

    async def embed(
        self, message: pb.EmbedRequest, timeout: float | None, record: CallRecord
    ) -> pb.EmbedResponse:
        record.describe(message)
        result = await self.engine.embed(await _converted(wire.embed_request, message), timeout)
        return wire.embed_response(result)

    async def semantic_embed(
        self, message: pb.SemanticEmbedRequest, timeout: float | None, record: CallRecord
    ) -> pb.SemanticEmbedResponse:
        record.describe(message)
        result = await self.engine.semantic_embed(
            await _converted(wire.semantic_embed_request, message), timeout
        )
        return wire.semantic_embed_response(result)

    async def batch_semantic_embed(
        self, message: pb.BatchSemanticEmbedRequest, timeout: float | None, record: CallRecord
    ) -> pb.BatchSemanticEmbedResponse:
        record.describe(message)
        result = await self.engine.semantic_embed(
            await _converted(wire.batch_semantic_embed_request, message), timeout
        )
        return wire.batch_semantic_embed_response(result)

    async def tokenize(
        self, message: pb.TokenizeRequest, record: CallRecord
    ) -> pb.TokenizeResponse:
        record.model = message.model
        pieces, ids = await self.engine.tokenize(message.model, message.prompt)
        reply = pb.TokenizeResponse()
        # SetInParent: an asked-for list is present even when the text has no tokens.
        if message.tokens:
            reply.tokens.SetInParent()
            reply.tokens.tokens.extend(pieces)
        if message.token_ids:
            reply.token_ids.SetInParent()
            reply.token_ids.ids.extend(ids)
        return reply

    async def detokenize(
        self, message: pb.DetokenizeRequest, record: CallRecord
    ) -> pb.DetokenizeResponse:
        record.model = message.model
        text = await self.engine.detokenize(message.model, message.token_ids)
        return pb.DetokenizeResponse(result=text)

    def models_available(self) -> pb.ModelsAvailableResponse:
        return pb.ModelsAvailableResponse(models=[wire.model_info(m) for m in self.engine.models()])

    def tokenizer(self, model: str, record: CallRecord) -> Tokenizer | None:
        record.model = model
        return self.engine.tokenizer(model)


# Converting a message walks every token id in Python: past this size it runs on a thread, so the
# event loop keeps answering others while it does.
LARGE_MESSAGE_BYTES = 1 << 20
M = TypeVar("M", bound=Message)
D = TypeVar("D")


async def _converted(conversion: Callable[[M], D], message: M) -> D:
    if message.ByteSize() > LARGE_MESSAGE_BYTES:
        return await asyncio.to_thread(conversion, message)
    return conversion(message)
