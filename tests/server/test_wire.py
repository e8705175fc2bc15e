"""api/wire.py as a unit: protobuf messages to domain requests and domain results back, and the
same request over either edge read into the same domain request (gateway/json_api.py)."""

from __future__ import annotations

import base64
import copy

import numpy as np
import pytest

from lamina.server import domain
from lamina.server.api import wire
from lamina.server.api.status import protobuf_field
from lamina.server.errors import InvalidArgument
from lamina.server.gateway import json_api
from lamina.server.gateway.errors import json_field
from lamina.v1 import embed_pb2 as pb

PICTURE = b"\x89PNG not really"
MESSAGE = pb.EmbedRequest(
    model="m",
    prompt=pb.Prompt(
        items=[
            pb.PromptItem(
                text=pb.TextItem(
                    data="Hi there",
                    controls=[
                        pb.TextControl(start=3, length=5, factor=0.5, token_overlap="complete")
                    ],
                )
            ),
            pb.PromptItem(
                image=pb.ImageItem(
                    data=PICTURE,
                    crop=pb.ImageCrop(x=1, y=2, size=30),
                    controls=[pb.ImageControl(rect=pb.Rect(width=0.5, height=1), factor=2.0)],
                )
            ),
            pb.PromptItem(
                token_ids=pb.TokenIdsItem(
                    data=[7, 8], controls=[pb.TokenControl(index=1, factor=0.0)]
                )
            ),
        ]
    ),
    layers=[0, -1],
    pooling=["mean", "abs_max"],
    normalize=True,
    hosting="aleph-alpha",
    nice=True,
    contextual_control_threshold=0.7,
    control_log_additive=False,
)
BODY = {
    "model": "m",
    "prompt": [
        {
            "type": "text",
            "data": "Hi there",
            "controls": [{"start": 3, "length": 5, "factor": 0.5, "token_overlap": "complete"}],
        },
        {
            "type": "image",
            "data": base64.b64encode(PICTURE).decode(),
            "x": 1,
            "y": 2,
            "size": 30,
            "controls": [{"rect": {"left": 0, "top": 0, "width": 0.5, "height": 1}, "factor": 2}],
        },
        {"type": "token_ids", "data": [7, 8], "controls": [{"index": 1, "factor": 0}]},
    ],
    "layers": [0, -1],
    "pooling": ["mean", "abs_max"],
    "normalize": True,
    "hosting": "aleph-alpha",
    "contextual_control_threshold": 0.7,
    "control_log_additive": False,
}


def test_both_edges_read_one_request_into_one_domain_request() -> None:
    from_grpc = wire.embed_request(MESSAGE)
    assert from_grpc == json_api.embed_request(BODY, nice=True)
    text, image, tokens = from_grpc.prompt
    assert image == domain.ImageItem(
        PICTURE,
        domain.ImageCrop(1, 2, 30),
        (domain.ImageControl(domain.Rect(0, 0, 0.5, 1), 2.0),),
    )
    assert text == domain.TextItem(
        "Hi there", (domain.TextControl(3, 5, 0.5, domain.TokenOverlap.COMPLETE),)
    )
    assert tokens == domain.TokenIdsItem((7, 8), (domain.TokenControl(1, 0.0),))
    assert from_grpc.pooling == (domain.Pooling.MEAN, domain.Pooling.ABS_MAX)
    assert not from_grpc.control_log_additive and from_grpc.nice


@pytest.mark.parametrize(
    ("change", "body_change", "grpc_field", "http_field"),
    [
        (
            lambda m: m.prompt.items[0].text.controls[0].__setattr__("factor", -1.0),
            lambda b: b["prompt"][0]["controls"][0].__setitem__("factor", -1),
            "prompt.items[0].text.controls[0].factor",
            "prompt[0].controls[0].factor",
        ),
        (
            lambda m: m.prompt.items[1].image.crop.ClearField("size"),
            lambda b: b["prompt"][1].pop("size"),
            "prompt.items[1].image.crop",
            "prompt[1]",
        ),
        (
            lambda m: m.pooling.append("median"),
            lambda b: b["pooling"].append("median"),
            "pooling[2]",
            "pooling[2]",
        ),
        (
            lambda m: m.__setattr__("hosting", "elsewhere"),
            lambda b: b.__setitem__("hosting", "elsewhere"),
            "hosting",
            "hosting",
        ),
    ],
)
def test_a_bad_value_gets_one_answer_named_in_each_edges_terms(
    change: object, body_change: object, grpc_field: str, http_field: str
) -> None:
    message = pb.EmbedRequest()
    message.CopyFrom(MESSAGE)
    change(message)  # type: ignore[operator]
    body = copy.deepcopy(BODY)
    body_change(body)  # type: ignore[operator]
    with pytest.raises(InvalidArgument) as over_grpc:
        wire.embed_request(message)
    with pytest.raises(InvalidArgument) as over_http:
        json_api.embed_request(body, nice=True)
    assert over_grpc.value.field == over_http.value.field
    assert over_grpc.value.problem == over_http.value.problem
    assert protobuf_field(over_grpc.value.field) == grpc_field
    assert json_field(over_http.value.field) == http_field


def test_results_are_written_as_float32_in_both_formats() -> None:
    vector = np.array([0.1, 1 / 3], dtype=np.float64)
    result = domain.EmbedResult(
        "m@1", {6: {domain.Pooling.MEAN: vector}}, ("a",), 3, domain.Timing(0.1, 0.2, 0.3)
    )
    reply = wire.embed_response(result)
    written = json_api.embed_response(result)
    assert (
        list(reply.embeddings["layer_6"].pooling["mean"].values)
        == (
            written["embeddings"]["layer_6"]["mean"]  # type: ignore[index]
        )
    )
    assert list(reply.tokens.tokens) == written["tokens"] == ["a"]
    assert reply.num_tokens_prompt_total == written["num_tokens_prompt_total"] == 3
