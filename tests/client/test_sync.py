"""The blocking client against a small real gRPC server with canned replies."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lamina.client import Client, LaminaError, ModelInfo, Text, Timing, TokenIds, TokenizeResult
from lamina.v1 import embed_pb2 as pb
from tests.client import fake_server
from tests.client.fake_server import FakeServer


def test_embed_sends_the_request_and_parses_the_reply(fake: FakeServer) -> None:
    with Client(fake.target) as client:
        result = client.embed(
            "fake-model",
            [Text("Hello"), TokenIds([7, 8])],
            layers=[0, -1],
            pooling=["mean", "max"],
            tokens=True,
            hosting="aleph-alpha",
            nice=True,
            control_log_additive=False,
        )
    request = fake.last.request
    assert isinstance(request, pb.EmbedRequest)
    assert [item.WhichOneof("item") for item in request.prompt.items] == ["text", "token_ids"]
    assert list(request.layers) == [0, -1] and list(request.pooling) == ["mean", "max"]
    assert request.hosting == "aleph-alpha" and request.nice
    assert request.HasField("control_log_additive") and not request.control_log_additive
    assert not request.HasField("normalize") and not request.HasField("type")

    assert result.model_version == "fake-model@3"
    assert sorted(result.embeddings) == [0, 6]
    assert result.vector(6, "max").tolist() == [6.0, 1.5]
    assert result.vector(0, "mean").dtype == np.float32
    assert result.tokens == ["t0", "t1"] and result.num_tokens_prompt_total == 2
    assert result.timing == Timing(0.25, 0.5, 0.75, parked_seconds=0.125)


def test_embed_defaults_ask_for_the_last_layer_mean_and_leave_optionals_unset(
    fake: FakeServer,
) -> None:
    with Client(fake.target) as client:
        result = client.embed("fake-model", "Hello")
    request = fake.last.request
    assert list(request.layers) == [-1] and list(request.pooling) == ["mean"]
    assert request.prompt.items[0].text.data == "Hello" and not request.nice
    for name in ("normalize", "tokens", "hosting", "contextual_control_threshold", "type"):
        assert not request.HasField(name), name
    assert not request.HasField("control_log_additive")
    assert result.tokens is None and list(result.embeddings) == [6]


def test_models_tokenize_detokenize(fake: FakeServer) -> None:
    with Client(fake.target) as client:
        (model,) = client.models()
        both = client.tokenize("fake-model", "hello big world")
        ids_only = client.tokenize("fake-model", "hello world", tokens=False)
        text = client.detokenize("fake-model", [3, 4])
    assert isinstance(model, ModelInfo)
    assert (model.name, model.num_layers, model.hostings) == ("fake-model", 6, ["aleph-alpha"])
    assert both == TokenizeResult(["hello", "big", "world"], [5, 3, 5])
    assert ids_only == TokenizeResult(None, [5, 5])
    assert fake.last.request == pb.DetokenizeRequest(model="fake-model", token_ids=[3, 4])
    assert text == "<3> <4>"


def test_a_rejected_call_raises_lamina_error_with_code_and_message(fake: FakeServer) -> None:
    with Client(fake.target) as client, pytest.raises(LaminaError) as error:
        client.embed(fake_server.REJECTED, "x", layers=[42])
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message == fake_server.INVALID_MESSAGE
    assert str(error.value) == f"INVALID_ARGUMENT: {fake_server.INVALID_MESSAGE}"
    copy = pickle.loads(pickle.dumps(error.value))
    assert (copy.code, copy.message) == (error.value.code, error.value.message)


def test_timeout_and_metadata_go_with_every_call(fake: FakeServer) -> None:
    with Client(fake.target, timeout=5, metadata=[("authorization", "Bearer t")]) as client:
        client.models()
        client.detokenize("fake-model", [1])
    for received in fake.service.received:
        assert received.metadata["authorization"] == "Bearer t"
        assert received.time_remaining is not None and 0 < received.time_remaining < 5.5


def test_a_passed_deadline_is_deadline_exceeded(fake: FakeServer) -> None:
    with Client(fake.target, timeout=0.2) as client, pytest.raises(LaminaError) as error:
        client.embed(fake_server.SLOW, "x")
    assert error.value.code == "DEADLINE_EXCEEDED"


def test_no_server_is_unavailable() -> None:
    with (
        Client(fake_server.closed_port_target(), timeout=10) as client,
        pytest.raises(LaminaError) as error,
    ):
        client.models()
    assert error.value.code == "UNAVAILABLE"


def test_replies_past_the_4_mib_grpc_default_arrive(fake: FakeServer) -> None:
    with Client(fake.target) as client:
        result = client.embed(fake_server.BIG, "x")
    assert result.vector(6, "mean").shape == (fake_server.BIG_VALUES,)


def test_caller_options_override_the_message_limit(fake: FakeServer) -> None:
    options = [("grpc.max_receive_message_length", 1024)]
    with Client(fake.target, options=options) as client, pytest.raises(LaminaError) as error:
        client.embed(fake_server.BIG, "x")
    assert error.value.code == "RESOURCE_EXHAUSTED"


def test_a_closed_client_refuses_calls(fake: FakeServer) -> None:
    client = Client(fake.target)
    client.close()
    with pytest.raises(ValueError):
        client.models()
