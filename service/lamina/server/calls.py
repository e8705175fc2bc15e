"""The API's operations in domain types, shared by both edges (the gRPC servicer and the HTTP
gateway): each edge converts its wire format once, on either side of these.

`answering` is the one gate every call passes: it counts the call in flight and in the metrics,
refuses it while the server is not serving, and turns an unexpected failure into an internal
LaminaError whose details go to the log only. It also opens the call's request scope (its id,
its span, its access log line: observability/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lamina.server import fields
from lamina.server.domain import (
    EmbeddingsRequest,
    EmbedRequest,
    EmbedResult,
    InstructableEmbedRequest,
    InstructableEmbedResult,
    ModelDescription,
    ModelVersionState,
    SemanticEmbedRequest,
    SemanticEmbedResult,
)
from lamina.server.engine import Engine
from lamina.server.errors import ErrorCode, LaminaError, Unavailable
from lamina.server.metrics import Metrics
from lamina.server.observability import logs, tracing
from lamina.server.observability.requests import (
    Incoming,
    RequestScope,
    current,
    note_timing,
)

log = logging.getLogger(__name__)

# The API's name for each kind of failure, gRPC's status names (docs/api.md), one vocabulary
# over both edges: the gRPC edge answers the status of that name, the HTTP edge's error bodies
# carry it as `code`, and lamina_requests_total counts each call under it.
STATUS_NAMES = {
    ErrorCode.INVALID: "INVALID_ARGUMENT",
    ErrorCode.NOT_FOUND: "NOT_FOUND",
    ErrorCode.UNSERVABLE: "FAILED_PRECONDITION",
    ErrorCode.OVERLOADED: "RESOURCE_EXHAUSTED",
    ErrorCode.DEADLINE: "DEADLINE_EXCEEDED",
    ErrorCode.UNAVAILABLE: "UNAVAILABLE",
    ErrorCode.INTERNAL: "INTERNAL",
}


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
    """What the metrics label one call with. The edge sets the labels as soon as it has read
    them off the wire, before converting the rest: a call refused for a bad field still counts
    under its model."""

    method: str  # the gRPC method name, also for HTTP routes
    model: str = ""
    nice: bool = False
    hosting: str | None = None

    def set_labels(self, model: str, nice: bool = False, hosting: str | None = None) -> None:
        self.model = model
        self.nice = nice
        # A hosting value outside the API's set is refused before it would count.
        self.hosting = hosting if hosting in fields.HOSTINGS else None


class Calls:
    def __init__(self, engine: Engine, state: ServingState, metrics: Metrics) -> None:
        self.engine = engine
        self.state = state
        self.metrics = metrics

    @contextlib.contextmanager
    def answering(self, record: CallRecord, incoming: Incoming) -> Iterator[RequestScope]:
        started = time.monotonic()
        outcome = "OK"
        scope = RequestScope(incoming.request_id, incoming.edge, record.method)
        span_name = incoming.span_name or record.method
        with tracing.request_span(span_name, incoming.headers, incoming.attributes) as span:
            scope.trace_id = tracing.trace_id(span)
            token = current.set(scope)
            self.state.in_flight += 1
            try:
                self.state.check()
                yield scope
            except LaminaError as error:
                outcome = STATUS_NAMES[error.code]
                raise
            except asyncio.CancelledError:
                outcome = "CANCELLED"  # the caller went away: nothing to answer
                raise
            except Exception as error:
                log.exception("%s failed", record.method)
                outcome = "INTERNAL"
                raise LaminaError(
                    f"{record.method}: internal error; the server logged the details"
                ) from error
            finally:
                self.state.in_flight -= 1
                # Label only served model names: arbitrary client strings would explode the
                # series.
                known = record.model if record.model in self.engine else ""
                elapsed = time.monotonic() - started
                self.metrics.observe_rpc(
                    record.method,
                    known,
                    outcome,
                    elapsed,
                    record.nice,
                    record.hosting,
                    trace_id=scope.trace_id,
                )
                tracing.finish(
                    span,
                    outcome,
                    {
                        "lamina.request_id": scope.request_id,
                        "lamina.model": known,
                        **incoming.status_attributes(outcome),
                    },
                )
                logs.access(scope, known, outcome, elapsed)
                current.reset(token)

    async def embed(self, request: EmbedRequest, timeout: float | None) -> EmbedResult:
        result = await self.engine.embed(request, timeout)
        note_timing(result.timing, result.num_tokens_prompt_total)
        return result

    async def semantic_embed(
        self, request: SemanticEmbedRequest, timeout: float | None
    ) -> SemanticEmbedResult:
        result = await self.engine.semantic_embed(request, timeout)
        note_timing(result.timing, result.num_tokens_prompt_total)
        return result

    async def embeddings(
        self, request: EmbeddingsRequest, timeout: float | None
    ) -> SemanticEmbedResult:
        result = await self.engine.embeddings(request, timeout)
        note_timing(result.timing, result.num_tokens_prompt_total)
        return result

    async def instructable_embed(
        self, request: InstructableEmbedRequest, timeout: float | None
    ) -> InstructableEmbedResult:
        result = await self.engine.instructable_embed(request, timeout)
        note_timing(result.timing, result.num_tokens_prompt_total)
        return result

    async def tokenize(self, model: str, text: str) -> tuple[list[str], list[int]]:
        return await self.engine.tokenize(model, text)

    async def detokenize(self, model: str, ids: Sequence[int]) -> str:
        return await self.engine.detokenize(model, ids)

    def models(self) -> list[ModelDescription]:
        return self.engine.models()

    def version_states(self) -> list[ModelVersionState]:
        """Every version of every model, also one none of whose versions serves."""
        return self.engine.version_states()

    async def tokenizer_json(self, model: str) -> str | None:
        """The serving version's tokenizer.json; None for a model without one (an image
        encoder)."""
        return await self.engine.tokenizer_json(model)
