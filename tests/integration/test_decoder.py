"""SmolLM2 (a Llama decoder from GGUF) served end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.integration.support import RunningServer

MODEL = "smollm2-135m-instruct"
FIXTURES = Path(__file__).parents[1] / "parity" / "fixtures"


def embed(prompt: pb.Prompt, **fields: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(model=MODEL, prompt=prompt, **fields)  # type: ignore[arg-type]


def text(*texts: str) -> pb.Prompt:
    return pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data=t)) for t in texts])


def ids(*values: int) -> pb.Prompt:
    return pb.Prompt(items=[pb.PromptItem(token_ids=pb.TokenIdsItem(data=list(values)))])


@pytest.fixture(scope="module")
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.EmbedServiceStub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


async def test_layers_and_decoder_poolings_match_transformers(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    meta = json.loads((FIXTURES / f"{MODEL}.json").read_text())
    with np.load(FIXTURES / f"{MODEL}.npz") as arrays:
        reference = arrays["hidden_1"]
    reply = await stub.Embed(
        embed(text(meta["prompts"][1]), layers=[0, 15, -1], pooling=["last_token", "weighted_mean"])
    )
    assert sorted(reply.embeddings) == ["layer_0", "layer_15", "layer_30"]
    n = reference.shape[1]
    weights = np.arange(1, n + 1) / (n * (n + 1) / 2)
    for layer in (0, 15, 30):
        pooled = reply.embeddings[f"layer_{layer}"].pooling
        scale = float(np.abs(reference[layer]).max())
        np.testing.assert_allclose(
            pooled["last_token"].values, reference[layer][-1], atol=1e-4 * scale
        )
        np.testing.assert_allclose(
            pooled["weighted_mean"].values, weights @ reference[layer], atol=1e-4 * scale
        )
    assert reply.num_tokens_prompt_total == n  # no BOS: SmolLM2's GGUF adds none


async def test_token_id_prompts_equal_their_text(stub: pb_grpc.EmbedServiceStub) -> None:
    by_text = await stub.Embed(
        embed(text("Hello world"), layers=[-1], pooling=["mean"], tokens=True)
    )
    assert list(by_text.tokens.tokens) == ["Hello", " world"]  # byte-level pieces read as text
    by_ids = await stub.Embed(embed(ids(19556, 905), layers=[-1], pooling=["mean"]))
    np.testing.assert_allclose(
        by_ids.embeddings["layer_30"].pooling["mean"].values,
        by_text.embeddings["layer_30"].pooling["mean"].values,
        rtol=1e-5,
        atol=1e-5,
    )


async def test_context_limit_says_both_numbers(stub: pb_grpc.EmbedServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Embed(embed(ids(*([42] * 8193)), layers=[1], pooling=["mean"]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details() or ""
    assert "8193 tokens" in details and "8192 positions" in details


async def test_vocabulary_and_layer_limits(stub: pb_grpc.EmbedServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Embed(embed(ids(1, 49152), layers=[1], pooling=["mean"]))
    assert "0..49151" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Embed(embed(ids(1), layers=[31], pooling=["mean"]))
    assert "has 30 blocks" in (error.value.details() or "")


async def test_models_available_lists_both_defaults(stub: pb_grpc.EmbedServiceStub) -> None:
    reply = await stub.ModelsAvailable(pb.ModelsAvailableRequest())
    info = {m.name: m for m in reply.models}
    decoder = info[MODEL]
    assert (decoder.num_layers, decoder.hidden_size, decoder.max_context_size) == (30, 576, 8192)
    assert decoder.architecture == "llama" and decoder.version.isdigit()
    assert info["all-minilm-l6-v2"].architecture == "bert"


def controlled(text_: str, phrase: str, factor: float, **fields: object) -> pb.EmbedRequest:
    control = pb.TextControl(start=text_.index(phrase), length=len(phrase), factor=factor)
    prompt = pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data=text_, controls=[control]))])
    return embed(prompt, layers=[-1], pooling=["last_token"], **fields)


SENTENCE = "The weather in Paris is lovely today, said the old fisherman."


def last_token(reply: pb.EmbedResponse) -> np.ndarray:
    return np.asarray(reply.embeddings["layer_30"].pooling["last_token"].values)


async def test_suppressing_a_phrase_moves_the_embedding_and_factor_one_is_bit_identical(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    plain = last_token(await stub.Embed(embed(text(SENTENCE), layers=[-1], pooling=["last_token"])))
    unchanged = last_token(await stub.Embed(controlled(SENTENCE, "in Paris", 1.0)))
    suppressed = last_token(await stub.Embed(controlled(SENTENCE, "in Paris", 0.1)))
    assert np.array_equal(unchanged, plain)
    moved = float(np.linalg.norm(suppressed - plain) / np.linalg.norm(plain))
    assert moved > 1e-3, f"suppressing moved the embedding by only {moved:.2e}"


async def test_controlled_and_plain_requests_share_a_batch(stub: pb_grpc.EmbedServiceStub) -> None:
    requests = [
        embed(text(SENTENCE), layers=[-1], pooling=["last_token"]),
        controlled(SENTENCE, "Paris", 0.0),
        controlled(SENTENCE, "fisherman", 3.0, control_log_additive=False),
        controlled(SENTENCE, "weather", 0.5, contextual_control_threshold=0.9),
    ]
    alone = [last_token(await stub.Embed(r)) for r in requests]
    together = [last_token(r) for r in await asyncio.gather(*(stub.Embed(r) for r in requests))]
    for solo, batched in zip(alone, together, strict=True):
        assert np.isfinite(batched).all()
        np.testing.assert_allclose(batched, solo, rtol=1e-4, atol=1e-3)
    assert not np.allclose(alone[0], alone[1], atol=1e-2)
