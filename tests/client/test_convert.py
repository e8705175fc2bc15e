"""The client's request building and reply parsing, without a server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lamina.client import _calls, results
from lamina.client.prompt import (
    Image,
    ImageControl,
    ImageCrop,
    Prompt,
    Rect,
    Text,
    TextControl,
    TokenControl,
    TokenIds,
)
from lamina.v1 import embed_pb2 as pb

OPTIONAL_EMBED_FIELDS = (
    "normalize",
    "tokens",
    "hosting",
    "contextual_control_threshold",
    "control_log_additive",
    "type",
)


def _embed_request(prompt: Prompt = "hello", **overrides: Any) -> pb.EmbedRequest:
    arguments: dict[str, Any] = {
        "layers": [-1],
        "pooling": ["mean"],
        "normalize": None,
        "tokens": None,
        "hosting": None,
        "nice": False,
        "contextual_control_threshold": None,
        "control_log_additive": None,
        "type": None,
    }
    arguments.update(overrides)
    call = _calls.embed("m", prompt, **arguments)
    assert call.method == "Embed" and isinstance(call.request, pb.EmbedRequest)
    return call.request


def test_unset_optionals_stay_unset_so_the_server_applies_api_defaults() -> None:
    request = _embed_request()
    for name in OPTIONAL_EMBED_FIELDS:
        assert not request.HasField(name), name
    assert not request.nice


def test_every_embed_field_reaches_the_request() -> None:
    request = _embed_request(
        layers=[0, 3, -1],
        pooling=["mean", "abs_max"],
        normalize=True,
        tokens=True,
        hosting="aleph-alpha",
        nice=True,
        contextual_control_threshold=0.25,
        control_log_additive=True,
        type="symmetric",
    )
    assert request.model == "m"
    assert list(request.layers) == [0, 3, -1]
    assert list(request.pooling) == ["mean", "abs_max"]
    assert request.normalize and request.tokens and request.nice and request.control_log_additive
    assert (request.hosting, request.contextual_control_threshold, request.type) == (
        "aleph-alpha",
        0.25,
        "symmetric",
    )


def test_false_and_zero_optionals_are_sent_not_dropped() -> None:
    # control_log_additive unset means true on the server: an explicit False must arrive.
    request = _embed_request(
        normalize=False, tokens=False, control_log_additive=False, contextual_control_threshold=0.0
    )
    for name in ("normalize", "tokens", "control_log_additive", "contextual_control_threshold"):
        assert request.HasField(name), name
    assert request.control_log_additive is False
    assert request.contextual_control_threshold == 0.0


def test_a_bare_pooling_string_is_one_pooling() -> None:
    assert list(_embed_request(pooling="weighted_mean").pooling) == ["weighted_mean"]


def test_a_plain_string_is_one_text_item() -> None:
    prompt = _calls.prompt_message("hello")
    assert len(prompt.items) == 1 and prompt.items[0].text.data == "hello"
    assert len(prompt.items[0].text.controls) == 0


def test_a_single_item_is_a_one_item_prompt() -> None:
    prompt = _calls.prompt_message(TokenIds([4, 5]))
    assert [item.WhichOneof("item") for item in prompt.items] == ["token_ids"]
    assert list(prompt.items[0].token_ids.data) == [4, 5]


def test_mixed_items_keep_their_order_and_every_control_field() -> None:
    prompt = _calls.prompt_message(
        [
            Text("abc", [TextControl(1, 2, 0.5, "complete"), TextControl(0, 1, 3.0)]),
            TokenIds([1, 2], [TokenControl(1, 2.0)]),
            Image(
                b"png",
                ImageCrop(1, 2, 3),
                [ImageControl(Rect(0.1, 0.2, 0.3, 0.4), 0.0, "partial")],
            ),
            Text("tail"),
        ]
    )
    kinds = [item.WhichOneof("item") for item in prompt.items]
    assert kinds == ["text", "token_ids", "image", "text"]

    first, second = prompt.items[0].text.controls
    assert (first.start, first.length, first.factor, first.token_overlap) == (1, 2, 0.5, "complete")
    assert (second.start, second.length, second.factor) == (0, 1, 3.0)
    assert not second.HasField("token_overlap")

    ids = prompt.items[1].token_ids
    assert list(ids.data) == [1, 2]
    assert (ids.controls[0].index, ids.controls[0].factor) == (1, 2.0)

    image = prompt.items[2].image
    assert image.data == b"png"
    assert (image.crop.x, image.crop.y, image.crop.size) == (1, 2, 3)
    rect = image.controls[0].rect
    assert (rect.left, rect.top, rect.width, rect.height) == (0.1, 0.2, 0.3, 0.4)
    assert image.controls[0].factor == 0.0
    assert image.controls[0].token_overlap == "partial"
    assert prompt.items[3].text.data == "tail"


def test_an_image_without_crop_or_overlap_sends_neither() -> None:
    image = _calls.prompt_message([Image(b"x", controls=[ImageControl(Rect(0, 0, 1, 1), 2.0)])])
    assert not image.items[0].image.HasField("crop")
    assert not image.items[0].image.controls[0].HasField("token_overlap")


def test_a_foreign_prompt_item_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="not dict"):
        _calls.prompt_message([{"text": "hi"}])  # type: ignore[list-item]


def test_tokenize_and_detokenize_requests() -> None:
    call = _calls.tokenize("m", "Hello", tokens=False, token_ids=True)
    assert call.method == "Tokenize"
    assert call.request == pb.TokenizeRequest(model="m", prompt="Hello", token_ids=True)
    detokenize = _calls.detokenize("m", (7, 8))
    assert detokenize.method == "Detokenize"
    assert detokenize.request == pb.DetokenizeRequest(model="m", token_ids=[7, 8])
    assert _calls.models().method == "ModelsAvailable"


def _reply(with_tokens: bool) -> pb.EmbedResponse:
    reply = pb.EmbedResponse(model_version="m@2", num_tokens_prompt_total=3)
    reply.embeddings["layer_6"].pooling["mean"].values.extend([1.0, 2.0])
    reply.embeddings["layer_6"].pooling["max"].values.extend([4.0, 5.0])
    reply.embeddings["layer_0"].pooling["max"].values.extend([3.0])
    reply.timing.queue_seconds = 0.125
    reply.timing.tokenization_seconds = 0.25
    reply.timing.inference_seconds = 0.5
    reply.timing.parked_seconds = 0.0625
    if with_tokens:
        reply.tokens.tokens.extend(["[CLS]", "hi", "[SEP]"])
    return reply


def test_reply_layers_become_ascending_integer_keys_and_vectors_numpy() -> None:
    result = _calls.embed_result(_reply(with_tokens=False))
    assert list(result.embeddings) == [0, 6]
    assert sorted(result.embeddings[6]) == ["max", "mean"]
    vector = result.vector(6, "mean")
    assert isinstance(vector, np.ndarray) and vector.dtype == np.float32
    assert vector.tolist() == [1.0, 2.0]
    assert result.vector(6, "max").tolist() == [4.0, 5.0]
    assert result.tokens is None
    assert (result.model_version, result.num_tokens_prompt_total) == ("m@2", 3)
    assert result.timing == results.Timing(0.125, 0.25, 0.5, parked_seconds=0.0625)


def test_vector_names_what_is_there_when_missing() -> None:
    result = _calls.embed_result(_reply(with_tokens=False))
    with pytest.raises(KeyError, match=r"no layer 3 .*\{0: \['max'\], 6: \['max', 'mean'\]\}"):
        result.vector(3, "mean")
    with pytest.raises(KeyError, match="pooling 'last_token'"):
        result.vector(6, "last_token")


def test_tokens_present_only_when_sent() -> None:
    assert _calls.embed_result(_reply(with_tokens=True)).tokens == ["[CLS]", "hi", "[SEP]"]
    # An empty token list that was sent is still "sent": [] and None differ.
    reply = _reply(with_tokens=False)
    reply.tokens.SetInParent()
    assert _calls.embed_result(reply).tokens == []


def test_vectors_are_float_lists_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "_numpy", None)
    result = _calls.embed_result(_reply(with_tokens=False))
    assert result.vector(6, "mean") == [1.0, 2.0]
    assert all(type(x) is float for v in result.embeddings[6].values() for x in v)


@pytest.mark.parametrize("key", ["6", "layer_", "layer_x", "pooled_6"])
def test_a_reply_key_not_shaped_layer_n_is_an_error(key: str) -> None:
    reply = pb.EmbedResponse()
    reply.embeddings[key].pooling["mean"].values.append(1.0)
    with pytest.raises(ValueError, match="unexpected embeddings key"):
        _calls.embed_result(reply)


def test_model_info_carries_every_field() -> None:
    info = pb.ModelInfo(
        name="m",
        description="d",
        max_context_size=512,
        hostings=["aleph-alpha"],
        image_support=True,
        embedding_types=["embed", "semantic_embed"],
        version="2",
        num_layers=6,
        hidden_size=384,
        architecture="bert",
    )
    (parsed,) = _calls.model_infos(pb.ModelsAvailableResponse(models=[info]))
    assert parsed == results.ModelInfo(
        name="m",
        description="d",
        max_context_size=512,
        hostings=["aleph-alpha"],
        image_support=True,
        embedding_types=["embed", "semantic_embed"],
        version="2",
        num_layers=6,
        hidden_size=384,
        architecture="bert",
    )
    # The dataclass must not silently miss a field the proto grows.
    assert {f.name for f in pb.ModelInfo.DESCRIPTOR.fields} == set(vars(parsed))


def test_tokenize_reply_keeps_presence() -> None:
    only_ids = pb.TokenizeResponse()
    only_ids.token_ids.ids.extend([5, 6])
    parsed = _calls.tokenize_result(only_ids)
    assert parsed.tokens is None and parsed.token_ids == [5, 6]
    only_tokens = pb.TokenizeResponse()
    only_tokens.tokens.tokens.extend(["he", "##llo"])
    assert _calls.tokenize_result(only_tokens) == results.TokenizeResult(["he", "##llo"], None)


def test_detokenize_reply_is_the_text() -> None:
    assert _calls.detokenize("m", [1]).parse(pb.DetokenizeResponse(result="hi")) == "hi"


def test_model_info_carries_the_state_of_each_version() -> None:
    info = pb.ModelInfo(
        name="m",
        versions=[
            pb.ModelVersionState(model="m", version=1, state="retired"),
            pb.ModelVersionState(model="m", version=2, state="serving"),
            pb.ModelVersionState(model="m", version=3, state="failed", reason="ValueError: x"),
        ],
    )
    (parsed,) = _calls.model_infos(pb.ModelsAvailableResponse(models=[info]))
    assert parsed.versions == [
        results.ModelVersionState("m", 1, "retired", None),  # no reason: None, not ""
        results.ModelVersionState("m", 2, "serving", None),
        results.ModelVersionState("m", 3, "failed", "ValueError: x"),
    ]
    assert {f.name for f in pb.ModelVersionState.DESCRIPTOR.fields} == set(vars(parsed.versions[0]))
