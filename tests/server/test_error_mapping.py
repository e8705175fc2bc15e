"""Domain errors to what each edge answers, as units: the gRPC status, message and retry-after
trailer (api/servicer.py), and the HTTP status, `{"error", "code"}` body and headers
(gateway/errors.py). The servicer runs against fake calls and a fake context; no server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any, cast

import grpc
import pytest

from lamina.server.api.servicer import EmbedServicer
from lamina.server.calls import CallRecord, Calls
from lamina.server.errors import (
    DeadlineExceeded,
    ErrorCode,
    HostingUnavailable,
    InvalidArgument,
    LaminaError,
    ModelNotFound,
    QueueFull,
    Unavailable,
)
from lamina.server.gateway.errors import (
    HTTP_STATUS,
    MAX_MESSAGE_BYTES,
    UNAUTHENTICATED,
    BodyTooLarge,
    NoTokenizer,
    error_body,
    error_response,
    internal_error,
    json_field,
)
from lamina.v1 import embed_pb2 as pb

# One error of each kind the domain raises, with the gRPC status it must map to.
ERRORS: list[tuple[LaminaError, grpc.StatusCode]] = [
    (
        InvalidArgument("layers[0]", "layer 7 is past the model's 6"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (ModelNotFound("nope", ["a", "b"]), grpc.StatusCode.NOT_FOUND),
    (HostingUnavailable("aleph-alpha", ()), grpc.StatusCode.FAILED_PRECONDITION),
    (
        QueueFull(4, 400, "limits 4 requests", retry_after_seconds=2.6),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    (DeadlineExceeded(0.5), grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unavailable("draining: the server is shutting down"), grpc.StatusCode.UNAVAILABLE),
    (LaminaError("Embed: internal error"), grpc.StatusCode.INTERNAL),
]


class Aborted(Exception):
    """What grpc.aio's context.abort raises: the RPC ends there."""


class FakeContext:
    def __init__(self, time_remaining: float | None = 12.5) -> None:
        self._time_remaining = time_remaining
        self.aborted: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None

    def time_remaining(self) -> float | None:
        return self._time_remaining

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.aborted = (code, details, tuple(trailing_metadata))
        raise Aborted


class FakeCalls:
    """Records what each call was given; answers `reply`, or raises `error`."""

    def __init__(self, error: LaminaError | None = None) -> None:
        self.error = error
        self.seen: list[tuple[str, Any, float | None, str]] = []
        self.answering_records: list[str] = []

    @contextlib.contextmanager
    def answering(self, record: CallRecord) -> Iterator[None]:
        self.answering_records.append(record.method)
        yield

    def _answer(self, name: str, request: Any, timeout: float | None, record: CallRecord) -> str:
        self.seen.append((name, request, timeout, record.method))
        if self.error is not None:
            raise self.error
        return f"reply to {name}"

    async def embed(self, request: Any, timeout: float | None, record: CallRecord) -> str:
        return self._answer("embed", request, timeout, record)

    async def semantic_embed(self, request: Any, timeout: float | None, record: CallRecord) -> str:
        return self._answer("semantic_embed", request, timeout, record)

    async def batch_semantic_embed(
        self, request: Any, timeout: float | None, record: CallRecord
    ) -> str:
        return self._answer("batch_semantic_embed", request, timeout, record)

    async def tokenize(self, request: Any, record: CallRecord) -> str:
        return self._answer("tokenize", request, None, record)

    async def detokenize(self, request: Any, record: CallRecord) -> str:
        return self._answer("detokenize", request, None, record)

    def models_available(self) -> str:
        if self.error is not None:
            raise self.error
        return "reply to models_available"


def servicer_of(calls: FakeCalls) -> EmbedServicer:
    return EmbedServicer(cast(Calls, calls))


def grpc_context(context: FakeContext) -> Any:
    return context


# --- gRPC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "status"), ERRORS, ids=lambda e: type(e).__name__)
async def test_each_domain_error_aborts_with_its_status_and_message(
    error: LaminaError, status: grpc.StatusCode
) -> None:
    context = FakeContext()
    with pytest.raises(Aborted):
        await servicer_of(FakeCalls(error)).Embed(pb.EmbedRequest(), grpc_context(context))
    assert context.aborted is not None
    code, details, trailers = context.aborted
    assert (code, details) == (status, error.message)
    assert trailers == ((("retry-after", "3"),) if isinstance(error, QueueFull) else ())


@pytest.mark.parametrize(("hint", "trailer"), [(0.1, "1"), (1.0, "1"), (2.4, "2"), (2.6, "3")])
async def test_the_retry_after_trailer_is_whole_seconds_and_at_least_one(
    hint: float, trailer: str
) -> None:
    context = FakeContext()
    refused = QueueFull(1, 10, "limits", retry_after_seconds=hint)
    with pytest.raises(Aborted):
        await servicer_of(FakeCalls(refused)).Embed(pb.EmbedRequest(), grpc_context(context))
    assert context.aborted is not None and context.aborted[2] == (("retry-after", trailer),)


async def test_each_rpc_reaches_its_call_with_its_name_and_the_callers_deadline() -> None:
    calls = FakeCalls()
    servicer = servicer_of(calls)
    context = grpc_context(FakeContext(time_remaining=12.5))
    embed, semantic = pb.EmbedRequest(model="e"), pb.SemanticEmbedRequest(model="s")
    batch, tokenize = pb.BatchSemanticEmbedRequest(model="b"), pb.TokenizeRequest(model="t")
    detokenize = pb.DetokenizeRequest(model="d")
    replies = [
        await servicer.Embed(embed, context),
        await servicer.SemanticEmbed(semantic, context),
        await servicer.BatchSemanticEmbed(batch, context),
        await servicer.Tokenize(tokenize, context),
        await servicer.Detokenize(detokenize, context),
        await servicer.ModelsAvailable(pb.ModelsAvailableRequest(), context),
    ]
    assert replies == [
        "reply to embed",
        "reply to semantic_embed",
        "reply to batch_semantic_embed",
        "reply to tokenize",
        "reply to detokenize",
        "reply to models_available",
    ]
    assert calls.seen == [
        ("embed", embed, 12.5, "Embed"),
        ("semantic_embed", semantic, 12.5, "SemanticEmbed"),
        ("batch_semantic_embed", batch, 12.5, "BatchSemanticEmbed"),
        ("tokenize", tokenize, None, "Tokenize"),
        ("detokenize", detokenize, None, "Detokenize"),
    ]
    # Every RPC is answered inside `answering` (serving gate, in-flight count, metrics).
    assert calls.answering_records == [
        "Embed",
        "SemanticEmbed",
        "BatchSemanticEmbed",
        "Tokenize",
        "Detokenize",
        "ModelsAvailable",
    ]


RPCS = {
    "Embed": pb.EmbedRequest(),
    "SemanticEmbed": pb.SemanticEmbedRequest(),
    "BatchSemanticEmbed": pb.BatchSemanticEmbedRequest(),
    "Tokenize": pb.TokenizeRequest(),
    "Detokenize": pb.DetokenizeRequest(),
    "ModelsAvailable": pb.ModelsAvailableRequest(),
}


@pytest.mark.parametrize("rpc", sorted(RPCS))
async def test_every_rpc_maps_its_errors_on_its_own_call(rpc: str) -> None:
    context = FakeContext()
    refused = QueueFull(2, 20, "limits", retry_after_seconds=1.2)
    with pytest.raises(Aborted):
        await getattr(servicer_of(FakeCalls(refused)), rpc)(RPCS[rpc], grpc_context(context))
    assert context.aborted == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        refused.message,
        (("retry-after", "1"),),
    )


# --- HTTP ----------------------------------------------------------------------------------------

HTTP = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 400,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 408,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
}


def body_of(response: Any) -> Any:
    return json.loads(bytes(response.body))


def test_every_error_code_has_its_http_status() -> None:
    assert {code.value: status for code, status in HTTP_STATUS.items()} == HTTP
    assert set(HTTP_STATUS) == set(ErrorCode)


@pytest.mark.parametrize(("error", "status"), ERRORS, ids=lambda e: type(e).__name__)
def test_each_domain_error_is_its_status_with_an_error_and_code_body(
    error: LaminaError, status: grpc.StatusCode
) -> None:
    response = error_response(error)
    assert response.status_code == HTTP[status.name]
    body = body_of(response)
    assert body["code"] == status.name == error.code.value
    if isinstance(error, InvalidArgument):
        assert body["error"] == "layers[0]: layer 7 is past the model's 6"
    else:
        assert body["error"] == error.message
    retry = {QueueFull: "3", Unavailable: "1"}.get(type(error))  # type: ignore[call-overload]
    assert response.headers.get("retry-after") == retry
    assert "www-authenticate" not in response.headers


def test_an_invalid_argument_names_the_field_as_the_json_caller_wrote_it() -> None:
    error = InvalidArgument("prompt.items[2].text.controls[0].factor", "must be finite")
    body = body_of(error_response(error))
    assert body == {
        "error": "prompt[2].controls[0].factor: must be finite",
        "code": "INVALID_ARGUMENT",
    }


@pytest.mark.parametrize(
    ("grpc_field", "http_field"),
    [
        ("prompt.items[0].text.data", "prompt[0].data"),
        ("prompt.items[3].token_ids.data[1]", "prompt[3].data[1]"),
        ("prompt.items[1].image.crop", "prompt[1]"),
        ("prompt.items[1].image.crop.size", "prompt[1].size"),
        ("prompts[2].items[0].image", "prompts[2][0]"),
        ("prompt.items", "prompt"),
        ("layers[0]", "layers[0]"),
    ],
)
def test_json_field_paths(grpc_field: str, http_field: str) -> None:
    assert json_field(grpc_field) == http_field


def test_an_unavailable_server_with_its_own_hint_keeps_it() -> None:
    error = Unavailable("draining")
    error.retry_after_seconds = 4.4
    assert error_response(error).headers["retry-after"] == "4"


def test_a_body_too_large_is_413_not_429() -> None:
    response = error_response(BodyTooLarge(4096, 2048))
    assert response.status_code == 413 and "retry-after" not in response.headers
    assert body_of(response) == {
        "error": "body: 4096 bytes or more, more than the limit of 2048",
        "code": "RESOURCE_EXHAUSTED",
    }


def test_an_image_encoder_has_no_tokenizer_route() -> None:
    response = error_response(NoTokenizer("dinov2-small"))
    assert response.status_code == 404
    assert (
        body_of(response)["error"]
        == "model: 'dinov2-small' is an image encoder and has no tokenizer"
    )


def test_unauthenticated_asks_for_a_bearer_token() -> None:
    response = error_body(401, UNAUTHENTICATED, "missing credentials")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "retry-after" not in response.headers
    assert body_of(response) == {"error": "missing credentials", "code": "UNAUTHENTICATED"}


@pytest.mark.parametrize(("hint", "header"), [(0.2, "1"), (1.4, "1"), (1.6, "2"), (30.0, "30")])
def test_retry_after_is_whole_seconds_and_at_least_one(hint: float, header: str) -> None:
    assert error_body(429, "RESOURCE_EXHAUSTED", "full", hint).headers["retry-after"] == header


def test_a_long_message_is_cut_and_says_how_long_it_was() -> None:
    # Cut at MAX_MESSAGE_BYTES of UTF-8, never inside a character: "€" is three bytes.
    for long in ("x" * 10_000, "é" * 10_000, "€" * 10_000):
        error = body_of(error_body(400, "INVALID_ARGUMENT", long))["error"]
        kept = error.removesuffix("... (10000 characters)")
        assert kept != error and long.startswith(kept)
        assert MAX_MESSAGE_BYTES - 3 < len(kept.encode()) <= MAX_MESSAGE_BYTES
    exact = "y" * MAX_MESSAGE_BYTES
    assert body_of(error_body(400, "INVALID_ARGUMENT", exact))["error"] == exact
    assert body_of(error_body(400, "INVALID_ARGUMENT", exact + "y"))["error"] == (
        f"{exact}... ({MAX_MESSAGE_BYTES + 1} characters)"
    )


def test_a_message_with_lone_surrogates_still_encodes() -> None:
    response = error_body(400, "INVALID_ARGUMENT", "bad \udcff byte")
    assert body_of(response)["error"] == "bad \\udcff byte"


def test_an_internal_error_tells_nothing_of_the_details() -> None:
    response = internal_error()
    assert response.status_code == 500
    assert body_of(response) == {
        "error": "internal error; the server logged the details",
        "code": "INTERNAL",
    }
