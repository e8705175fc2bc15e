"""The asyncio client against a small real gRPC server with canned replies."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lamina.client import AsyncClient, Image, LaminaError, TokenizeResult
from lamina.v1 import embed_pb2 as pb
from tests.client import fake_server
from tests.client.fake_server import FakeServer


async def test_embed_sends_the_request_and_parses_the_reply(fake: FakeServer) -> None:
    async with AsyncClient(fake.target) as client:
        result = await client.embed(
            "fake-model",
            [Image(b"png")],
            layers=[3],
            pooling=["last_token"],
            normalize=True,
            contextual_control_threshold=0.5,
            type="document",
        )
    request = fake.last.request
    assert isinstance(request, pb.EmbedRequest)
    assert request.prompt.items[0].image.data == b"png"
    assert request.normalize and request.HasField("normalize")
    assert (request.contextual_control_threshold, request.type) == (0.5, "document")
    assert not request.HasField("tokens") and not request.HasField("control_log_additive")
    assert list(result.embeddings) == [3]
    vector = result.vector(3, "last_token")
    assert isinstance(vector, np.ndarray) and vector.tolist() == [3.0, 0.5]
    assert result.tokens is None and result.timing.tokenization_seconds == 0.5


async def test_models_tokenize_detokenize(fake: FakeServer) -> None:
    async with AsyncClient(fake.target) as client:
        models = await client.models()
        pieces = await client.tokenize("fake-model", "hello world", token_ids=False)
        text = await client.detokenize("fake-model", [9])
    assert [m.architecture for m in models] == ["bert"]
    assert pieces == TokenizeResult(["hello", "world"], None)
    assert text == "<9>"


async def test_concurrent_calls_share_one_channel(fake: FakeServer) -> None:
    async with AsyncClient(fake.target) as client:
        texts = await asyncio.gather(*(client.detokenize("fake-model", [i]) for i in range(8)))
    assert texts == [f"<{i}>" for i in range(8)]


async def test_a_rejected_call_raises_lamina_error_with_code_and_message(
    fake: FakeServer,
) -> None:
    async with AsyncClient(fake.target) as client:
        with pytest.raises(LaminaError) as error:
            await client.embed(fake_server.REJECTED, "x", layers=[42])
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message == fake_server.INVALID_MESSAGE


async def test_timeout_and_metadata_go_with_every_call(fake: FakeServer) -> None:
    async with AsyncClient(fake.target, timeout=5, metadata=[("x-tenant", "a")]) as client:
        await client.models()
        await client.tokenize("fake-model", "x")
    assert [r.method for r in fake.service.received] == ["ModelsAvailable", "Tokenize"]
    for received in fake.service.received:
        assert received.metadata["x-tenant"] == "a"
        assert received.time_remaining is not None and 0 < received.time_remaining < 5.5


async def test_a_passed_deadline_is_deadline_exceeded(fake: FakeServer) -> None:
    async with AsyncClient(fake.target, timeout=0.2) as client:
        with pytest.raises(LaminaError) as error:
            await client.embed(fake_server.SLOW, "x")
    assert error.value.code == "DEADLINE_EXCEEDED"


async def test_no_server_is_unavailable() -> None:
    async with AsyncClient(fake_server.closed_port_target(), timeout=10) as client:
        with pytest.raises(LaminaError) as error:
            await client.models()
    assert error.value.code == "UNAVAILABLE"


async def test_replies_past_the_4_mib_grpc_default_arrive(fake: FakeServer) -> None:
    async with AsyncClient(fake.target) as client:
        result = await client.embed(fake_server.BIG, "x", pooling=["max"])
    assert len(result.vector(6, "max")) == fake_server.BIG_VALUES
