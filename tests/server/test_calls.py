"""calls.py as a unit, against a fake engine: the one gate both edges pass (serving state,
in-flight count, the outcome each call is counted under, faults kept out of the answer) and the
labels an edge sets."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from lamina.server.calls import CallRecord, Calls, ServingState
from lamina.server.domain import EmbedRequest, EmbedResult, Pooling, TextItem, Timing
from lamina.server.engine import Engine
from lamina.server.errors import ErrorCode, LaminaError, QueueFull, Unavailable
from lamina.server.metrics import Metrics
from lamina.server.observability.requests import Incoming

SERVED = "served-model"


class FakeEngine:
    """Serves one model name; `embed` answers what it is told to, or raises it."""

    def __init__(self) -> None:
        self.answer: object = EMBEDDED
        self.seen: list[tuple[EmbedRequest, float | None]] = []

    def __contains__(self, name: str) -> bool:
        return name == SERVED

    async def embed(self, request: EmbedRequest, timeout: float | None) -> Any:
        self.seen.append((request, timeout))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def calls_of(engine: FakeEngine, *, serving: bool = True) -> Calls:
    state = ServingState()
    if serving:
        state.reason = None
    return Calls(cast(Engine, engine), state, Metrics())


def counted(calls: Calls, method: str, model: str, outcome: str) -> float:
    labels = {"method": method, "model": model, "code": outcome, "nice": "false", "hosting": "any"}
    value = calls.metrics.registry.get_sample_value("lamina_requests_total", labels)
    return 0.0 if value is None else value


REQUEST = EmbedRequest(SERVED, (TextItem("hi"),), (0,), (Pooling.MEAN,))
EMBEDDED = EmbedResult(SERVED, {}, None, 1, Timing(0.0, 0.0, 0.0))


async def run(calls: Calls, record: CallRecord) -> object:
    with calls.answering(record, Incoming("grpc", "a-request-id")):
        assert calls.state.in_flight == 1
        return await calls.embed(REQUEST, 2.5)


async def test_a_call_reaches_the_engine_and_is_counted_ok() -> None:
    engine = FakeEngine()
    calls = calls_of(engine)
    record = CallRecord("Embed")
    record.set_labels(SERVED)
    assert await run(calls, record) is EMBEDDED
    assert engine.seen == [(REQUEST, 2.5)]
    assert counted(calls, "Embed", SERVED, "OK") == 1
    assert calls.state.in_flight == 0


async def test_no_call_is_answered_while_not_serving() -> None:
    engine = FakeEngine()
    calls = calls_of(engine, serving=False)
    with pytest.raises(Unavailable, match="starting up"):
        await run(calls, CallRecord("Embed"))
    assert engine.seen == [] and calls.state.in_flight == 0
    assert counted(calls, "Embed", "", "UNAVAILABLE") == 1


async def test_a_domain_error_is_counted_under_its_grpc_status_name() -> None:
    engine = FakeEngine()
    engine.answer = QueueFull(1, 10, "limits", retry_after_seconds=1.0)
    calls = calls_of(engine)
    record = CallRecord("Embed")
    record.set_labels(SERVED)
    with pytest.raises(QueueFull):
        await run(calls, record)
    assert counted(calls, "Embed", SERVED, "RESOURCE_EXHAUSTED") == 1


async def test_a_fault_becomes_an_internal_error_with_its_details_kept_out() -> None:
    engine = FakeEngine()
    engine.answer = KeyError("a secret detail")
    calls = calls_of(engine)
    with pytest.raises(LaminaError) as error:
        await run(calls, CallRecord("Embed"))
    assert error.value.code is ErrorCode.INTERNAL
    assert error.value.message == "Embed: internal error; the server logged the details"
    assert "secret" not in error.value.message
    assert isinstance(error.value.__cause__, KeyError)
    assert counted(calls, "Embed", "", "INTERNAL") == 1


async def test_a_caller_gone_is_counted_cancelled() -> None:
    engine = FakeEngine()
    engine.answer = asyncio.CancelledError()
    calls = calls_of(engine)
    with pytest.raises(asyncio.CancelledError):
        await run(calls, CallRecord("Embed"))
    assert counted(calls, "Embed", "", "CANCELLED") == 1 and calls.state.in_flight == 0


async def test_only_served_model_names_and_known_hostings_become_labels() -> None:
    calls = calls_of(FakeEngine())
    stranger = CallRecord("Embed")
    stranger.set_labels("x" * 10_000, nice=True, hosting="anywhere-else")
    assert stranger.hosting is None and stranger.nice
    await run(calls, stranger)
    labels = {"method": "Embed", "model": "", "code": "OK", "nice": "true", "hosting": "any"}
    assert calls.metrics.registry.get_sample_value("lamina_requests_total", labels) == 1
    pinned = CallRecord("Embed")
    pinned.set_labels(SERVED, hosting="aleph-alpha")
    assert pinned.hosting == "aleph-alpha"
