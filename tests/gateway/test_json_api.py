"""The Aleph Alpha JSON shapes to the domain requests (the same a gRPC caller's message becomes),
and error paths as the HTTP caller wrote them."""

from __future__ import annotations

import base64

import pytest

from lamina.server import domain
from lamina.server.errors import InvalidArgument
from lamina.server.gateway import json_api
from lamina.server.gateway.errors import json_field


def test_a_plain_string_prompt_is_one_text_item_and_null_means_unset() -> None:
    body = {
        "model": "m",
        "prompt": "Hello",
        "layers": [-1],
        "pooling": ["mean"],
        "type": None,
        "tokens": False,
        "normalize": None,
        "contextual_control_threshold": None,
        "control_log_additive": None,
        "hosting": None,
        "tags": ["ignored"],
    }
    request = json_api.embed_request(body, nice=True)
    assert request == domain.EmbedRequest(
        model="m",
        prompt=(domain.TextItem(data="Hello"),),
        layers=(-1,),
        pooling=(domain.Pooling.MEAN,),
        normalize=False,
        tokens=False,
        hosting=None,
        nice=True,
        contextual_control_threshold=None,
        control_log_additive=True,  # unset means true
    )


def test_the_official_clients_item_shapes() -> None:
    picture = b"\x89PNG fake"
    body = {
        "model": "m",
        "prompt": [
            {
                "type": "text",
                "data": "Hi there",
                "controls": [{"start": 3, "length": 5, "factor": 0.5, "token_overlap": "complete"}],
            },
            {
                "type": "image",
                "data": base64.b64encode(picture).decode(),
                "x": 1,
                "y": 2,
                "size": 30,
                "controls": [
                    {"rect": {"left": 0, "top": 0, "width": 0.5, "height": 1}, "factor": 0.0}
                ],
            },
            {"type": "token_ids", "data": [7, 8], "controls": [{"index": 1, "factor": 2}]},
        ],
        "representation": "query",
        "compress_to_size": None,
        "normalize": False,
        "control_log_additive": False,
    }
    request = json_api.semantic_embed_request(body, nice=False)
    ((text, image, tokens),) = request.prompts
    assert text == domain.TextItem(
        data="Hi there",
        controls=(domain.TextControl(3, 5, 0.5, domain.TokenOverlap.COMPLETE),),
    )
    assert image == domain.ImageItem(
        data=picture,
        crop=domain.ImageCrop(x=1, y=2, size=30),
        controls=(domain.ImageControl(domain.Rect(0, 0, 0.5, 1), factor=0.0),),
    )
    assert tokens == domain.TokenIdsItem(data=(7, 8), controls=(domain.TokenControl(1, 2),))
    assert request.representation is domain.Representation.QUERY
    assert request.compress_to_size is None and not request.batch
    assert request.normalize is False and request.control_log_additive is False


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({"layers": [1.5]}, "layers[0]", "expected an integer"),
        ({"layers": [2**40]}, "layers[0]", "outside"),
        ({"layers": 3}, "layers", "expected a list"),
        ({"pooling": [True]}, "pooling[0]", "expected a string"),
        ({"prompt": 5}, "prompt", "expected a list"),
        ({"prompt": [{"type": "text", "data": "x", "extra": 1}]}, "prompt[0].extra", "unknown"),
        (
            {"prompt": [{"type": "text", "controls": [{"start": 0}]}]},
            "prompt[0].controls[0].factor",
            "required",
        ),
        (
            {"prompt": [{"type": "token_ids", "controls": [{"index": -1, "factor": 1}]}]},
            "prompt[0].controls[0].index",
            "outside",
        ),
        (
            {"prompt": [{"type": "image", "controls": [{"factor": 1}]}]},
            "prompt[0].controls[0].rect",
            "required",
        ),
        ({"prompt": [{"data": "x"}]}, "prompt[0].type", "unknown item type None"),
        ({"tokens": 1}, "tokens", "expected true or false"),
    ],
)
def test_wrong_json_types_name_the_field(body: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        json_api.embed_request({"model": "m", **body}, nice=False)
    assert json_field(error.value.field) == field
    assert problem in error.value.problem


def test_batch_prompts_and_json_integers_written_as_floats() -> None:
    request = json_api.batch_semantic_embed_request(
        {
            "model": "m",
            "prompts": ["a", [{"type": "token_ids", "data": [3.0]}]],
            "representation": "query",
        },
        nice=False,
    )
    assert request.batch and [len(p) for p in request.prompts] == [1, 1]
    assert request.prompts[1] == (domain.TokenIdsItem(data=(3,)),)
    with pytest.raises(InvalidArgument) as error:  # null is an empty prompt
        json_api.batch_semantic_embed_request({"model": "m", "prompts": ["a", None]}, nice=False)
    assert json_field(error.value.field) == "prompts[1]" and "empty" in error.value.problem
