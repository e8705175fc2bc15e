"""Domain errors to what each edge answers, as units: the gRPC status, message and retry-after
trailer (api/servicer.py), and the HTTP status, `{"error", "code"}` body and headers
(gateway/errors.py). The servicer runs against fake calls and a fake context; no server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any, cast

import grpc
import numpy as np
import pytest

from lamina.server.api import wire
from lamina.server.api.servicer import EmbedServicer
from lamina.server.api.status import GRPC_STATUS, status_of
from lamina.server.calls import STATUS_NAMES, CallRecord, Calls
from lamina.server.domain import (
    EmbedRequest,
    EmbedResult,
    ModelDescription,
    ModelVersionState,
    Pooling,
    SemanticEmbedRequest,
    SemanticEmbedResult,
    Timing,
    VersionState,
)
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
)
from lamina.server.observability.requests import Incoming
from lamina.v1 import embed_pb2 as pb

# One error of each kind the domain raises, with the gRPC status it must map to.
ERRORS: list[tuple[LaminaError, grpc.StatusCode]] = [
    (
        InvalidArgument(("layers", 0), "layer 7 is past the model's 6"),
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
        self.initial_metadata: tuple[tuple[str, str], ...] = ()

    def time_remaining(self) -> float | None:
        return self._time_remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "caller-7"),)

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.initial_metadata = tuple(metadata)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.aborted = (code, details, tuple(trailing_metadata))
        raise Aborted


class FakeCalls:
    """Records what each call was given; answers a small domain result, or raises `error`."""

    def __init__(self, error: LaminaError | None = None) -> None:
        self.error = error
        self.seen: list[tuple[str, Any, float | None]] = []
        self.answering_records: list[str] = []
        self.labels: list[tuple[str, str, bool, str | None]] = []
        self.request_ids: list[str] = []

    @contextlib.contextmanager
    def answering(self, record: CallRecord, incoming: Incoming) -> Iterator[None]:
        self.answering_records.append(record.method)
        self.request_ids.append(incoming.request_id)
        yield
        self.labels.append((record.method, record.model, record.nice, record.hosting))

    def _answer(self, name: str, request: Any, timeout: float | None = None) -> None:
        self.seen.append((name, request, timeout))
        if self.error is not None:
            raise self.error

    async def embed(self, request: EmbedRequest, timeout: float | None) -> EmbedResult:
        self._answer("embed", request, timeout)
        return EmbedResult("m-1", {0: {Pooling.MEAN: np.ones(2)}}, None, 1, TIMING)

    async def semantic_embed(
        self, request: SemanticEmbedRequest, timeout: float | None
    ) -> SemanticEmbedResult:
        self._answer("semantic_embed", request, timeout)
        count = len(request.prompts)
        return SemanticEmbedResult("m-1", tuple(np.ones(2) for _ in range(count)), count, TIMING)

    async def tokenize(self, model: str, text: str) -> tuple[list[str], list[int]]:
        self._answer("tokenize", (model, text))
        return ["a"], [1]

    async def detokenize(self, model: str, ids: Any) -> str:
        self._answer("detokenize", (model, list(ids)))
        return "a"

    def models(self) -> list[ModelDescription]:
        self._answer("models", None)
        return [MODEL]

    def version_states(self) -> list[ModelVersionState]:
        return [ModelVersionState("m", 2, VersionState.FAILED, "ValueError: bad graph")]


TIMING = Timing(0.0, 0.0, 0.0)
MODEL = ModelDescription(
    name="m",
    version=1,
    model_version="m@1",
    description="a model",
    architecture="bert",
    num_layers=6,
    hidden_size=2,
    max_context_size=512,
    image_support=False,
    trained=True,
    embedding_types=("embed",),
    hostings=(),
)
PROMPT = pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data="hi"))])


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
        await servicer_of(FakeCalls(error)).Embed(EMBED, grpc_context(context))
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
        await servicer_of(FakeCalls(refused)).Embed(EMBED, grpc_context(context))
    assert context.aborted is not None and context.aborted[2] == (("retry-after", trailer),)


async def test_each_rpc_reaches_its_call_with_its_name_and_the_callers_deadline() -> None:
    calls = FakeCalls()
    servicer = servicer_of(calls)
    context = grpc_context(FakeContext(time_remaining=12.5))
    embed = pb.EmbedRequest(
        model="e", prompt=PROMPT, layers=[0], pooling=["mean"], nice=True, hosting="aleph-alpha"
    )
    semantic = pb.SemanticEmbedRequest(model="s", prompt=PROMPT, representation="query")
    batch = pb.BatchSemanticEmbedRequest(model="b", prompts=[PROMPT], representation="query")
    tokenize = pb.TokenizeRequest(model="t", prompt="a", tokens=True, token_ids=True)
    detokenize = pb.DetokenizeRequest(model="d", token_ids=[1])
    replies = [
        await servicer.Embed(embed, context),
        await servicer.SemanticEmbed(semantic, context),
        await servicer.BatchSemanticEmbed(batch, context),
        await servicer.Tokenize(tokenize, context),
        await servicer.Detokenize(detokenize, context),
        await servicer.ModelsAvailable(pb.ModelsAvailableRequest(), context),
    ]
    assert [type(reply).__name__ for reply in replies] == [
        "EmbedResponse",
        "SemanticEmbedResponse",
        "BatchSemanticEmbedResponse",
        "TokenizeResponse",
        "DetokenizeResponse",
        "ModelsAvailableResponse",
    ]
    embedded, tokenized = cast(pb.EmbedResponse, replies[0]), cast(pb.TokenizeResponse, replies[3])
    assert list(embedded.embeddings["layer_0"].pooling["mean"].values) == [1.0, 1.0]
    assert list(tokenized.tokens.tokens) == ["a"] and list(tokenized.token_ids.ids) == [1]
    assert cast(pb.DetokenizeResponse, replies[4]).result == "a"
    available = cast(pb.ModelsAvailableResponse, replies[5])
    assert [(m.name, m.version, m.num_layers) for m in available.models] == [("m", "1", 6)]
    # The caller's request id reaches the call's scope and goes back in the initial metadata.
    assert calls.request_ids == ["caller-7"] * 6
    assert context.initial_metadata == (("x-request-id", "caller-7"),)
    assert [(v.model, v.version, v.state, v.reason) for v in available.versions] == [
        ("m", 2, "failed", "ValueError: bad graph")
    ]
    # Each call gets the domain request its message converts to, once, and the deadline.
    assert calls.seen == [
        ("embed", wire.embed_request(embed), 12.5),
        ("semantic_embed", wire.semantic_embed_request(semantic), 12.5),
        ("semantic_embed", wire.batch_semantic_embed_request(batch), 12.5),
        ("tokenize", ("t", "a"), None),
        ("detokenize", ("d", [1]), None),
        ("models", None, None),
    ]
    # Each call is labelled by what its message names, before any conversion.
    assert calls.labels == [
        ("Embed", "e", True, "aleph-alpha"),
        ("SemanticEmbed", "s", False, None),
        ("BatchSemanticEmbed", "b", False, None),
        ("Tokenize", "t", False, None),
        ("Detokenize", "d", False, None),
        ("ModelsAvailable", "", False, None),
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


EMBED = pb.EmbedRequest(model="e", prompt=PROMPT)
RPCS = {
    "Embed": EMBED,
    "SemanticEmbed": pb.SemanticEmbedRequest(model="s", prompt=PROMPT, representation="query"),
    "BatchSemanticEmbed": pb.BatchSemanticEmbedRequest(
        model="b", prompts=[PROMPT], representation="query"
    ),
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


def test_every_error_code_has_its_http_status_and_grpc_name() -> None:
    assert {name: status for status, name in HTTP_STATUS.values()} == HTTP
    assert set(HTTP_STATUS) == set(GRPC_STATUS) == set(STATUS_NAMES) == set(ErrorCode)
    for code, (_, name) in HTTP_STATUS.items():
        # One vocabulary over both edges and the metrics: gRPC's status names.
        assert GRPC_STATUS[code].name == name == STATUS_NAMES[code]


@pytest.mark.parametrize(("error", "status"), ERRORS, ids=lambda e: type(e).__name__)
def test_each_domain_error_is_its_status_with_an_error_and_code_body(
    error: LaminaError, status: grpc.StatusCode
) -> None:
    response = error_response(error)
    assert response.status_code == HTTP[status.name]
    body = body_of(response)
    assert body["code"] == status.name == HTTP_STATUS[error.code][1]
    if isinstance(error, InvalidArgument):
        assert body["error"] == "layers[0]: layer 7 is past the model's 6"
    else:
        assert body["error"] == error.message
    retry = {QueueFull: "3", Unavailable: "1"}.get(type(error))  # type: ignore[call-overload]
    assert response.headers.get("retry-after") == retry
    assert "www-authenticate" not in response.headers


def test_an_invalid_argument_names_the_field_as_the_json_caller_wrote_it() -> None:
    error = InvalidArgument(("prompt", 2, "text", "controls", 0, "factor"), "must be finite")
    body = body_of(error_response(error))
    assert body == {
        "error": "prompt[2].controls[0].factor: must be finite",
        "code": "INVALID_ARGUMENT",
    }


def test_an_invalid_argument_names_the_field_as_the_grpc_caller_wrote_it() -> None:
    error = InvalidArgument(("prompts", 2, 0, "image", "crop"), "missing: size")
    assert status_of(error) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompts[2].items[0].image.crop: missing: size",
    )


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
