"""POST instructable_embed (at the root and under /v1/) on a real gateway: the official client's
`instructable_embed`, sync and async, answers what the gRPC Embed API answers for the same
sequence, layer and pooling; errors are 400 naming the JSON field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aleph_alpha_client as aa
import grpc
import numpy as np
import pytest
import requests

# Not re-exported by the package: the official client's own module, as it imports them.
from aleph_alpha_client.embedding import (
    InstructableEmbeddingRequest,
    InstructableEmbeddingResponse,
)

from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import DINOV2, MINILM, SMOLLM2
from tests.gateway.support import Gateway

INSTRUCTION = "Represent the sentence for retrieving answers about geography"
SENTENCE = "The capital of France is Paris."


@pytest.fixture(scope="module")
def stub(gateway: Gateway) -> Iterator[pb_grpc.EmbedServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> aa.Client:
    return aa.Client(token="unused", host=gateway.url, total_retries=0)


def text(data: str, *controls: pb.TextControl) -> pb.PromptItem:
    return pb.PromptItem(text=pb.TextItem(data=data, controls=controls))


def grpc_embed(
    stub: pb_grpc.EmbedServiceStub, *items: pb.PromptItem, **fields: Any
) -> tuple[np.ndarray, pb.EmbedResponse]:
    """The gRPC Embed API on the sequence SmolLM2's section makes: the instruction and a newline
    before the input, the last token of the last layer."""
    reply = stub.Embed(
        pb.EmbedRequest(
            model=SMOLLM2,
            prompt=pb.Prompt(items=[text(f"{INSTRUCTION}\n"), *items]),
            layers=[-1],
            pooling=["last_token"],
            **fields,
        )
    )
    vector = reply.embeddings["layer_30"].pooling["last_token"].values
    return np.asarray(vector, dtype=np.float32), reply


def post(gateway: Gateway, route: str, body: Any) -> requests.Response:
    return requests.post(gateway.url + route, json=body, timeout=120)


def test_the_official_client_equals_the_grpc_embed(
    client: aa.Client, stub: pb_grpc.EmbedServiceStub
) -> None:
    prompt = aa.Prompt(
        [
            aa.Text(SENTENCE, controls=[aa.TextControl(start=25, length=5, factor=0.1)]),
            aa.Tokens([19556, 905], controls=[aa.TokenControl(pos=0, factor=2.0)]),
        ]
    )
    request = InstructableEmbeddingRequest(
        input=prompt, instruction=INSTRUCTION, normalize=True, control_log_additive=False
    )
    response = client.instructable_embed(request, model=SMOLLM2)
    same, reply = grpc_embed(
        stub,
        text(SENTENCE, pb.TextControl(start=25, length=5, factor=0.1)),
        pb.PromptItem(
            token_ids=pb.TokenIdsItem(
                data=[19556, 905], controls=[pb.TokenControl(index=0, factor=2.0)]
            )
        ),
        normalize=True,
        control_log_additive=False,
    )
    assert isinstance(response, InstructableEmbeddingResponse)
    np.testing.assert_allclose(np.asarray(response.embedding), same, rtol=1e-5, atol=1e-6)
    assert response.model_version == reply.model_version
    assert response.num_tokens_prompt_total == reply.num_tokens_prompt_total


async def test_the_async_client_equals_the_grpc_embed(gateway: Gateway) -> None:
    async with (
        aa.AsyncClient(token="unused", host=gateway.url, nice=True, total_retries=0) as client,
        grpc.aio.insecure_channel(gateway.target) as channel,
    ):
        response = await client.instructable_embed(
            InstructableEmbeddingRequest(
                input=aa.Prompt.from_text(SENTENCE), instruction=INSTRUCTION
            ),
            model=SMOLLM2,
        )
        reply = await pb_grpc.EmbedServiceStub(channel).Embed(
            pb.EmbedRequest(
                model=SMOLLM2,
                prompt=pb.Prompt(items=[text(f"{INSTRUCTION}\n"), text(SENTENCE)]),
                layers=[-1],
                pooling=["last_token"],
            )
        )
    same = np.asarray(reply.embeddings["layer_30"].pooling["last_token"].values)
    np.testing.assert_allclose(np.asarray(response.embedding), same, rtol=1e-5, atol=1e-6)
    assert response.num_tokens_prompt_total == reply.num_tokens_prompt_total


def test_both_routes_answer_the_same_json(gateway: Gateway, stub: pb_grpc.EmbedServiceStub) -> None:
    body = {"model": SMOLLM2, "input": SENTENCE, "instruction": INSTRUCTION}
    root, v1 = (
        post(gateway, "instructable_embed", body),
        post(gateway, "v1/instructable_embed", body),
    )
    assert root.status_code == v1.status_code == 200, root.text
    answer = root.json()
    assert set(answer) == {"model_version", "embedding", "num_tokens_prompt_total", "timing"}
    assert set(answer["timing"]) == {
        "queue_seconds",
        "tokenization_seconds",
        "inference_seconds",
        "parked_seconds",
    }
    np.testing.assert_allclose(answer["embedding"], v1.json()["embedding"], rtol=1e-5, atol=1e-6)
    same, _ = grpc_embed(stub, text(SENTENCE))
    np.testing.assert_allclose(np.asarray(answer["embedding"]), same, rtol=1e-5, atol=1e-6)
    # nice only from the query string, as the official client sends it.
    nice = requests.post(gateway.url + "instructable_embed?nice=true", json=body, timeout=120)
    assert nice.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "starts"),
    [
        ({"model": MINILM, "input": "x", "instruction": "y"}, 400, "model: model 'all-minilm"),
        ({"model": "nope", "input": "x", "instruction": "y"}, 404, "model: unknown model"),
        ({"model": SMOLLM2, "instruction": "y"}, 400, "input: the prompt is empty"),
        ({"model": SMOLLM2, "input": "x", "instruction": ["y"]}, 400, "instruction: expected a"),
        ({"model": SMOLLM2, "input": "x", "layers": [-1]}, 400, "layers: unknown field"),
        (
            {
                "model": SMOLLM2,
                "input": [
                    {
                        "type": "text",
                        "data": "Paris",
                        "controls": [{"start": 0, "length": 2, "factor": 1e31}],
                    }
                ],
            },
            400,
            "input[0].controls[0].factor: control factor must be finite",
        ),
        (
            {
                "model": SMOLLM2,
                "input": [{"type": "token_ids", "data": [1] * 8191}],
                "instruction": INSTRUCTION,  # its tokens take the prompt past the context
            },
            400,
            "input: the prompt has",
        ),
        (
            {"model": SMOLLM2, "input": "x", "hosting": "aleph-alpha"},
            400,
            "hosting: no worker pool may process",
        ),
    ],
)
def test_bad_requests_name_the_json_field(
    gateway: Gateway, body: dict[str, Any], status: int, starts: str
) -> None:
    reply = post(gateway, "instructable_embed", body)
    assert reply.status_code == status, reply.text
    error = reply.json()
    assert set(error) == {"error", "code"}
    assert error["error"].startswith(starts), error["error"]


def test_a_model_without_the_section_names_those_with_one(gateway: Gateway) -> None:
    reply = post(gateway, "instructable_embed", {"model": DINOV2, "input": "x", "instruction": ""})
    assert reply.status_code == 400
    assert reply.json()["code"] == "INVALID_ARGUMENT"
    assert reply.json()["error"].endswith(f"models with one: {SMOLLM2}")


def test_the_official_client_raises_value_error_for_400(client: aa.Client) -> None:
    request = InstructableEmbeddingRequest(input=aa.Prompt.from_text("x"), instruction="y")
    with pytest.raises(ValueError, match="has no instructable embedding"):
        client.instructable_embed(request, model=MINILM)
