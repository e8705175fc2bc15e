"""The client's request building and reply parsing, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from lamina.client import _convert, results
from lamina.client.prompt import (
    Image,
    ImageControl,
    ImageCrop,
    Rect,
    Text,
    TextControl,
    TokenControl,
    TokenIds,
)
from lamina.v1 import embed_pb2 as pb


def _request(**overrides: object) -> pb.EmbedRequest:
    arguments: dict[str, object] = {
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
    return _convert.embed_request("m", "hello", **arguments)  # type: ignore[arg-type]


def test_unset_optionals_stay_unset_so_the_server_applies_api_defaults() -> None:
    request = _request()
    for name in (
        "normalize",
        "tokens",
        "hosting",
        "contextual_control_threshold",
        "control_log_additive",
        "type",
    ):
        assert not request.HasField(name), name


def test_set_optionals_are_present_even_when_false() -> None:
    request = _request(
        control_log_additive=False,
        normalize=False,
        tokens=True,
        hosting="aleph-alpha",
        contextual_control_threshold=0.5,
        type="symmetric",
        nice=True,
    )
    assert request.HasField("control_log_additive") and request.control_log_additive is False
    assert request.HasField("normalize") and request.tokens and request.nice
    assert (request.hosting, request.contextual_control_threshold, request.type) == (
        "aleph-alpha",
        0.5,
        "symmetric",
    )


def test_a_plain_string_is_one_text_item() -> None:
    prompt = _convert.prompt_message("hello")
    assert len(prompt.items) == 1 and prompt.items[0].text.data == "hello"


def test_mixed_items_keep_their_order_and_controls() -> None:
    prompt = _convert.prompt_message(
        [
            Text("a", [TextControl(0, 1, 0.5, "complete")]),
            TokenIds([1, 2], [TokenControl(1, 2.0)]),
            Image(b"png", ImageCrop(1, 2, 3), [ImageControl(Rect(0.1, 0.2, 0.3, 0.4), 0.0)]),
        ]
    )
    kinds = [item.WhichOneof("item") for item in prompt.items]
    assert kinds == ["text", "token_ids", "image"]
    assert prompt.items[0].text.controls[0].token_overlap == "complete"
    assert list(prompt.items[1].token_ids.data) == [1, 2]
    assert prompt.items[1].token_ids.controls[0].factor == 2.0
    image = prompt.items[2].image
    assert (image.crop.x, image.crop.y, image.crop.size) == (1, 2, 3)
    assert image.controls[0].rect.height == pytest.approx(0.4)
    assert not image.controls[0].HasField("token_overlap")


def test_an_image_without_crop_sends_no_crop() -> None:
    assert not _convert.prompt_message([Image(b"x")]).items[0].image.HasField("crop")


def _reply(with_tokens: bool) -> pb.EmbedResponse:
    reply = pb.EmbedResponse(model_version="m@2", num_tokens_prompt_total=3)
    reply.embeddings["layer_6"].pooling["mean"].values.extend([1.0, 2.0])
    reply.embeddings["layer_0"].pooling["max"].values.extend([3.0])
    reply.timing.inference_seconds = 0.5
    if with_tokens:
        reply.tokens.tokens.extend(["[CLS]", "hi", "[SEP]"])
    return reply


def test_reply_layers_become_integer_keys_and_vectors_numpy() -> None:
    result = _convert.embed_result(_reply(with_tokens=False))
    assert list(result.embeddings) == [0, 6]
    vector = result.vector(6, "mean")
    assert isinstance(vector, np.ndarray) and vector.dtype == np.float32
    assert vector.tolist() == [1.0, 2.0]
    assert result.tokens is None
    assert (result.model_version, result.num_tokens_prompt_total) == ("m@2", 3)
    assert result.timing.inference_seconds == 0.5
    with pytest.raises(KeyError, match="no layer 3"):
        result.vector(3, "mean")


def test_tokens_present_only_when_sent() -> None:
    assert _convert.embed_result(_reply(with_tokens=True)).tokens == ["[CLS]", "hi", "[SEP]"]


def test_vectors_are_lists_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "_numpy", None)
    vector = _convert.embed_result(_reply(with_tokens=False)).vector(6, "mean")
    assert vector == [1.0, 2.0] and isinstance(vector, list)


def test_tokenize_reply_keeps_presence() -> None:
    only_ids = pb.TokenizeResponse()
    only_ids.token_ids.ids.extend([5, 6])
    parsed = _convert.tokenize_result(only_ids)
    assert parsed.tokens is None and parsed.token_ids == [5, 6]
