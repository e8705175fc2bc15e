"""Hostile input against a real server: each case answers as documented, costs no more than its
answer needs, and leaves the server serving (issue: nothing a caller sends can corrupt, stall or
crash the server)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from PIL import Image

from lamina.server.domain import MAX_CONTROL_FACTOR, Pooling
from lamina.server.engine import first_nonfinite
from lamina.server.models import registry as registry_module
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.integration.support import RunningServer, sample, scrape
from tests.jobs import PoisonedRun

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"
DINOV2 = "dinov2-small"


@pytest.fixture(scope="module")
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.EmbedServiceStub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


def text(data: str, *controls: pb.TextControl) -> pb.PromptItem:
    return pb.PromptItem(text=pb.TextItem(data=data, controls=list(controls)))


def embed(model: str, *items: pb.PromptItem, **fields: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(
        model=model,
        prompt=pb.Prompt(items=list(items)),
        layers=[-1],
        pooling=["mean"],
        **fields,  # type: ignore[arg-type]
    )


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    """The status and details of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value.code(), error.value.details() or ""


async def still_serving(stub: pb_grpc.EmbedServiceStub) -> None:
    reply = await stub.Embed(embed(MINILM, text("still here")), timeout=30)
    assert np.isfinite(reply.embeddings["layer_6"].pooling["mean"].values).all()


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 1).save(buffer, format="PNG")
    return buffer.getvalue()


# -- 1. control factors the graph cannot represent -------------------------------------------


@pytest.mark.parametrize("log_additive", [True, False])
@pytest.mark.parametrize("factor", [1e39, 3.5e38, 1e38, 1e31])
async def test_a_factor_beyond_the_largest_is_refused_naming_it(
    stub: pb_grpc.EmbedServiceStub, factor: float, log_additive: bool
) -> None:
    control = pb.TextControl(start=0, length=5, factor=factor)
    request = embed(MINILM, text("hello world", control), control_log_additive=log_additive)
    code, details = await refused(stub.Embed(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("prompt.items[0].text.controls[0].factor:")
    assert "1e+30" in details
    await still_serving(stub)


async def test_overlapping_factors_whose_product_overflows_are_refused(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    controls = [pb.TextControl(start=0, length=5, factor=1e20)] * 2
    code, details = await refused(
        stub.Embed(embed(MINILM, text("hello world", *controls)), timeout=30)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("prompt.items[0].text.controls:")
    assert "1e+40" in details


@pytest.mark.parametrize("model", [MINILM, SMOLLM2])
@pytest.mark.parametrize("log_additive", [True, False])
async def test_the_largest_factor_gives_finite_vectors(
    stub: pb_grpc.EmbedServiceStub, model: str, log_additive: bool
) -> None:
    controls = [
        pb.TextControl(start=0, length=5, factor=MAX_CONTROL_FACTOR),
        pb.TextControl(start=6, length=5, factor=0.0),
    ]
    request = embed(model, text("hello world", *controls), control_log_additive=log_additive)
    request.pooling[:] = ["mean", "max", "abs_max"]
    request.layers[:] = [0, 1, -1]
    reply = await stub.Embed(request, timeout=60)
    for layer in reply.embeddings.values():
        for vector in layer.pooling.values():
            assert np.isfinite(vector.values).all()


async def test_image_controls_at_the_largest_factor_give_finite_vectors(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    rect = pb.Rect(left=0, top=0, width=0.5, height=1)
    controls = [pb.ImageControl(rect=rect, factor=MAX_CONTROL_FACTOR)]
    item = pb.PromptItem(image=pb.ImageItem(data=png((64, 64)), controls=controls))
    reply = await stub.Embed(embed(DINOV2, item), timeout=60)
    assert np.isfinite(reply.embeddings["layer_12"].pooling["mean"].values).all()
    overflow = [pb.ImageControl(rect=rect, factor=1e20)] * 2
    item = pb.PromptItem(image=pb.ImageItem(data=png((64, 64)), controls=overflow))
    code, details = await refused(stub.Embed(embed(DINOV2, item), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("prompt.items[0].image.controls:")


async def test_semantic_embed_bounds_factors_too(stub: pb_grpc.EmbedServiceStub) -> None:
    control = pb.TextControl(start=0, length=5, factor=1e39)
    request = pb.SemanticEmbedRequest(
        model=MINILM,
        prompt=pb.Prompt(items=[text("hello world", control)]),
        representation="symmetric",
    )
    code, details = await refused(stub.SemanticEmbed(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("prompt.items[0].text.controls[0].factor:")


# -- 2. sizes are checked before tokenizing; heavy work never holds small requests up ---------


async def test_text_that_cannot_fit_is_refused_without_tokenizing(
    stub: pb_grpc.EmbedServiceStub, server: RunningServer
) -> None:
    huge = "hello world " * (16 * 1024 * 1024 // 12)
    before = sample(
        await scrape(server.metrics_port),
        "lamina_tokenization_duration_seconds_count",
        model=MINILM,
    )
    code, details = await refused(stub.Embed(embed(MINILM, text(huge)), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("prompt:") and "never truncated" in details
    after = sample(
        await scrape(server.metrics_port),
        "lamina_tokenization_duration_seconds_count",
        model=MINILM,
    )
    assert after == before  # nothing was tokenized


async def test_token_ids_past_the_context_are_refused(stub: pb_grpc.EmbedServiceStub) -> None:
    ids = pb.PromptItem(token_ids=pb.TokenIdsItem(data=[1000] * 600))
    code, details = await refused(stub.Embed(embed(MINILM, ids), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "600 tokens" in details and "512 positions" in details


async def test_tokenize_and_detokenize_have_limits(stub: pb_grpc.EmbedServiceStub) -> None:
    code, details = await refused(
        stub.Tokenize(pb.TokenizeRequest(model=MINILM, prompt="a" * 1_000_001, tokens=True))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "prompt: 1000001 characters, more than the limit of 1000000"
    code, details = await refused(
        stub.Detokenize(pb.DetokenizeRequest(model=MINILM, token_ids=[5] * 1_000_001))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("token_ids: 1000001 token ids")


async def _latencies(stub: pb_grpc.EmbedServiceStub, count: int) -> list[float]:
    seconds = []
    for i in range(count):
        started = time.perf_counter()
        await stub.Embed(embed(MINILM, text(f"small request {i}")), timeout=30)
        seconds.append(time.perf_counter() - started)
    return seconds


async def test_heavy_requests_do_not_hold_up_a_small_one(stub: pb_grpc.EmbedServiceStub) -> None:
    """The largest legal Tokenize and Detokenize calls, and an Embed of text far past the
    context, run while a small Embed is timed: it is delayed by less than one batch's run."""
    await _latencies(stub, 3)  # warm
    alone = max(await _latencies(stub, 10))
    full = await stub.Embed(embed(MINILM, text("word " * 510)), timeout=30)
    batch_seconds = full.timing.inference_seconds
    document = "an ordinary sentence of a long document. " * (1_000_000 // 41)
    dot = await stub.Tokenize(pb.TokenizeRequest(model=SMOLLM2, prompt=".", token_ids=True))
    (dot_id,) = dot.token_ids.ids  # a reply of 1,000,000 ids stays under the client's 4 MB

    def heavy_calls(past_the_limits: int) -> list[asyncio.Future[object]]:
        tokenize = pb.TokenizeRequest(model=SMOLLM2, prompt=document + "." * past_the_limits)
        ids = [dot_id] * (1_000_000 + past_the_limits)
        calls: list[asyncio.Future[object]] = [
            asyncio.ensure_future(stub.Tokenize(tokenize)) for _ in range(4)
        ]
        calls.append(
            asyncio.ensure_future(
                stub.Detokenize(pb.DetokenizeRequest(model=SMOLLM2, token_ids=ids))
            )
        )
        calls.append(asyncio.ensure_future(stub.Embed(embed(SMOLLM2, text(document * 16)))))
        return calls

    # Client and server share this process and its two cores, so the heavy requests' bytes take
    # time to cross whatever the server does with them: the same bytes, each refused unread
    # past its limit, measure that allowance.
    started = time.perf_counter()
    refusals = await asyncio.gather(*heavy_calls(past_the_limits=11), return_exceptions=True)
    crossing_seconds = time.perf_counter() - started
    assert all(isinstance(r, grpc.aio.AioRpcError) for r in refusals), refusals
    heavy = heavy_calls(past_the_limits=0)
    started = time.perf_counter()
    during: list[float] = []
    while not all(task.done() for task in heavy[:5]):
        during += await _latencies(stub, 1)
    heavy_seconds = time.perf_counter() - started
    results = await asyncio.gather(*heavy, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results[:5]), results
    assert isinstance(results[5], grpc.aio.AioRpcError)
    assert results[5].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert during, "the heavy calls ended before a small request could be timed"
    # Contention for the two cores may slow a small request; waiting on heavy work may not.
    bound = 3 * alone + 2 * batch_seconds + crossing_seconds
    assert max(during) < bound, (during, alone, batch_seconds, crossing_seconds)
    assert max(during) < heavy_seconds


# -- 3. images are counted and measured before they are decoded -------------------------------


async def test_more_images_than_the_context_are_refused_before_decoding(
    stub: pb_grpc.EmbedServiceStub, server: RunningServer
) -> None:
    bomb = png((7000, 7000), mode="1")  # 49 MP in a few KB
    assert len(bomb) < 100_000
    items = [pb.PromptItem(image=pb.ImageItem(data=bomb)) for _ in range(30)]
    before = sample(
        await scrape(server.metrics_port),
        "lamina_tokenization_duration_seconds_count",
        model=DINOV2,
    )
    code, details = await refused(stub.Embed(embed(DINOV2, *items), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least 4320 tokens" in details and "30 images" in details
    after = sample(
        await scrape(server.metrics_port),
        "lamina_tokenization_duration_seconds_count",
        model=DINOV2,
    )
    assert after == before


async def test_the_pixels_of_a_prompt_have_a_budget(stub: pb_grpc.EmbedServiceStub) -> None:
    bomb = png((7000, 7000), mode="1")
    items = [pb.PromptItem(image=pb.ImageItem(data=bomb)) for _ in range(3)]
    code, details = await refused(stub.Embed(embed(DINOV2, *items), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("prompt: the images up to item 2 have 147000000 pixels")
    await still_serving(stub)


# -- 5. undecodable messages ------------------------------------------------------------------

_VALID = pb.EmbedRequest(model=MINILM, layers=[-1], pooling=["mean"]).SerializeToString()
UNDECODABLE = {
    "garbage": b"\xff\xfe\xfd\xfc" * 8,
    "truncated": _VALID[:-3],
    "invalid utf-8 in a string": b"\x0a\x02\xc3\x28",  # field 1 (model): 0xC3 0x28
    "over-long varint": b"\x18" + b"\xff" * 11,  # field 3 (layers) varint of 11+ bytes
}


@pytest.mark.parametrize("payload", list(UNDECODABLE.values()), ids=list(UNDECODABLE))
async def test_undecodable_messages_are_invalid_argument_without_a_traceback(
    server: RunningServer,
    stub: pb_grpc.EmbedServiceStub,
    payload: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = sample(
        await scrape(server.metrics_port), "lamina_undecodable_requests_total", method="Embed"
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.unary_unary(
            "/lamina.v1.EmbedService/Embed",
            request_serializer=None,
            response_deserializer=None,
        )
        with caplog.at_level(logging.WARNING):
            code, details = await refused(call(payload, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid lamina.v1.EmbedRequest message" in details
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    after = sample(
        await scrape(server.metrics_port), "lamina_undecodable_requests_total", method="Embed"
    )
    assert after == before + 1
    await still_serving(stub)


# -- 6. echoed client strings are bounded -----------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        embed("m" * 16_384, text("hi")),
        embed(MINILM, text("hi"), hosting="h" * 16_384),
        pb.EmbedRequest(
            model=MINILM,
            prompt=pb.Prompt(items=[text("hi")]),
            layers=[-1],
            pooling=["p" * 16_384],
        ),
    ],
    ids=["model", "hosting", "pooling"],
)
async def test_errors_quote_a_long_client_string_briefly(
    stub: pb_grpc.EmbedServiceStub, request_: pb.EmbedRequest
) -> None:
    code, details = await refused(stub.Embed(request_, timeout=30))
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert len(details) < 400
    assert "(16384 characters)" in details


# -- 10. token ids are used as given ----------------------------------------------------------


async def test_a_prompt_of_token_ids_gets_no_template(stub: pb_grpc.EmbedServiceStub) -> None:
    ids = pb.PromptItem(token_ids=pb.TokenIdsItem(data=[7592, 2088]))
    reply = await stub.Embed(embed(MINILM, ids, tokens=True), timeout=30)
    assert list(reply.tokens.tokens) == ["hello", "world"]
    assert reply.num_tokens_prompt_total == 2
    mixed = await stub.Embed(embed(MINILM, text("hello"), ids, tokens=True), timeout=30)
    assert list(mixed.tokens.tokens) == ["[CLS]", "hello", "hello", "world", "[SEP]"]


# -- the last line of defence: a non-finite vector is never answered OK -----------------------


def test_first_nonfinite_finds_nan_and_infinity() -> None:
    finite = {6: {Pooling.MEAN: np.ones(3, dtype=np.float32)}}
    assert first_nonfinite(finite) is None
    for bad in (np.nan, np.inf, -np.inf):
        vectors = {Pooling.MEAN: np.ones(3), Pooling.MAX: np.array([1.0, bad, 0.0])}
        assert first_nonfinite({0: finite[6], 6: vectors}) == (6, Pooling.MAX)


async def test_a_nan_from_the_graph_is_answered_internal_and_counted(
    stub: pb_grpc.EmbedServiceStub, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the real batch, with its vectors turned to NaN on the way out.
    monkeypatch.setattr(registry_module, "BatchRun", PoisonedRun)
    before = sample(
        await scrape(server.metrics_port), "lamina_nonfinite_results_total", model=MINILM
    )
    code, details = await refused(stub.Embed(embed(MINILM, text("poisoned")), timeout=30))
    assert code == grpc.StatusCode.INTERNAL
    assert "is not finite" in details and "layer 6" in details
    after = sample(
        await scrape(server.metrics_port), "lamina_nonfinite_results_total", model=MINILM
    )
    assert after == before + 1
    monkeypatch.undo()
    await still_serving(stub)
