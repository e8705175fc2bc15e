"""End to end over a real gRPC server on an ephemeral port, through the generated stubs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.integration.support import RunningServer, sample, scrape

MODEL = "all-minilm-l6-v2"
FIXTURES = Path(__file__).parents[1] / "parity" / "fixtures"
POOLINGS = ["mean", "weighted_mean", "max", "last_token", "abs_max"]


@pytest.fixture(scope="session")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.target) as open_channel:
        yield open_channel


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> pb_grpc.EmbedServiceStub:
    return pb_grpc.EmbedServiceStub(channel)


def text_prompt(*texts: str) -> pb.Prompt:
    return pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data=t)) for t in texts])


def embed_request(**overrides: object) -> pb.EmbedRequest:
    fields: dict[str, object] = {
        "model": MODEL,
        "prompt": text_prompt("Hello world"),
        "layers": [-1],
        "pooling": ["mean"],
    }
    fields.update(overrides)
    return pb.EmbedRequest(**fields)  # type: ignore[arg-type]


def vector(response: pb.EmbedResponse, layer: int, pooling: str) -> np.ndarray:
    return np.asarray(
        response.embeddings[f"layer_{layer}"].pooling[pooling].values, dtype=np.float32
    )


def reference_states(prompt_index: int) -> np.ndarray:
    with np.load(FIXTURES / f"{MODEL}.npz") as arrays:
        return arrays[f"hidden_{prompt_index}"]


async def test_layers_are_answered_under_their_absolute_index_and_match_transformers(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    prompts = json.loads((FIXTURES / f"{MODEL}.json").read_text())["prompts"]
    reply = await stub.Embed(
        embed_request(prompt=text_prompt(prompts[2]), layers=[0, 3, -1], pooling=POOLINGS)
    )
    assert sorted(reply.embeddings) == ["layer_0", "layer_3", "layer_6"]
    reference = reference_states(2)
    n = reference.shape[1]
    weights = np.arange(1, n + 1) / (n * (n + 1) / 2)
    for layer in (0, 3, 6):
        expected = {
            "mean": reference[layer].mean(0),
            "weighted_mean": weights @ reference[layer],
            "max": reference[layer].max(0),
            "last_token": reference[layer][-1],
            "abs_max": np.abs(reference[layer]).max(0),
        }
        for pooling in POOLINGS:
            got = vector(reply, layer, pooling)
            assert got.shape == (384,)
            np.testing.assert_allclose(
                got, expected[pooling], atol=2e-4, err_msg=f"{layer} {pooling}"
            )
    assert reply.num_tokens_prompt_total == n


async def test_negative_layers_alias_their_absolute_index(stub: pb_grpc.EmbedServiceStub) -> None:
    both = await stub.Embed(embed_request(layers=[-7, 0, -2]))
    assert sorted(both.embeddings) == ["layer_0", "layer_5"]


async def test_normalize_returns_unit_vectors(stub: pb_grpc.EmbedServiceStub) -> None:
    raw = await stub.Embed(embed_request(pooling=POOLINGS))
    unit = await stub.Embed(embed_request(pooling=POOLINGS, normalize=True))
    for pooling in POOLINGS:
        v = vector(unit, 6, pooling)
        assert abs(float(np.linalg.norm(v)) - 1) < 1e-5
        r = vector(raw, 6, pooling)
        np.testing.assert_allclose(v, r / np.linalg.norm(r), atol=1e-6)


async def test_tokens_only_when_asked(stub: pb_grpc.EmbedServiceStub) -> None:
    plain = await stub.Embed(embed_request())
    assert not plain.HasField("tokens")
    asked = await stub.Embed(embed_request(tokens=True, prompt=text_prompt("Hello", "world")))
    assert list(asked.tokens.tokens) == ["[CLS]", "hello", "world", "[SEP]"]
    assert asked.num_tokens_prompt_total == 4
    assert asked.model_version.startswith(f"{MODEL}@")
    assert asked.timing.inference_seconds > 0


async def test_token_id_items_are_used_as_is(stub: pb_grpc.EmbedServiceStub) -> None:
    ids = pb.PromptItem(token_ids=pb.TokenIdsItem(data=[7592, 2088]))
    by_ids = await stub.Embed(embed_request(prompt=pb.Prompt(items=[ids]), tokens=True))
    # Token ids alone get no template: exactly the two positions the caller chose.
    assert list(by_ids.tokens.tokens) == ["hello", "world"]
    assert by_ids.num_tokens_prompt_total == 2
    # With the template's ids written out, the same sequence as the text gives.
    wrapped = pb.PromptItem(token_ids=pb.TokenIdsItem(data=[101, 7592, 2088, 102]))
    by_wrapped = await stub.Embed(embed_request(prompt=pb.Prompt(items=[wrapped]), tokens=True))
    by_text = await stub.Embed(embed_request())
    assert list(by_wrapped.tokens.tokens) == ["[CLS]", "hello", "world", "[SEP]"]
    np.testing.assert_allclose(vector(by_wrapped, 6, "mean"), vector(by_text, 6, "mean"), atol=1e-6)


async def test_models_available_describes_the_model(stub: pb_grpc.EmbedServiceStub) -> None:
    reply = await stub.ModelsAvailable(pb.ModelsAvailableRequest())
    (model,) = [m for m in reply.models if m.name == MODEL]
    assert (model.num_layers, model.hidden_size, model.max_context_size) == (6, 384, 512)
    assert model.architecture == "bert" and not model.image_support
    assert list(model.embedding_types) == ["embed", "semantic_embed"] and model.version.isdigit()


async def test_tokenize_and_detokenize(stub: pb_grpc.EmbedServiceStub) -> None:
    reply = await stub.Tokenize(
        pb.TokenizeRequest(model=MODEL, prompt="Hello world", tokens=True, token_ids=True)
    )
    assert list(reply.tokens.tokens) == ["hello", "world"]
    assert list(reply.token_ids.ids) == [7592, 2088]
    only_ids = await stub.Tokenize(pb.TokenizeRequest(model=MODEL, prompt="Hello", token_ids=True))
    assert not only_ids.HasField("tokens")
    text = await stub.Detokenize(pb.DetokenizeRequest(model=MODEL, token_ids=[7592, 2088]))
    assert text.result == "hello world"


LONG_IDS = pb.Prompt(items=[pb.PromptItem(token_ids=pb.TokenIdsItem(data=[1000] * 600))])
IMAGE = pb.Prompt(items=[pb.PromptItem(image=pb.ImageItem(data=b"\x89PNG"))])
CONTROL_PAST_END = pb.Prompt(
    items=[
        pb.PromptItem(
            text=pb.TextItem(data="hello", controls=[pb.TextControl(start=3, length=5, factor=0.5)])
        )
    ]
)
NEGATIVE_FACTOR = pb.Prompt(
    items=[
        pb.PromptItem(
            text=pb.TextItem(data="hello", controls=[pb.TextControl(start=0, length=2, factor=-1)])
        )
    ]
)


@pytest.mark.parametrize(
    ("overrides", "code", "says"),
    [
        ({"model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "unknown model 'no-such-model'"),
        ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT, "model: a model name is required"),
        ({"prompt": pb.Prompt()}, grpc.StatusCode.INVALID_ARGUMENT, "prompt: the prompt is empty"),
        (
            {"prompt": text_prompt("")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt: the prompt is empty",
        ),
        ({"pooling": []}, grpc.StatusCode.INVALID_ARGUMENT, "pooling: at least one"),
        (
            {"pooling": ["mean", "median"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "pooling[1]: unknown pooling 'median'",
        ),
        ({"layers": []}, grpc.StatusCode.INVALID_ARGUMENT, "layers: at least one"),
        (
            {"layers": [0, 7]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "layers[1]: layer 7 is out of range",
        ),
        ({"layers": [-8]}, grpc.StatusCode.INVALID_ARGUMENT, "layers[0]: layer -8 is out of range"),
        ({"prompt": LONG_IDS}, grpc.StatusCode.INVALID_ARGUMENT, "600 tokens"),
        (
            {
                "prompt": pb.Prompt(
                    items=[pb.PromptItem(token_ids=pb.TokenIdsItem(data=[5, 30522]))]
                )
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt.items[0].token_ids.data[1]: token id 30522",
        ),
        ({"prompt": IMAGE}, grpc.StatusCode.INVALID_ARGUMENT, "prompt.items[0].image"),
        (
            {"prompt": CONTROL_PAST_END},
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt.items[0].text.controls[0]: start 3 + length 5 goes past",
        ),
        (
            {"prompt": NEGATIVE_FACTOR},
            grpc.StatusCode.INVALID_ARGUMENT,
            "factor must be finite, >= 0 and at most 1e+30",
        ),
        (
            {"prompt": pb.Prompt(items=[pb.PromptItem()])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt.items[0]",
        ),
        ({"hosting": "elsewhere"}, grpc.StatusCode.INVALID_ARGUMENT, "hosting: unknown hosting"),
        ({"hosting": "aleph-alpha"}, grpc.StatusCode.FAILED_PRECONDITION, "hosting"),
        (
            {"layers": [-1] * 65},
            grpc.StatusCode.INVALID_ARGUMENT,
            "layers: 65 layers, more than the limit of 64",
        ),
        (
            {"prompt": text_prompt(*["a"] * 257)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt.items: 257 prompt items, more than the limit of 256",
        ),
    ],
)
async def test_errors_name_the_field_with_the_right_status(
    stub: pb_grpc.EmbedServiceStub, overrides: dict[str, object], code: grpc.StatusCode, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Embed(embed_request(**overrides))
    assert error.value.code() == code
    assert says in (error.value.details() or "")


async def test_context_error_says_both_numbers(stub: pb_grpc.EmbedServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Embed(embed_request(prompt=LONG_IDS))
    details = error.value.details() or ""
    assert "600 tokens" in details and "512 positions" in details


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (
            lambda s: s.Tokenize(pb.TokenizeRequest(model="nope", prompt="x")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda s: s.Detokenize(pb.DetokenizeRequest(model=MODEL, token_ids=[99999])),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
async def test_tokenizer_errors(
    stub: pb_grpc.EmbedServiceStub, call: object, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(stub)  # type: ignore[operator]
    assert error.value.code() == code


async def test_concurrent_requests_match_their_solo_answers_and_errors_lose_nothing(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    texts = [f"request number {i} " + "word " * (i * 3) for i in range(12)]
    solo = [
        await stub.Embed(embed_request(prompt=text_prompt(t), pooling=["mean", "last_token"]))
        for t in texts
    ]
    calls = [
        stub.Embed(embed_request(prompt=text_prompt(t), pooling=["mean", "last_token"]))
        for t in texts
    ]
    bad = [stub.Embed(embed_request(layers=[99])) for _ in range(4)]
    results = await asyncio.gather(*calls, *bad, return_exceptions=True)
    good, failed = results[: len(texts)], results[len(texts) :]
    assert all(isinstance(f, grpc.aio.AioRpcError) for f in failed)
    for alone, together in zip(solo, good, strict=True):
        assert isinstance(together, pb.EmbedResponse)
        for pooling in ("mean", "last_token"):
            np.testing.assert_allclose(
                vector(together, 6, pooling), vector(alone, 6, pooling), atol=1e-5
            )
    assert (await stub.Embed(embed_request())).num_tokens_prompt_total == 4


async def test_health_reports_serving_for_the_server_and_the_service(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lamina.v1.EmbedService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    services: list[str] = []
    async for reply in reflection.ServerReflectionInfo(iter([request])):
        services += [s.name for s in reply.list_services_response.service]
    assert "lamina.v1.EmbedService" in services and "grpc.health.v1.Health" in services


async def test_prometheus_exposition(server: RunningServer, stub: pb_grpc.EmbedServiceStub) -> None:
    before = await scrape(server.metrics_port)
    await stub.Embed(embed_request(nice=True))
    after = await scrape(server.metrics_port)
    labels = {"method": "Embed", "model": MODEL, "code": "OK", "nice": "true", "hosting": "any"}
    assert (
        sample(after, "lamina_requests_total", **labels)
        == sample(before, "lamina_requests_total", **labels) + 1
    )
    assert sample(after, "lamina_queue_depth_requests", tier="nice", hosting="any") == 0
    assert sample(after, "lamina_ready") == 1
    assert sample(after, "lamina_model_version", model=MODEL) >= 1
    assert sample(after, "lamina_tokens_processed_total", pool="default", model=MODEL) >= 4
    assert sample(after, "lamina_pool_busy_seconds_total", pool="default") > 0
    assert sample(after, "lamina_batch_padding_ratio_count", pool="default", model=MODEL) >= 1
    assert sample(after, "lamina_queue_duration_seconds_count", model=MODEL, nice="true") >= 1


async def test_encoder_controls_in_a_batch_with_plain_requests(
    stub: pb_grpc.EmbedServiceStub,
) -> None:
    """MiniLM: controlled requests in both modes, a token-id control and plain ones run together;
    the plain ones are as they are alone, factor 1 is bit-identical, the controlled ones move."""
    sentence = "The weather in Paris is lovely today"

    def controlled(factor: float, **fields: object) -> pb.EmbedRequest:
        control = pb.TextControl(start=sentence.index("Paris"), length=5, factor=factor)
        item = pb.PromptItem(text=pb.TextItem(data=sentence, controls=[control]))
        return embed_request(prompt=pb.Prompt(items=[item]), **fields)

    token_control = embed_request(
        prompt=pb.Prompt(
            items=[
                pb.PromptItem(
                    token_ids=pb.TokenIdsItem(
                        data=[7592, 2088], controls=[pb.TokenControl(index=1, factor=0.0)]
                    )
                )
            ]
        )
    )
    plain = embed_request(prompt=text_prompt(sentence))
    alone = vector(await stub.Embed(plain), 6, "mean")
    replies = await asyncio.gather(
        stub.Embed(plain),
        stub.Embed(controlled(1.0)),
        stub.Embed(controlled(0.1)),
        stub.Embed(controlled(0.1, control_log_additive=False)),
        stub.Embed(token_control),
    )
    together = [vector(reply, 6, "mean") for reply in replies]
    np.testing.assert_allclose(together[0], alone, atol=1e-5)
    np.testing.assert_array_equal(together[1], together[0])
    for moved in together[2:4]:
        assert float(moved @ alone / np.linalg.norm(moved) / np.linalg.norm(alone)) < 0.9999
    assert not np.allclose(together[2], together[3], atol=1e-4)
    hello_world = vector(
        await stub.Embed(embed_request(prompt=text_prompt("hello world"))), 6, "mean"
    )
    assert not np.allclose(together[4], hello_world, atol=1e-4)  # "world" masked
