"""OpenAI's embeddings route against a real Lamina, through the clients people point at it: the
official `openai` client (base_url .../v1), the official Aleph Alpha client's `embeddings` (the
root route) and LangChain's OpenAIEmbeddings. Every vector equals what SemanticEmbed (gRPC,
representation symmetric) answers for the same input, and errors arrive in OpenAI's shape as each
client's own exception types."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aleph_alpha_client as aa
import grpc
import numpy as np
import openai
import pytest
import requests
from langchain_openai import OpenAIEmbeddings

from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import MINILM, SMOLLM2
from tests.gateway.support import Gateway, threaded_server

TEXTS = ["The capital of France is Paris.", "Bonjour", "A third, longer sentence about embeddings."]
# A copy of MiniLM whose manifest declares Matryoshka sizes (the shipped one declares none).
MATRYOSHKA = "minilm-matryoshka"
SIZES = [64, 128]
TOKEN = "openai-route-token"


@pytest.fixture(scope="module")
def stub(gateway: Gateway) -> Iterator[pb_grpc.EmbedServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> openai.OpenAI:
    # The key is sent and ignored: this server has no --auth-tokens-file.
    return openai.OpenAI(api_key="unused", base_url=gateway.url + "v1", max_retries=0)


def semantic(stub: pb_grpc.EmbedServiceStub, *items: pb.PromptItem, **fields: Any) -> np.ndarray:
    reply = stub.SemanticEmbed(
        pb.SemanticEmbedRequest(
            model=fields.pop("model", MINILM),
            prompt=pb.Prompt(items=items),
            representation="symmetric",
            **fields,
        )
    )
    return np.array(reply.embedding, dtype=np.float32)


def text(data: str) -> pb.PromptItem:
    return pb.PromptItem(text=pb.TextItem(data=data))


def ids(data: list[int]) -> pb.PromptItem:
    return pb.PromptItem(token_ids=pb.TokenIdsItem(data=data))


def vectors(response: Any) -> list[np.ndarray]:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    assert all(d.object == "embedding" for d in response.data)
    return [decoded(d.embedding) for d in response.data]


def decoded(embedding: list[float] | str) -> np.ndarray:
    """A vector as sent: floats, or (encoding_format base64 asked for by the caller, which the
    openai client then hands on undecoded) the base64 of little-endian float32."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def post(gateway: Gateway, path: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(gateway.url + path, json=body, timeout=60, **kwargs)


def openai_error(reply: requests.Response, status: int, param: str | None, says: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert says in error["message"], error


# -- the openai client --------------------------------------------------------------------------


def test_one_string_equals_semantic_embed(
    client: openai.OpenAI, stub: pb_grpc.EmbedServiceStub
) -> None:
    # The client asks for base64 unless told otherwise, and decodes it itself.
    response = client.embeddings.create(model=MINILM, input=TEXTS[0])
    (vector,) = vectors(response)
    np.testing.assert_array_equal(vector, semantic(stub, text(TEXTS[0])))
    assert response.object == "list" and response.model == MINILM
    tokens = stub.Tokenize(pb.TokenizeRequest(model=MINILM, prompt=TEXTS[0], token_ids=True))
    assert response.usage.prompt_tokens == len(tokens.token_ids.ids) + 2  # [CLS] ... [SEP]
    assert response.usage.total_tokens == response.usage.prompt_tokens


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_a_list_of_strings_keeps_its_order(
    client: openai.OpenAI, stub: pb_grpc.EmbedServiceStub, encoding_format: Any
) -> None:
    response = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format=encoding_format)
    got = vectors(response)
    sent_as = {type(d.embedding) for d in response.data}
    assert sent_as == ({str} if encoding_format == "base64" else {list})
    assert len(got) == len(TEXTS)
    for vector, sentence in zip(got, TEXTS, strict=True):
        np.testing.assert_array_equal(vector, semantic(stub, text(sentence)))


def test_token_ids_and_lists_of_them(client: openai.OpenAI, stub: pb_grpc.EmbedServiceStub) -> None:
    first, second = [101, 7592, 2088, 102], [101, 3000, 102]
    (one,) = vectors(client.embeddings.create(model=MINILM, input=first))
    np.testing.assert_array_equal(one, semantic(stub, ids(first)))
    many = vectors(client.embeddings.create(model=MINILM, input=[first, second]))
    np.testing.assert_array_equal(many[0], one)
    np.testing.assert_array_equal(many[1], semantic(stub, ids(second)))


def test_the_async_client_answers_the_same(
    gateway: Gateway, stub: pb_grpc.EmbedServiceStub
) -> None:
    async def call() -> Any:
        async with openai.AsyncOpenAI(
            api_key="unused", base_url=gateway.url + "v1", max_retries=0
        ) as client:
            return await client.embeddings.create(model=MINILM, input=TEXTS[:2])

    got = vectors(asyncio.run(call()))
    np.testing.assert_array_equal(got[1], semantic(stub, text(TEXTS[1])))


def test_base64_is_little_endian_float32(gateway: Gateway, stub: pb_grpc.EmbedServiceStub) -> None:
    reply = post(
        gateway, "v1/embeddings", {"model": MINILM, "input": "Hi", "encoding_format": "base64"}
    )
    assert reply.status_code == 200, reply.text
    raw = base64.b64decode(reply.json()["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), semantic(stub, text("Hi")))


def nice_calls(gateway: Gateway) -> float:
    counter = gateway.instance.metrics.requests.labels("Embeddings", MINILM, "OK", "true", "any")
    return float(counter._value.get())


def test_nice_and_hosting_are_extensions(client: openai.OpenAI, gateway: Gateway) -> None:
    before = nice_calls(gateway)
    by_query = client.embeddings.create(model=MINILM, input="Hi", extra_query={"nice": "true"})
    by_body = client.embeddings.create(model=MINILM, input="Hi", extra_body={"nice": True})
    plain = client.embeddings.create(model=MINILM, input="Hi")
    assert nice_calls(gateway) == before + 2  # the plain one is not nice
    np.testing.assert_array_equal(vectors(by_query)[0], vectors(plain)[0])
    np.testing.assert_array_equal(vectors(by_body)[0], vectors(plain)[0])
    with pytest.raises(openai.BadRequestError) as raised:  # this server has no such pool
        client.embeddings.create(model=MINILM, input="Hi", extra_body={"hosting": "aleph-alpha"})
    assert raised.value.body["param"] == "hosting"  # type: ignore[index]
    assert raised.value.body["code"] == "FAILED_PRECONDITION"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MINILM, input="Hi", extra_query={"nice": "maybe"})
    assert raised.value.param == "nice"


def test_user_is_accepted_and_ignored(client: openai.OpenAI) -> None:
    with_user = client.embeddings.create(model=MINILM, input="Hi", user="user-1234")
    assert len(vectors(with_user)[0]) == 384


def test_errors_are_the_clients_own_types_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.embeddings.create(model="no-such-model", input="Hi")
    assert not_found.value.param == "model" and not_found.value.code == "NOT_FOUND"
    assert not_found.value.type == "invalid_request_error"
    assert MINILM in not_found.value.message  # it lists the served models

    with pytest.raises(openai.BadRequestError) as no_semantic:
        client.embeddings.create(model=SMOLLM2, input="Hi")
    assert no_semantic.value.param == "model" and SMOLLM2 in no_semantic.value.message
    assert "no semantic embedding" in no_semantic.value.message

    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model=MINILM, input=["x"] * 101)
    assert too_many.value.param == "input"
    assert "101 inputs, more than the limit of 100" in too_many.value.message

    with pytest.raises(openai.BadRequestError) as vocabulary:
        client.embeddings.create(model=MINILM, input=[[101, 102], [101, 10**9]])
    assert vocabulary.value.param == "input[1][1]", vocabulary.value.message
    assert "outside the vocabulary" in vocabulary.value.message

    with pytest.raises(openai.BadRequestError) as dimensions:
        client.embeddings.create(model=MINILM, input="Hi", dimensions=64)
    assert dimensions.value.param == "dimensions"
    assert "full size: 384" in dimensions.value.message


def test_a_long_input_is_refused_naming_it_never_truncated(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MINILM, input=["short", "word " * 600])
    assert raised.value.param == "input[1]", raised.value.message
    assert "never truncated" in raised.value.message


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": MINILM}, "input", "required"),
        ({"model": MINILM, "input": []}, "input", "an empty list"),
        ({"model": MINILM, "input": ["a", ["b"]]}, "input[1]", "expected a string like input[0]"),
        ({"model": MINILM, "input": [[1], "b"]}, "input[1]", "expected token ids like input[0]"),
        ({"model": MINILM, "input": [1, "x"]}, "input[1]", "expected an integer"),
        ({"model": MINILM, "input": [True]}, "input[0]", "expected a string or token ids"),
        ({"model": MINILM, "input": ""}, "input", "empty"),
        ({"model": MINILM, "input": ["a", ""]}, "input[1]", "empty"),
        ({"model": MINILM, "input": "a", "encoding_format": "hex"}, "encoding_format", "base64"),
        ({"model": MINILM, "input": "a", "dimensions": 0}, "dimensions", "outside 1.."),
        ({"model": MINILM, "input": "a", "truncate": True}, "truncate", "unknown field"),
        ({"input": "a"}, "model", "required"),
    ],
)
def test_bad_bodies_name_the_field(
    gateway: Gateway, body: dict[str, Any], param: str, says: str
) -> None:
    for path in ("embeddings", "v1/embeddings"):
        openai_error(post(gateway, path, body), 400, param, says)


def test_the_openai_shape_is_on_the_openai_routes_only(gateway: Gateway) -> None:
    not_json = requests.post(gateway.url + "v1/embeddings", data=b"{", timeout=60)
    openai_error(not_json, 400, "body", "not valid JSON")
    wrong_method = requests.get(gateway.url + "v1/embeddings", timeout=60)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["allow"]
    assert wrong_method.json()["error"]["code"] == "UNIMPLEMENTED"
    aleph = post(gateway, "semantic_embed", {"model": "nope", "prompt": "a"})
    assert set(aleph.json()) == {"error", "code"}  # the rest of the gateway keeps its shape


# -- dimensions, bearer tokens and starting up, on servers of their own -------------------------


@pytest.fixture(scope="module")
def matryoshka_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM's newest version, its files linked (not copied), its manifest declaring
    Matryoshka sizes."""
    source = max((model_repository / MINILM).iterdir(), key=lambda p: int(p.name))
    repository = tmp_path_factory.mktemp("matryoshka")
    target = repository / MATRYOSHKA / "1"
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.name != "manifest.json":
            try:
                os.link(file, target / file.name)
            except OSError:  # another file system
                shutil.copy2(file, target / file.name)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["semantic"]["matryoshka_dimensions"] = SIZES
    (target / "manifest.json").write_text(json.dumps(manifest))
    return repository


@pytest.fixture(scope="module")
def guarded(
    matryoshka_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    with threaded_server(matryoshka_repository, auth_tokens_file=tokens) as running:
        yield running


def test_dimensions_truncate_to_a_matryoshka_size_then_normalise(guarded: Gateway) -> None:
    client = openai.OpenAI(api_key=TOKEN, base_url=guarded.url + "v1", max_retries=0)
    full = vectors(client.embeddings.create(model=MATRYOSHKA, input=TEXTS[0]))[0]
    assert full.shape == (384,)
    for size in SIZES:
        (vector,) = vectors(
            client.embeddings.create(model=MATRYOSHKA, input=TEXTS[0], dimensions=size)
        )
        assert vector.shape == (size,)
        prefix = full[:size] / np.linalg.norm(full[:size])
        np.testing.assert_allclose(vector, prefix, rtol=0, atol=1e-6)
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-6
    with grpc.insecure_channel(guarded.target) as channel:
        reply = pb_grpc.EmbedServiceStub(channel).SemanticEmbed(
            pb.SemanticEmbedRequest(
                model=MATRYOSHKA,
                prompt=pb.Prompt(items=[text(TEXTS[0])]),
                representation="symmetric",
                compress_to_size=128,
            ),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
        )
    (same,) = vectors(client.embeddings.create(model=MATRYOSHKA, input=TEXTS[0], dimensions=128))
    np.testing.assert_array_equal(same, np.array(reply.embedding, dtype=np.float32))
    whole = client.embeddings.create(model=MATRYOSHKA, input=TEXTS[0], dimensions=384)
    np.testing.assert_array_equal(vectors(whole)[0], full)  # its full size: nothing truncated

    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MATRYOSHKA, input=TEXTS[0], dimensions=100)
    assert raised.value.param == "dimensions"
    assert "Matryoshka sizes and full size: 64, 128, 384" in raised.value.message


def test_a_missing_or_wrong_key_is_the_authentication_error(guarded: Gateway) -> None:
    client = openai.OpenAI(api_key="wrong", base_url=guarded.url + "v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.embeddings.create(model=MATRYOSHKA, input="Hi")
    assert raised.value.type == "authentication_error" and raised.value.code == "UNAUTHENTICATED"
    assert raised.value.response.headers["www-authenticate"] == "Bearer"


def test_starting_up_is_503_with_retry_after(matryoshka_repository: Path) -> None:
    with threaded_server(matryoshka_repository, load=False) as starting:
        client = openai.OpenAI(api_key="unused", base_url=starting.url + "v1", max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            client.embeddings.create(model=MATRYOSHKA, input="Hi")
    assert raised.value.status_code == 503 and raised.value.code == "UNAVAILABLE"
    assert raised.value.type == "server_error"
    assert int(raised.value.response.headers["retry-after"]) >= 1


# -- the official Aleph Alpha client and LangChain ----------------------------------------------


def test_the_aleph_alpha_client_embeddings(
    gateway: Gateway, stub: pb_grpc.EmbedServiceStub
) -> None:
    client = aa.Client(token="unused", host=gateway.url, total_retries=0)
    response = client.embeddings(aa.EmbeddingV2Request(input=TEXTS), model=MINILM)
    assert response.object == "list" and response.model == MINILM
    for data, sentence in zip(response.data, TEXTS, strict=True):
        np.testing.assert_array_equal(
            np.asarray(data.embedding, dtype=np.float32), semantic(stub, text(sentence))
        )
    assert response.usage.prompt_tokens == response.usage.total_tokens > len(TEXTS) * 2
    encoded = client.embeddings(
        aa.EmbeddingV2Request(input=[101, 7592, 102], encoding_format="base64"), model=MINILM
    )
    raw = base64.b64decode(cast(str, encoded.data[0].embedding))  # handed on as sent
    np.testing.assert_array_equal(
        np.frombuffer(raw, dtype="<f4"), semantic(stub, ids([101, 7592, 102]))
    )
    with pytest.raises(ValueError) as raised:  # its type for 400
        client.embeddings(aa.EmbeddingV2Request(input="Hi", dimensions=20), model=MINILM)
    assert raised.value.args[0] == 400 and '"param":"dimensions"' in raised.value.args[1]
    # Sent by the client when set: tags are ignored, nice is the query parameter.
    tagged = aa.Client(token="unused", host=gateway.url, total_retries=0, nice=True, tags=["t"])
    again = tagged.embeddings(aa.EmbeddingV2Request(input=TEXTS[0]), model=MINILM)
    assert again.data[0].embedding == response.data[0].embedding
    # aleph-alpha-client 11.5.1 has `embeddings` on its sync Client only; when its AsyncClient
    # gains one, it belongs in this test.
    assert not hasattr(aa.AsyncClient, "embeddings")


def test_langchain_openai_embeddings(gateway: Gateway, stub: pb_grpc.EmbedServiceStub) -> None:
    # check_embedding_ctx_length=False: LangChain would otherwise send tiktoken ids of OpenAI's
    # vocabulary, which are not the served model's.
    embedder = OpenAIEmbeddings(
        model=MINILM,
        base_url=gateway.url + "v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        # At most 100 inputs per request (LangChain's default is 1000): 2 here, so the three
        # documents take two requests, still in order.
        chunk_size=2,
        max_retries=0,
    )
    documents = embedder.embed_documents(TEXTS)
    assert len(documents) == len(TEXTS)
    for vector, sentence in zip(documents, TEXTS, strict=True):
        np.testing.assert_array_equal(
            np.asarray(vector, dtype=np.float32), semantic(stub, text(sentence))
        )
    query = embedder.embed_query("Where is Paris?")
    np.testing.assert_array_equal(
        np.asarray(query, dtype=np.float32), semantic(stub, text("Where is Paris?"))
    )


def test_admission_counts_every_input_of_the_list(matryoshka_repository: Path) -> None:
    """Each input is its own row in the queue: a list longer than the queue's room is refused
    whole (429, the client's RateLimitError), though every single input would fit."""
    policy = SchedulingPolicy(max_wait_seconds=0.005, max_queue_requests=4)
    with threaded_server(matryoshka_repository, scheduling=policy) as small:
        client = openai.OpenAI(api_key="unused", base_url=small.url + "v1", max_retries=0)
        assert len(vectors(client.embeddings.create(model=MATRYOSHKA, input=TEXTS))) == 3
        with pytest.raises(openai.RateLimitError) as raised:
            client.embeddings.create(model=MATRYOSHKA, input=[f"input {i}" for i in range(10)])
    assert raised.value.code == "RESOURCE_EXHAUSTED" and raised.value.type == "rate_limit_error"
    assert int(raised.value.response.headers["retry-after"]) >= 1
