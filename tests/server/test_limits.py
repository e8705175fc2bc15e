"""Request limits name the field and the limit, and never cut a request to fit."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from lamina.server.api.status import protobuf_field
from lamina.server.domain import (
    EmbedRequest,
    ImageItem,
    Pooling,
    PromptItem,
    TextControl,
    TextItem,
)
from lamina.server.errors import InvalidArgument
from lamina.server.limits import RequestLimits

LIMITS = RequestLimits(
    max_prompt_items=3,
    max_layers=2,
    max_poolings=2,
    max_image_bytes=4000,
    max_image_pixels=10_000,
    max_request_pixels=15_000,
    max_controls=2,
)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


CONTROL = TextControl(0, 1, 0.5)


def request(
    prompt: tuple[PromptItem, ...] = (TextItem("a"),),
    layers: tuple[int, ...] = (-1,),
    pooling: tuple[Pooling, ...] = (Pooling.MEAN,),
) -> EmbedRequest:
    return EmbedRequest(model="m", prompt=prompt, layers=layers, pooling=pooling)


def test_requests_at_the_limits_pass() -> None:
    at_limits = request(
        prompt=(TextItem("a", (CONTROL,)), TextItem("b", (CONTROL,)), ImageItem(png(100, 100))),
        layers=(0, -1),
        pooling=(Pooling.MEAN, Pooling.MAX),
    )
    LIMITS.check(at_limits)
    assert LIMITS.check_pixels(at_limits) == 10_000


@pytest.mark.parametrize(
    ("bad", "field", "says"),
    [
        (
            request(prompt=(TextItem("a"),) * 4),
            "prompt.items",
            "4 prompt items, more than the limit of 3",
        ),
        (request(layers=(0, 1, 2)), "layers", "3 layers, more than the limit of 2"),
        (request(pooling=(Pooling.MEAN,) * 3), "pooling", "3 poolings, more than the limit of 2"),
        (
            request(prompt=(TextItem("a"), ImageItem(png(101, 100)))),
            "prompt.items[1].image.data",
            "101 x 100 pixels, more than the limit of 10000",
        ),
        (
            request(prompt=(ImageItem(b"\0" * 4001),)),
            "prompt.items[0].image.data",
            "4001 bytes, more than the limit of 4000",
        ),
        (
            request(prompt=(ImageItem(png(100, 100)), ImageItem(png(80, 70)))),
            "prompt",
            "the images up to item 1 have 15600 pixels together, more than the limit of 15000",
        ),
        (
            request(prompt=(TextItem("a", (CONTROL, CONTROL)), TextItem("b", (CONTROL,)))),
            "prompt",
            "3 attention controls, more than the limit of 2",
        ),
    ],
)
def test_each_limit_names_its_field(bad: EmbedRequest, field: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        LIMITS.check(bad)
        LIMITS.check_pixels(bad)
    assert protobuf_field(error.value.field) == field and says in error.value.message


def test_tokenize_and_detokenize_limits() -> None:
    limits = RequestLimits(max_tokenize_chars=5, max_detokenize_ids=3)
    limits.check_tokenize("12345")
    limits.check_detokenize([1, 2, 3])
    with pytest.raises(InvalidArgument, match=r"^prompt: 6 characters, more than the limit of 5$"):
        limits.check_tokenize("123456")
    with pytest.raises(
        InvalidArgument, match=r"^token_ids: 4 token ids, more than the limit of 3$"
    ):
        limits.check_detokenize([1, 2, 3, 4])
