"""The minimal reproduction of every failure class the fuzz found, checked with the fuzz's own
properties (tests/fuzz/harness.py): each fails while its defect is there.

Classes known when the suite was written (issue 13) come first, then the ones the fuzz found.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.message import Message

from lamina.v1 import embed_pb2 as pb
from tests.conftest import DINOV2, MINILM
from tests.fuzz.harness import Fuzz, describe_proto, shorten
from tests.fuzz.images import large_images, valid_images
from tests.fuzz.strategies import METHODS


def text(data: str, *controls: pb.TextControl) -> pb.Prompt:
    return pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data=data, controls=list(controls)))])


def embed(prompt: pb.Prompt, model: str = MINILM, **fields: Any) -> pb.EmbedRequest:
    fields.setdefault("layers", [-1])
    fields.setdefault("pooling", ["mean"])
    return pb.EmbedRequest(model=model, prompt=prompt, **fields)


def over(factor: float) -> pb.TextControl:
    """A control on "Hello" of "Hello world"."""
    return pb.TextControl(start=0, length=5, factor=factor)


def grpc_case(fuzz: Fuzz, name: str, method: str, request: Message | bytes) -> None:
    with fuzz.example(name, lambda: describe_proto(request)) as ex:
        fuzz.check_grpc(ex, method, fuzz.grpc(method, request, None), None, None)
        fuzz.canary(ex, "grpc")


def grpc_embed_case(fuzz: Fuzz, name: str, request: pb.EmbedRequest) -> None:
    with fuzz.example(name, lambda: describe_proto(request)) as ex:
        fuzz.check_grpc(ex, "Embed", fuzz.grpc("Embed", request, None), request, None)
        fuzz.canary(ex, "grpc")


def http_case(fuzz: Fuzz, name: str, route: str, body: bytes) -> None:
    with fuzz.example(name, lambda: f"POST {route} {shorten(body, 300)}") as ex:
        fuzz.check_http(ex, METHODS[route], fuzz.http("POST", route, body), None, None)
        fuzz.canary(ex, "http")


# -- known when the suite was written --------------------------------------------------------

KNOWN_GRPC_EMBED = {
    # Control factors past float32 give NaN vectors (OK with NaN, or INTERNAL).
    "factor-3.5e38-log-additive": embed(text("Hello world", over(3.5e38))),
    "factor-1e38-not-log-additive": embed(
        text("Hello world", over(1e38)), control_log_additive=False
    ),
    "overlapping-factors-product": embed(text("Hello world", over(1e20), over(1e20))),
    # A prompt of token ids only must be used as given: 2 positions, not [CLS] .. [SEP].
    "token-ids-only-wrapped": embed(
        pb.Prompt(items=[pb.PromptItem(token_ids=pb.TokenIdsItem(data=[7592, 2088]))]),
        tokens=True,
    ),
    # Error messages echo what the caller sent, whole.
    "message-echoes-pooling": embed(text("Hello world"), pooling=["x" * 3000]),
    # 6 MB of text tokenized (seconds) before the request is refused for its length.
    "huge-text-tokenized-first": embed(text("hello " * 1_000_000)),
}


@pytest.mark.parametrize("name", sorted(KNOWN_GRPC_EMBED))
def test_known_grpc_embed(fuzz: Fuzz, name: str) -> None:
    grpc_embed_case(fuzz, name, KNOWN_GRPC_EMBED[name])


def test_known_images_decoded_before_the_context_check(fuzz: Fuzz) -> None:
    """40 images of 49 megapixels each: dinov2-small holds 16 images (2304 positions), so the
    answer is INVALID_ARGUMENT, and must not cost 40 decodes first."""
    big = pb.PromptItem(image=pb.ImageItem(data=large_images()["png-7000x7000"]))
    grpc_embed_case(fuzz, "images-decoded-first", embed(pb.Prompt(items=[big] * 40), DINOV2))


KNOWN_WIRE = {
    "undecodable-message": b"\xff\xff\xff",
    "model-bad-utf8": b"\x0a\x01\xff",
}


@pytest.mark.parametrize("name", sorted(KNOWN_WIRE))
def test_known_undecodable_grpc_message(fuzz: Fuzz, name: str) -> None:
    """Answered UNKNOWN ("Unexpected <class 'DecodeError'>"), not INVALID_ARGUMENT."""
    grpc_case(fuzz, name, "Embed", KNOWN_WIRE[name])


def test_known_huge_model_name_breaks_the_grpc_status(fuzz: Fuzz) -> None:
    """The NOT_FOUND message echoes a 700 kB model name into the grpc-message trailer, past the
    client's metadata limit: the caller reads RESOURCE_EXHAUSTED "received metadata size
    exceeds hard limit" instead of NOT_FOUND (over HTTP: a 700 kB error message)."""
    request = pb.DetokenizeRequest(model="hello " * 120_000, token_ids=[1])
    grpc_case(fuzz, "message-echoes-model", "Detokenize", request)


KNOWN_HTTP = {
    "deep-nesting": ("embed", b"[" * 100_000),
    "lone-surrogate-model": (
        "embed",
        b'{"model": "\\ud800", "prompt": "Hello", "layers": [-1], "pooling": ["mean"]}',
    ),
    "lone-surrogate-prompt": (
        "embed",
        json.dumps(
            {"model": MINILM, "prompt": "\ud800", "layers": [-1], "pooling": ["mean"]}
        ).encode(),
    ),
    # The unknown key is echoed into the error, whose JSON body then cannot be encoded: a
    # plain-text 500 "Internal Server Error", and the kept-alive connection reset under the
    # caller's next request.
    "lone-surrogate-unknown-key": ("embed", b'{"\\ud800": 1}'),
    "message-echoes-unknown-field": ("embed", json.dumps({"x" * 3000: 1}).encode()),
}


@pytest.mark.parametrize("name", sorted(KNOWN_HTTP))
def test_known_http(fuzz: Fuzz, name: str) -> None:
    route, body = KNOWN_HTTP[name]
    http_case(fuzz, name, route, body)


# -- found by the fuzz -------------------------------------------------------------------------


def png_with_a_misaligned_chunk() -> bytes:
    """The 16 x 12 PNG of tests/fuzz/images.py with one byte inserted into its IDAT data: the
    chunk after it is read one byte off, and Pillow's load() raises SyntaxError ("broken PNG
    file (chunk b'\\x00IEN')"), which the image decoder does not catch."""
    png = valid_images()["png-rgb-16x12"]
    return png[:72] + b"\x00" + png[72:]


def test_found_corrupt_png_is_internal(fuzz: Fuzz) -> None:
    image = pb.PromptItem(image=pb.ImageItem(data=png_with_a_misaligned_chunk()))
    grpc_embed_case(fuzz, "png-syntax-error", embed(pb.Prompt(items=[image]), DINOV2))


def test_found_integer_of_5000_digits_is_http_500(fuzz: Fuzz) -> None:
    """json.loads raises ValueError (not JSONDecodeError) for an integer past Python's 4300
    digits, which the gateway did not catch."""
    http_case(fuzz, "int-5000-digits", "embed", b"1" * 5000)
