"""The Embeddings RPC (OpenAI's embeddings over gRPC) end to end: each input one row of the
BatchSemanticEmbed path (so it equals BatchSemanticEmbed with representation symmetric), inputs
in order, and errors naming the caller's fields; also through Lamina's own clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from lamina.client import AsyncClient, Client, LaminaError
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import MINILM, SMOLLM2
from tests.integration.support import RunningServer, sample, scrape

TEXTS = ["The capital of France is Paris.", "Bonjour", "A third sentence."]


@pytest.fixture(scope="module")
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.EmbedServiceStub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


def request(*inputs: str | list[int], **fields: object) -> pb.EmbeddingsRequest:
    message = pb.EmbeddingsRequest(model=str(fields.pop("model", MINILM)), **fields)  # type: ignore[arg-type]
    for item in inputs:
        if isinstance(item, str):
            message.input.add(text=item)
        else:
            message.input.add(token_ids=pb.TokenIdList(ids=item))
    return message


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


def vectors(reply: pb.EmbeddingsResponse | pb.BatchSemanticEmbedResponse) -> list[np.ndarray]:
    return [np.array(v.values, dtype=np.float32) for v in reply.embeddings]


async def test_inputs_equal_batch_semantic_embed_symmetric(stub: pb_grpc.EmbedServiceStub) -> None:
    ids = [101, 7592, 102]
    reply = await stub.Embeddings(request(*TEXTS, ids))
    batch = await stub.BatchSemanticEmbed(
        pb.BatchSemanticEmbedRequest(
            model=MINILM,
            prompts=[pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data=t))]) for t in TEXTS]
            + [pb.Prompt(items=[pb.PromptItem(token_ids=pb.TokenIdsItem(data=ids))])],
            representation="symmetric",
        )
    )
    assert len(reply.embeddings) == 4
    for got, expected in zip(vectors(reply), vectors(batch), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert reply.model == MINILM and reply.model_version == batch.model_version
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == batch.num_tokens_prompt_total
    assert reply.timing.inference_seconds > 0


async def test_each_input_is_its_own_row(
    stub: pb_grpc.EmbedServiceStub, server: RunningServer
) -> None:
    labels = {"pool": "default", "model": MINILM}
    before = await scrape(server.metrics_port)
    reply = await stub.Embeddings(request(*[f"input {i}" for i in range(100)]))
    after = await scrape(server.metrics_port)
    assert len(reply.embeddings) == 100
    rows = sample(after, "lamina_batch_rows_sum", **labels) - sample(
        before, "lamina_batch_rows_sum", **labels
    )
    assert rows == 100


@pytest.mark.parametrize(
    ("message", "field", "says"),
    [
        (request(*["x"] * 101), "input", "101 inputs, more than the limit of 100"),
        (request(), "input", "an empty list"),
        (request("a", [101, 10**9]), "input[1][1]", "outside the vocabulary"),
        (request("a", ""), "input[1]", "empty"),
        (request("a", dimensions=64), "dimensions", "full size: 384"),
        (request("a", model=SMOLLM2), "model", "no semantic embedding"),
        (request("a", hosting="elsewhere"), "hosting", "unknown hosting"),
    ],
)
async def test_errors_name_the_field(
    stub: pb_grpc.EmbedServiceStub, message: pb.EmbeddingsRequest, field: str, says: str
) -> None:
    error = await refused(stub.Embeddings(message))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    details = error.details() or ""
    assert details.startswith(f"{field}:") and says in details, details


async def test_an_input_of_neither_kind_is_refused(stub: pb_grpc.EmbedServiceStub) -> None:
    message = request("a")
    message.input.add()
    error = await refused(stub.Embeddings(message))
    assert (error.details() or "").startswith("input[1]: the input has neither"), error.details()


async def test_an_unknown_model_is_not_found(stub: pb_grpc.EmbedServiceStub) -> None:
    error = await refused(stub.Embeddings(request("a", model="no-such-model")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_lamina_clients(server: RunningServer, stub: pb_grpc.EmbedServiceStub) -> None:
    expected = vectors(await stub.Embeddings(request(TEXTS[0], [101, 102])))
    async with AsyncClient(server.target) as client:
        result = await client.embeddings(MINILM, [TEXTS[0], [101, 102]])
        single = await client.embeddings(MINILM, TEXTS[0])  # one text is one input
        with pytest.raises(LaminaError) as raised:
            await client.embeddings(MINILM, "a", dimensions=7)
    assert raised.value.code == "INVALID_ARGUMENT" and "dimensions:" in raised.value.message
    for got, want in zip(result.embeddings, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(single.embeddings[0], expected[0])
    assert result.model == MINILM and result.prompt_tokens > 0

    def sync_call() -> list[np.ndarray]:
        with Client(server.target) as client:
            return list(client.embeddings(MINILM, [TEXTS[0]], nice=True).embeddings)

    # The server runs on this loop: the blocking client runs beside it.
    (nice,) = await asyncio.to_thread(sync_call)
    np.testing.assert_array_equal(nice, expected[0])
