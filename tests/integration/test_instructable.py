"""InstructableEmbed over gRPC on a real server: the model's instructable configuration served as
one Embed row (so it equals the Embed call of the same sequence, layer and pooling), the Python
clients, and the errors a caller can make."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from lamina.client import AsyncClient, Client, InstructableEmbedResult, Text, TextControl
from lamina.server.server import LaminaServer
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import DINOV2, MINILM, SMOLLM2, free_port
from tests.integration.support import RunningServer, sample, scrape, settings_for

INSTRUCTION = "Represent the sentence for retrieving answers about geography"
SENTENCE = "The capital of France is Paris."


@pytest.fixture(scope="module")
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.EmbedServiceStub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


def text(data: str, *controls: pb.TextControl) -> pb.PromptItem:
    return pb.PromptItem(text=pb.TextItem(data=data, controls=controls))


def instructable(
    *items: pb.PromptItem, model: str = SMOLLM2, instruction: str = INSTRUCTION, **fields: object
) -> pb.InstructableEmbedRequest:
    return pb.InstructableEmbedRequest(
        model=model,
        input=pb.Prompt(items=items or [text(SENTENCE)]),
        instruction=instruction,
        **fields,  # type: ignore[arg-type]
    )


async def embedded(
    stub: pb_grpc.EmbedServiceStub,
    *items: pb.PromptItem,
    pooling: str = "last_token",
    **fields: object,
) -> tuple[np.ndarray, pb.EmbedResponse]:
    """The Embed API's vector of the same sequence: SmolLM2's section is the last layer's last
    token."""
    reply = await stub.Embed(
        pb.EmbedRequest(
            model=SMOLLM2,
            prompt=pb.Prompt(items=items),
            layers=[-1],
            pooling=[pooling],
            **fields,  # type: ignore[arg-type]
        )
    )
    return np.asarray(reply.embeddings["layer_30"].pooling[pooling].values), reply


async def failure(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


async def test_smollm2_is_the_last_token_after_the_instruction(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    reply = await stub.InstructableEmbed(instructable())
    ours = np.asarray(reply.embedding)
    # The instruction, a newline, then the input: as one Embed of the same items.
    same, embed = await embedded(stub, text(f"{INSTRUCTION}\n"), text(SENTENCE))
    np.testing.assert_allclose(ours, same, rtol=1e-5, atol=1e-6)
    assert ours.shape == (576,) and reply.model_version == embed.model_version
    assert reply.num_tokens_prompt_total == embed.num_tokens_prompt_total > 12
    assert reply.timing.inference_seconds > 0
    # The instruction changes the vector: it is not the input's alone.
    alone, _ = await embedded(stub, text(SENTENCE))
    assert not np.allclose(ours, alone, atol=1e-3)


async def test_no_instruction_embeds_the_input_alone(stub: pb_grpc.EmbedServiceStub) -> None:
    reply = await stub.InstructableEmbed(instructable(instruction=""))
    alone, embed = await embedded(stub, text(SENTENCE))
    np.testing.assert_allclose(np.asarray(reply.embedding), alone, rtol=1e-5, atol=1e-6)
    assert reply.num_tokens_prompt_total == embed.num_tokens_prompt_total


async def test_normalize_token_ids_and_controls_are_embeds(stub: pb_grpc.EmbedServiceStub) -> None:
    control = pb.TextControl(start=25, length=5, factor=0.05)
    ids = pb.PromptItem(
        token_ids=pb.TokenIdsItem(
            data=[19556, 905], controls=[pb.TokenControl(index=1, factor=3.0)]
        )
    )
    reply = await stub.InstructableEmbed(
        instructable(
            text(SENTENCE, control),
            ids,
            normalize=True,
            control_log_additive=False,
            contextual_control_threshold=0.9,
        )
    )
    same, _ = await embedded(
        stub,
        text(f"{INSTRUCTION}\n"),
        text(SENTENCE, control),
        ids,
        normalize=True,
        control_log_additive=False,
        contextual_control_threshold=0.9,
    )
    ours = np.asarray(reply.embedding)
    np.testing.assert_allclose(ours, same, rtol=1e-5, atol=1e-6)
    assert abs(float(np.linalg.norm(ours)) - 1) < 1e-5
    uncontrolled, _ = await embedded(
        stub, text(f"{INSTRUCTION}\n"), text(SENTENCE), ids, normalize=True
    )
    assert not np.allclose(ours, uncontrolled, atol=1e-4)  # the controls did act


async def test_calls_count_under_their_method(
    server: RunningServer, stub: pb_grpc.EmbedServiceStub
) -> None:
    labels = {"model": SMOLLM2, "nice": "true", "hosting": "any"}
    before = await scrape(server.metrics_port)
    await stub.InstructableEmbed(instructable(nice=True))
    await failure(
        stub.InstructableEmbed(
            instructable(text("x", pb.TextControl(length=9, factor=1)), nice=True)
        )
    )
    after = await scrape(server.metrics_port)
    for code in ("OK", "INVALID_ARGUMENT"):
        series = {"method": "InstructableEmbed", "code": code, **labels}
        grew = sample(after, "lamina_requests_total", **series)
        assert grew == sample(before, "lamina_requests_total", **series) + 1, code


async def test_models_available_lists_instructable_embed_where_configured(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    reply = await stub.ModelsAvailable(pb.ModelsAvailableRequest())
    types = {m.name: list(m.embedding_types) for m in reply.models}
    assert types[SMOLLM2] == ["embed", "instructable_embed"]
    assert "instructable_embed" not in types[MINILM] + types[DINOV2]


async def test_a_model_without_the_section_names_those_with_one(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    for model in (MINILM, DINOV2):
        error = await failure(stub.InstructableEmbed(instructable(model=model)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = error.details() or ""
        assert details.startswith(f"model: model {model!r} has no instructable embedding")
        assert details.endswith(f"models with one: {SMOLLM2}"), details


@pytest.mark.parametrize(
    ("request_", "code", "starts"),
    [
        (instructable(model="nope"), grpc.StatusCode.NOT_FOUND, "model: unknown model 'nope'"),
        (
            pb.InstructableEmbedRequest(model=SMOLLM2, instruction="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input: the prompt is empty",
        ),
        (
            instructable(text("Paris", pb.TextControl(start=0, length=9, factor=1.0))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input.items[0].text.controls[0]",
        ),
        (
            instructable(text("Paris", pb.TextControl(start=0, length=2, factor=-1.0))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input.items[0].text.controls[0].factor: control factor must be finite",
        ),
        (
            instructable(pb.PromptItem(token_ids=pb.TokenIdsItem(data=[49152]))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input.items[0].token_ids.data[0]:",
        ),
        (
            instructable(*[text("a")] * 257),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input.items: 257 prompt items",
        ),
        (
            instructable(hosting="moon"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "hosting: unknown hosting 'moon'",
        ),
        (
            instructable(hosting="aleph-alpha"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "hosting: no worker pool may process",
        ),
    ],
)
async def test_bad_requests_name_the_field(
    stub: pb_grpc.EmbedServiceStub,
    request_: pb.InstructableEmbedRequest,
    code: grpc.StatusCode,
    starts: str,
) -> None:
    error = await failure(stub.InstructableEmbed(request_))
    assert error.code() == code, error.details()
    assert (error.details() or "").startswith(starts), error.details()


async def test_what_cannot_fit_the_model_names_both_numbers(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    ids = pb.PromptItem(token_ids=pb.TokenIdsItem(data=[1] * 8191))
    error = await failure(stub.InstructableEmbed(instructable(ids)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    # 8191 ids fit alone; with the instruction's tokens they pass the context.
    assert details.startswith("input: "), details
    assert "more than the 8192 positions" in details and "never truncated" in details
    huge = "word " * 140_000  # 700,000 characters: more than any 8,192 tokens can hold
    error = await failure(stub.InstructableEmbed(instructable(instruction=huge)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith("instruction: 700001 characters"), details[:200]
    assert "more than the 663552 that fit the 8192 positions" in details


async def test_python_clients(server: RunningServer, stub: pb_grpc.EmbedServiceStub) -> None:
    controls = [TextControl(25, 5, 0.05)]
    async with AsyncClient(server.target) as client:
        result = await client.instructable_embed(
            SMOLLM2, [Text(SENTENCE, controls=controls)], instruction=INSTRUCTION, normalize=True
        )

    def sync_call() -> InstructableEmbedResult:
        with Client(server.target, timeout=60) as sync:
            return sync.instructable_embed(
                SMOLLM2,
                [Text(SENTENCE, controls=controls)],
                instruction=INSTRUCTION,
                normalize=True,
            )

    blocking = await asyncio.to_thread(sync_call)
    control = pb.TextControl(start=25, length=5, factor=0.05)
    same, embed = await embedded(
        stub, text(f"{INSTRUCTION}\n"), text(SENTENCE, control), normalize=True
    )
    for got in (result, blocking):
        assert isinstance(got.embedding, np.ndarray) and got.embedding.dtype == np.float32
        np.testing.assert_allclose(got.embedding, same, rtol=1e-5, atol=1e-6)
        assert got.num_tokens_prompt_total == embed.num_tokens_prompt_total
        assert got.model_version == embed.model_version


async def test_an_encoder_trained_with_prompts_serves_its_own_pooling(tmp_path: Path) -> None:
    """A tiny BERT whose sentence-transformers config declares prompts, converted and served:
    the mean of its last layer over [CLS] instruction input [SEP], as Embed computes it."""
    from lamina.server.convert.pipeline import convert_checkpoint
    from tests.server.test_convert_bert import HIDDEN, random_bert_weights, write_checkpoint
    from tests.server.test_sentence_transformers import st_folder

    folder = write_checkpoint(tmp_path / "checkpoint", random_bert_weights())
    st_folder(folder, {"embedding_dimension": HIDDEN}, options={"prompts": {"query": "query: "}})
    repository = tmp_path / "repo"
    convert_checkpoint(folder, repository, "tiny-prompted", progress=lambda _: None)
    instance = LaminaServer(settings_for(repository, metrics_port=free_port()))
    port = await instance.start()
    await instance.load_models()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            tiny = pb_grpc.EmbedServiceStub(channel)
            reply = await tiny.InstructableEmbed(
                instructable(text("brown fox"), model="tiny-prompted", instruction="the quick ")
            )
            embed = await tiny.Embed(
                pb.EmbedRequest(
                    model="tiny-prompted",
                    prompt=pb.Prompt(items=[text("the quick "), text("brown fox")]),
                    layers=[-1],
                    pooling=["mean"],
                    tokens=True,
                )
            )
    finally:
        await instance.stop(grace_seconds=1)
    (layer,) = embed.embeddings.values()
    np.testing.assert_allclose(reply.embedding, layer.pooling["mean"].values, rtol=1e-5, atol=1e-6)
    # The template wraps instruction and input once, as sentence-transformers' encode does.
    assert list(embed.tokens.tokens) == ["[CLS]", "the", "quick", "brown", "fox", "[SEP]"]
    assert reply.num_tokens_prompt_total == embed.num_tokens_prompt_total == 6
