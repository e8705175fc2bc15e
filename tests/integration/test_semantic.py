"""SemanticEmbed and BatchSemanticEmbed end to end: each model's semantic configuration, served
through the Embed path (so it equals the matching Embed call), batches in input order, and the
errors a caller can make."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from lamina.client import AsyncClient, Client, LaminaError, Text, TextControl, _calls
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import DINOV2, MINILM, SMOLLM2
from tests.integration.support import RunningServer, sample, scrape
from tests.server.test_convert_vision import png

FIXTURES = Path(__file__).parents[1] / "parity" / "fixtures"
PROMPTS = json.loads((FIXTURES / f"{MINILM}.json").read_text())["prompts"]


@pytest.fixture(scope="module")
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.EmbedServiceStub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


def prompt(*items: str | pb.PromptItem) -> pb.Prompt:
    return pb.Prompt(
        items=[pb.PromptItem(text=pb.TextItem(data=i)) if isinstance(i, str) else i for i in items]
    )


def semantic(
    model: str = MINILM, text: str = "Hello world", **fields: object
) -> pb.SemanticEmbedRequest:
    fields.setdefault("representation", "symmetric")
    fields.setdefault("prompt", prompt(text))
    return pb.SemanticEmbedRequest(model=model, **fields)  # type: ignore[arg-type]


def batch(texts: list[str], model: str = MINILM, **fields: object) -> pb.BatchSemanticEmbedRequest:
    fields.setdefault("representation", "symmetric")
    return pb.BatchSemanticEmbedRequest(
        model=model,
        prompts=[prompt(t) for t in texts],
        **fields,  # type: ignore[arg-type]
    )


async def embed_mean(
    stub: pb_grpc.EmbedServiceStub, model: str, layer: int, items: pb.Prompt, normalize: bool
) -> np.ndarray:
    reply = await stub.Embed(
        pb.EmbedRequest(
            model=model, prompt=items, layers=[-1], pooling=["mean"], normalize=normalize
        )
    )
    return np.asarray(reply.embeddings[f"layer_{layer}"].pooling["mean"].values)


async def status_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


async def test_minilm_is_the_normalised_mean_of_its_last_layer(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    reply = await stub.SemanticEmbed(semantic(text=PROMPTS[1]))
    ours = np.asarray(reply.embedding)
    assert ours.shape == (384,) and reply.model_version.startswith(f"{MINILM}@")
    assert reply.num_tokens_prompt_total == 16 and reply.timing.inference_seconds > 0
    same = await embed_mean(stub, MINILM, 6, prompt(PROMPTS[1]), normalize=True)
    np.testing.assert_allclose(ours, same, atol=1e-6)
    # sentence-transformers' all-MiniLM-L6-v2: mean of the last hidden state, then Normalize.
    with np.load(FIXTURES / f"{MINILM}.npz") as arrays:
        mean = arrays["hidden_1"][6].mean(axis=0)
    np.testing.assert_allclose(ours, mean / np.linalg.norm(mean), atol=1e-5)


async def test_every_representation_of_a_symmetric_model_is_the_same(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    replies = [
        await stub.SemanticEmbed(semantic(representation=r))
        for r in ("symmetric", "document", "query")
    ]
    for reply in replies[1:]:
        np.testing.assert_array_equal(reply.embedding, replies[0].embedding)


async def test_normalize_set_overrides_the_model_default(stub: pb_grpc.EmbedServiceStub) -> None:
    reply = await stub.SemanticEmbed(semantic(normalize=False))
    plain = await embed_mean(stub, MINILM, 6, prompt("Hello world"), normalize=False)
    np.testing.assert_allclose(reply.embedding, plain, atol=1e-6)
    assert abs(float(np.linalg.norm(plain)) - 1) > 0.01


async def test_controls_act_as_in_embed(stub: pb_grpc.EmbedServiceStub) -> None:
    controlled = pb.PromptItem(
        text=pb.TextItem(
            data="Hello world", controls=[pb.TextControl(start=6, length=5, factor=0.0)]
        )
    )
    reply = await stub.SemanticEmbed(semantic(prompt=prompt(controlled)))
    same = await embed_mean(stub, MINILM, 6, prompt(controlled), normalize=True)
    plain = await stub.SemanticEmbed(semantic())
    np.testing.assert_allclose(reply.embedding, same, atol=1e-6)
    assert not np.allclose(reply.embedding, plain.embedding, atol=1e-3)


async def test_batch_keeps_input_order_and_equals_single_calls(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    texts = [*PROMPTS, "short", "a somewhat longer prompt than the one before it", "Hello world"]
    reply = await stub.BatchSemanticEmbed(batch(texts))
    singles = await asyncio.gather(*(stub.SemanticEmbed(semantic(text=t)) for t in texts))
    assert len(reply.embeddings) == len(texts)
    for index, single in enumerate(singles):
        np.testing.assert_allclose(
            reply.embeddings[index].values, single.embedding, atol=1e-5, err_msg=str(index)
        )
    assert reply.num_tokens_prompt_total == sum(s.num_tokens_prompt_total for s in singles)
    assert reply.model_version == singles[0].model_version


async def test_a_batch_of_100_runs_as_rows_batched_together(
    stub: pb_grpc.EmbedServiceStub, server: RunningServer
) -> None:
    labels = {"pool": "default", "model": MINILM}
    before = await scrape(server.metrics_port)
    reply = await stub.BatchSemanticEmbed(batch([f"prompt {i}" for i in range(100)]))
    after = await scrape(server.metrics_port)
    assert len(reply.embeddings) == 100
    rows = sample(after, "lamina_batch_rows_sum", **labels) - sample(
        before, "lamina_batch_rows_sum", **labels
    )
    batches = sample(after, "lamina_batch_rows_count", **labels) - sample(
        before, "lamina_batch_rows_count", **labels
    )
    assert rows == 100 and batches < 50, (rows, batches)


async def test_101_prompts_or_none_are_refused_naming_prompts(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    for texts in ([f"prompt {i}" for i in range(101)], []):
        error = await status_of(stub.BatchSemanticEmbed(batch(texts)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("prompts:"), error.details()


async def test_batch_errors_name_the_prompt(stub: pb_grpc.EmbedServiceStub) -> None:
    request = batch(["fine", "fine too"])
    request.prompts.append(
        pb.Prompt(items=[pb.PromptItem(token_ids=pb.TokenIdsItem(data=[10**9]))])
    )
    error = await status_of(stub.BatchSemanticEmbed(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("prompts[2].items[0].token_ids.data[0]:")
    request = batch(["fine", ""])
    request.prompts[1].ClearField("items")
    error = await status_of(stub.BatchSemanticEmbed(request))
    assert (error.details() or "").startswith("prompts[1]:"), error.details()


@pytest.mark.parametrize("size", [128, 64])
async def test_compress_to_size_is_refused_naming_it(
    stub: pb_grpc.EmbedServiceStub, size: int
) -> None:
    for call in (
        stub.SemanticEmbed(semantic(compress_to_size=size)),
        stub.BatchSemanticEmbed(batch(["Hello"], compress_to_size=size)),
    ):
        error = await status_of(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("compress_to_size:"), error.details()


async def test_a_model_without_semantic_configuration_is_refused_naming_model(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    error = await status_of(stub.SemanticEmbed(semantic(SMOLLM2)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith("model:") and "no semantic embedding" in details
    assert MINILM in details  # it names the models that have one


@pytest.mark.parametrize("representation", ["passage", ""])
async def test_unknown_representation_is_refused(
    stub: pb_grpc.EmbedServiceStub, representation: str
) -> None:
    error = await status_of(stub.SemanticEmbed(semantic(representation=representation)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith("representation:") and "symmetric" in details


async def test_unknown_model_is_not_found(stub: pb_grpc.EmbedServiceStub) -> None:
    error = await status_of(stub.SemanticEmbed(semantic("missing-model")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_dinov2_embeds_an_image_as_its_normalised_patch_mean(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    picture = prompt(pb.PromptItem(image=pb.ImageItem(data=png(3))))
    reply = await stub.SemanticEmbed(semantic(DINOV2, prompt=picture, representation="query"))
    ours = np.asarray(reply.embedding)
    assert ours.shape == (384,) and reply.num_tokens_prompt_total == 144
    same = await embed_mean(stub, DINOV2, 12, picture, normalize=True)
    np.testing.assert_allclose(ours, same, atol=1e-6)
    assert abs(float(np.linalg.norm(ours)) - 1) < 1e-5


async def test_models_available_lists_semantic_embed_where_configured(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    reply = await stub.ModelsAvailable(pb.ModelsAvailableRequest())
    types = {m.name: list(m.embedding_types) for m in reply.models}
    assert types[MINILM] == types[DINOV2] == ["embed", "semantic_embed"]
    assert types[SMOLLM2] == ["embed", "instructable_embed"]  # no semantic_embed


async def test_python_clients(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        single = await client.semantic_embed(MINILM, "Hello world", representation="query")
        several = await client.batch_semantic_embed(
            MINILM,
            ["Hello world", [Text("Hello world", controls=[TextControl(6, 5, 0.0)])]],
            representation="document",
            normalize=False,
        )
        with pytest.raises(LaminaError) as error:
            await client.semantic_embed(SMOLLM2, "x", representation="query")
    assert single.embedding.shape == (384,) and single.num_tokens_prompt_total == 4
    assert len(several.embeddings) == 2 and several.num_tokens_prompt_total == 8
    np.testing.assert_allclose(
        several.embeddings[0] / np.linalg.norm(several.embeddings[0]), single.embedding, atol=1e-5
    )
    assert error.value.code == "INVALID_ARGUMENT" and error.value.message.startswith("model:")

    def call() -> tuple[np.ndarray, list[np.ndarray]]:
        with Client(server.target, timeout=30) as client:
            one = client.semantic_embed(MINILM, "Hello world", representation="symmetric")
            two = client.batch_semantic_embed(
                MINILM, ["Hello world", "Hello"], representation="symmetric"
            )
        return one.embedding, two.embeddings

    one, two = await asyncio.to_thread(call)
    np.testing.assert_allclose(one, single.embedding, atol=1e-6)
    np.testing.assert_allclose(two[0], one, atol=1e-5)
    assert not np.allclose(two[1], one, atol=1e-3)


# The client's builders' options that stay the same in the test below.
UNSET: dict[str, Any] = {
    "representation": "query",
    "hosting": None,
    "nice": False,
    "contextual_control_threshold": None,
    "control_log_additive": None,
}


def test_client_requests_leave_unset_options_unset() -> None:
    def calls(**options: Any) -> tuple[_calls.Call[Any], _calls.Call[Any]]:
        fields = {"normalize": None, "compress_to_size": None, **options}
        return (
            _calls.semantic_embed(MINILM, "Hello", **UNSET, **fields),
            _calls.batch_semantic_embed(MINILM, ["a", "b"], **UNSET, **fields),
        )

    single, several = calls()
    assert (single.method, several.method) == ("SemanticEmbed", "BatchSemanticEmbed")
    assert len(several.request.prompts) == 2  # type: ignore[attr-defined]
    for call in (single, several):
        for name in ("compress_to_size", "normalize", "hosting", "control_log_additive"):
            assert not call.request.HasField(name), name
    for call in calls(normalize=False, compress_to_size=128):
        assert call.request.HasField("normalize") and not call.request.normalize  # type: ignore[attr-defined]
        assert call.request.compress_to_size == 128  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="list of prompts"):
        _calls.batch_semantic_embed(MINILM, "Hello", **UNSET, normalize=None, compress_to_size=None)
