"""The official Aleph Alpha client, unchanged, against a real Lamina: every call it makes for
embeddings answers as the gRPC API answers the same request."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import aleph_alpha_client as aa
import grpc
import numpy as np
import pytest
from aleph_alpha_client.prompt import Cropping

from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import DINOV2, MINILM, SMOLLM2
from tests.gateway.support import Gateway
from tests.server.test_convert_vision import png

PICTURE = png(7, (180, 120))
SENTENCE = "The capital of France is Paris."


@pytest.fixture(scope="module")
def stub(gateway: Gateway) -> Iterator[pb_grpc.EmbedServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> aa.Client:
    # The token is sent and ignored: this server has no --auth-tokens-file.
    return aa.Client(token="unused", host=gateway.url, total_retries=0)


def grpc_vectors(reply: pb.EmbedResponse) -> dict[tuple[str, str], np.ndarray]:
    return {
        (layer, pooling): np.array(vector.values, dtype=np.float32)
        for layer, entry in reply.embeddings.items()
        for pooling, vector in entry.pooling.items()
    }


def http_vectors(response: aa.EmbeddingResponse) -> dict[tuple[str, str], np.ndarray]:
    assert response.embeddings is not None
    return {key: np.array(values, dtype=np.float32) for key, values in response.embeddings.items()}


def assert_same(response: aa.EmbeddingResponse, reply: pb.EmbedResponse) -> None:
    assert response.model_version == reply.model_version
    assert response.num_tokens_prompt_total == reply.num_tokens_prompt_total
    assert response.tokens == (list(reply.tokens.tokens) if reply.HasField("tokens") else None)
    expected = grpc_vectors(reply)
    actual = http_vectors(response)
    assert actual.keys() == expected.keys()
    for key, vector in expected.items():
        np.testing.assert_array_equal(actual[key], vector, err_msg=str(key))


def f32(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def text_item(data: str, *controls: pb.TextControl) -> pb.PromptItem:
    return pb.PromptItem(text=pb.TextItem(data=data, controls=controls))


def test_embed_text_with_layers_poolings_and_tokens(
    client: aa.Client, stub: pb_grpc.EmbedServiceStub
) -> None:
    request = aa.EmbeddingRequest(
        prompt=aa.Prompt.from_text("Hello world"),
        layers=[0, 3, -1],
        pooling=["mean", "weighted_mean", "max", "last_token", "abs_max"],
        tokens=True,
        normalize=True,
    )
    response = client.embed(request, model=MINILM)
    reply = stub.Embed(
        pb.EmbedRequest(
            model=MINILM,
            prompt=pb.Prompt(items=[text_item("Hello world")]),
            layers=[0, 3, -1],
            pooling=["mean", "weighted_mean", "max", "last_token", "abs_max"],
            tokens=True,
            normalize=True,
        )
    )
    assert_same(response, reply)
    assert {layer for layer, _ in http_vectors(response)} == {"layer_0", "layer_3", "layer_6"}
    assert response.tokens == ["[CLS]", "hello", "world", "[SEP]"]


def test_embed_text_and_token_ids_with_controls(
    client: aa.Client, stub: pb_grpc.EmbedServiceStub
) -> None:
    prompt = aa.Prompt(
        [
            aa.Text(
                SENTENCE,
                controls=[
                    aa.TextControl(
                        start=25,
                        length=5,
                        factor=0.1,
                        token_overlap=aa.ControlTokenOverlap.Complete,
                    )
                ],
            ),
            aa.Tokens([19556, 905], controls=[aa.TokenControl(pos=1, factor=2.0)]),
        ]
    )
    request = aa.EmbeddingRequest(
        prompt=prompt,
        layers=[-1, 15],
        pooling=["last_token", "mean"],
        contextual_control_threshold=0.9,
        control_log_additive=False,
    )
    response = client.embed(request, model=SMOLLM2)
    reply = stub.Embed(
        pb.EmbedRequest(
            model=SMOLLM2,
            prompt=pb.Prompt(
                items=[
                    text_item(
                        SENTENCE,
                        pb.TextControl(start=25, length=5, factor=0.1, token_overlap="complete"),
                    ),
                    pb.PromptItem(
                        token_ids=pb.TokenIdsItem(
                            data=[19556, 905], controls=[pb.TokenControl(index=1, factor=2.0)]
                        )
                    ),
                ]
            ),
            layers=[-1, 15],
            pooling=["last_token", "mean"],
            contextual_control_threshold=0.9,
            control_log_additive=False,
        )
    )
    assert_same(response, reply)
    plain = client.embed(
        aa.EmbeddingRequest(
            prompt=aa.Prompt.from_text(SENTENCE), layers=[-1], pooling=["last_token"]
        ),
        model=SMOLLM2,
    )
    assert plain.embeddings is not None and response.embeddings is not None
    assert (
        plain.embeddings["layer_30", "last_token"] != response.embeddings["layer_30", "last_token"]
    )


def test_embed_an_image_with_a_crop_and_controls(
    client: aa.Client, stub: pb_grpc.EmbedServiceStub
) -> None:
    control = aa.ImageControl(left=0, top=0, width=0.5, height=1, factor=0.0)
    image = aa.Image.from_bytes(PICTURE, cropping=Cropping(10, 5, 100), controls=[control])
    request = aa.EmbeddingRequest(prompt=aa.Prompt([image]), layers=[-1, 6], pooling=["mean"])
    response = client.embed(request, model=DINOV2)
    reply = stub.Embed(
        pb.EmbedRequest(
            model=DINOV2,
            prompt=pb.Prompt(
                items=[
                    pb.PromptItem(
                        image=pb.ImageItem(
                            data=PICTURE,
                            crop=pb.ImageCrop(x=10, y=5, size=100),
                            controls=[
                                pb.ImageControl(
                                    rect=pb.Rect(left=0, top=0, width=0.5, height=1), factor=0.0
                                )
                            ],
                        )
                    )
                ]
            ),
            layers=[-1, 6],
            pooling=["mean"],
        )
    )
    assert_same(response, reply)
    assert response.num_tokens_prompt_total == 144


def test_semantic_embed_and_batch(client: aa.Client, stub: pb_grpc.EmbedServiceStub) -> None:
    texts = ["deep learning", "artificial intelligence", "deep diving"]
    single = client.semantic_embed(
        aa.SemanticEmbeddingRequest(
            prompt=aa.Prompt.from_text(texts[0]),
            representation=aa.SemanticRepresentation.Symmetric,
            normalize=True,
        ),
        model=MINILM,
    )
    batch = client.batch_semantic_embed(
        aa.BatchSemanticEmbeddingRequest(
            prompts=[aa.Prompt.from_text(t) for t in texts],
            representation=aa.SemanticRepresentation.Query,
            normalize=True,
        ),
        model=MINILM,
    )
    reply = stub.SemanticEmbed(
        pb.SemanticEmbedRequest(
            model=MINILM,
            prompt=pb.Prompt(items=[text_item(texts[0])]),
            representation="symmetric",
            normalize=True,
        )
    )
    batch_reply = stub.BatchSemanticEmbed(
        pb.BatchSemanticEmbedRequest(
            model=MINILM,
            prompts=[pb.Prompt(items=[text_item(t)]) for t in texts],
            representation="query",
            normalize=True,
        )
    )
    assert single.model_version == reply.model_version
    assert single.num_tokens_prompt_total == reply.num_tokens_prompt_total
    np.testing.assert_array_equal(f32(single.embedding), f32(reply.embedding))
    assert batch.model_version == batch_reply.model_version
    assert batch.num_tokens_prompt_total == batch_reply.num_tokens_prompt_total
    assert len(batch.embeddings) == 3
    for got, expected in zip(batch.embeddings, batch_reply.embeddings, strict=True):
        np.testing.assert_array_equal(f32(got), f32(expected.values))
    # The client sends normalize=false unless told: unset in JSON would mean the model's default.
    raw = client.semantic_embed(
        aa.SemanticEmbeddingRequest(
            prompt=aa.Prompt.from_text(texts[0]),
            representation=aa.SemanticRepresentation.Symmetric,
        ),
        model=MINILM,
    )
    assert abs(np.linalg.norm(raw.embedding) - 1) > 1e-3


def test_semantic_embed_of_an_image(client: aa.Client, stub: pb_grpc.EmbedServiceStub) -> None:
    request = aa.SemanticEmbeddingRequest(
        prompt=aa.Prompt([aa.Image.from_bytes(PICTURE)]),
        representation=aa.SemanticRepresentation.Symmetric,
        normalize=True,
    )
    response = client.semantic_embed(request, model=DINOV2)
    reply = stub.SemanticEmbed(
        pb.SemanticEmbedRequest(
            model=DINOV2,
            prompt=pb.Prompt(items=[pb.PromptItem(image=pb.ImageItem(data=PICTURE))]),
            representation="symmetric",
            normalize=True,
        )
    )
    np.testing.assert_array_equal(f32(response.embedding), f32(reply.embedding))


def test_tokenize_detokenize_and_the_tokenizer(
    client: aa.Client, stub: pb_grpc.EmbedServiceStub
) -> None:
    both = client.tokenize(aa.TokenizationRequest("Hello world", True, True), model=SMOLLM2)
    reply = stub.Tokenize(
        pb.TokenizeRequest(model=SMOLLM2, prompt="Hello world", tokens=True, token_ids=True)
    )
    assert both.tokens == list(reply.tokens.tokens) == ["Hello", "Ġworld"]
    assert both.token_ids == list(reply.token_ids.ids)
    ids_only = client.tokenize(aa.TokenizationRequest("Hello", False, True), model=SMOLLM2)
    assert ids_only.tokens is None and ids_only.token_ids == [19556]
    text = client.detokenize(aa.DetokenizationRequest(list(reply.token_ids.ids)), model=SMOLLM2)
    assert text.result == "Hello world"
    tokenizer = client.tokenizer(MINILM)  # a tokenizers.Tokenizer built from the served file
    assert tokenizer.encode("Hello world").ids == [101, 7592, 2088, 102]


def test_models_and_version(client: aa.Client, stub: pb_grpc.EmbedServiceStub) -> None:
    client.validate_version()  # 1.x, at least the client's minimum
    models = {m["name"]: m for m in client.models()}
    listed = stub.ModelsAvailable(pb.ModelsAvailableRequest()).models
    assert set(models) == {m.name for m in listed}
    for info in listed:
        entry = models[info.name]
        assert entry["max_context_size"] == info.max_context_size
        assert entry["image_support"] == info.image_support
        assert entry["embedding_types"] == list(info.embedding_types)
        assert entry["version"] == info.version and entry["num_layers"] == info.num_layers
    assert models[DINOV2]["image_support"] is True
    assert "semantic_embed" in models[MINILM]["embedding_types"]


def test_routes_also_answer_under_v1(gateway: Gateway) -> None:
    client = aa.Client(token="unused", host=gateway.url + "v1", total_retries=0)
    response = client.embed(
        aa.EmbeddingRequest(prompt=aa.Prompt.from_text("Hello"), layers=[-1], pooling=["mean"]),
        model=MINILM,
    )
    assert response.model_version.startswith(f"{MINILM}@")
    assert client.get_version().startswith("1.")


def test_nice_travels_in_the_query_string(gateway: Gateway) -> None:
    client = aa.Client(token="unused", host=gateway.url, nice=True, total_retries=0)
    registry = gateway.instance.metrics.registry
    labels = {"method": "Embed", "model": MINILM, "code": "OK", "nice": "true", "hosting": "any"}
    before = registry.get_sample_value("lamina_requests_total", labels) or 0
    client.embed(
        aa.EmbeddingRequest(prompt=aa.Prompt.from_text("Hello"), layers=[-1], pooling=["mean"]),
        model=MINILM,
    )
    assert registry.get_sample_value("lamina_requests_total", labels) == before + 1


async def test_the_async_client(gateway: Gateway) -> None:
    image = pb.PromptItem(image=pb.ImageItem(data=PICTURE))
    async with (
        aa.AsyncClient(token="unused", host=gateway.url, nice=True, total_retries=0) as client,
        grpc.aio.insecure_channel(gateway.target) as channel,
    ):
        stub = pb_grpc.EmbedServiceStub(channel)
        response = await client.embed(
            aa.EmbeddingRequest(
                prompt=aa.Prompt([aa.Image.from_bytes(PICTURE)]), layers=[-1], pooling=["max"]
            ),
            model=DINOV2,
        )
        reply = await stub.Embed(
            pb.EmbedRequest(
                model=DINOV2, prompt=pb.Prompt(items=[image]), layers=[-1], pooling=["max"]
            )
        )
        assert_same(response, reply)
        semantic = await client.semantic_embed(
            aa.SemanticEmbeddingRequest(
                prompt=aa.Prompt.from_text("Hello"),
                representation=aa.SemanticRepresentation.Document,
                normalize=True,
            ),
            model=MINILM,
        )
        batch = await client.batch_semantic_embed(
            aa.BatchSemanticEmbeddingRequest(
                prompts=[aa.Prompt.from_text("Hello"), aa.Prompt.from_text("world")],
                representation=aa.SemanticRepresentation.Document,
                normalize=True,
            ),
            model=MINILM,
        )
        semantic_reply = await stub.SemanticEmbed(
            pb.SemanticEmbedRequest(
                model=MINILM,
                prompt=pb.Prompt(items=[text_item("Hello")]),
                representation="document",
                normalize=True,
            )
        )
        tokens = await client.tokenize(aa.TokenizationRequest("Hello", True, True), model=MINILM)
        text = await client.detokenize(aa.DetokenizationRequest([7592]), model=MINILM)
        models = await client.models()
        await client.validate_version()
    np.testing.assert_array_equal(f32(semantic.embedding), f32(semantic_reply.embedding))
    np.testing.assert_array_equal(f32(batch.embeddings[0]), f32(semantic_reply.embedding))
    assert tokens.tokens == ["hello"] and tokens.token_ids == [7592]
    assert text.result == "hello"
    assert {m["name"] for m in models} == {MINILM, SMOLLM2, DINOV2}


def test_base64_images_as_any_client_sends_them(gateway: Gateway) -> None:
    """The JSON a script without the client writes: the same shapes, by hand."""
    import requests

    body = {
        "model": DINOV2,
        "prompt": [{"type": "image", "data": base64.b64encode(PICTURE).decode()}],
        "layers": [-1],
        "pooling": ["mean"],
        "hosting": None,
        "tokens": None,
    }
    reply = requests.post(gateway.url + "embed", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["tokens"] is None
    assert list(reply.json()["embeddings"]) == ["layer_12"]
