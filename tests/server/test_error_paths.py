"""Field paths as units: the roles `errors.path_parts` gives each segment, and the three ways a
path is written (the domain's own in logs, gRPC's protobuf fields, the JSON the HTTP caller
sent), and moving an error under another prompt."""

from __future__ import annotations

import pytest

from lamina.server.api.status import protobuf_field
from lamina.server.errors import FieldPath, InvalidArgument, dotted, path_parts
from lamina.server.gateway.errors import json_field


@pytest.mark.parametrize(
    ("path", "roles"),
    [
        (("model",), ["name"]),
        (("layers", 2), ["name", "index"]),
        (("prompt", 0, "text", "data"), ["name", "item", "kind", "name"]),
        (("prompts", 2, 0, "image", "crop"), ["name", "index", "item", "kind", "name"]),
        (("prompt", "items"), ["name", "items"]),
        (("prompt", 1, "token_ids", "data", 4), ["name", "item", "kind", "name", "index"]),
        # A list of lists outside a prompt: both indices plain.
        (("token_ids", 0, 1), ["name", "index", "index"]),
        # "items" and an item kind mean something only where a prompt has them.
        (("hosting", "items"), ["name", "name"]),
        (("layers", 0, "text"), ["name", "index", "name"]),
        (("model", "text"), ["name", "name"]),
        (("prompt", "items", "text"), ["name", "items", "name"]),
        ((0, "text"), ["index", "name"]),
        (
            ("prompt", 0, "text", "controls", 1, "text"),
            ["name", "item", "kind", "name", "index", "name"],
        ),
    ],
)
def test_each_segment_has_its_role(path: FieldPath, roles: list[str]) -> None:
    assert [role for role, _ in path_parts(path)] == roles
    assert [segment for _, segment in path_parts(path)] == list(path)


@pytest.mark.parametrize(
    ("path", "domain", "grpc", "http"),
    [
        (("model",), "model", "model", "model"),
        (("layers", 2), "layers[2]", "layers[2]", "layers[2]"),
        (
            ("prompt", 0, "text", "controls", 1, "factor"),
            "prompt[0].text.controls[1].factor",
            "prompt.items[0].text.controls[1].factor",
            "prompt[0].controls[1].factor",
        ),
        (
            ("prompts", 2, 0, "image", "crop", "size"),
            "prompts[2][0].image.crop.size",
            "prompts[2].items[0].image.crop.size",
            "prompts[2][0].size",
        ),
        (
            ("prompt", 2, "image", "crop"),
            "prompt[2].image.crop",
            "prompt.items[2].image.crop",
            "prompt[2]",
        ),
        (
            ("prompts", 2, 0, "image"),
            "prompts[2][0].image",
            "prompts[2].items[0].image",
            "prompts[2][0]",
        ),
        (
            ("prompt", 3, "token_ids", "data", 4),
            "prompt[3].token_ids.data[4]",
            "prompt.items[3].token_ids.data[4]",
            "prompt[3].data[4]",
        ),
        (("prompt", "items"), "prompt.items", "prompt.items", "prompt"),
        (("token_ids", 0, 1), "token_ids[0][1]", "token_ids[0][1]", "token_ids[0][1]"),
        (("hosting", "items"), "hosting.items", "hosting.items", "hosting.items"),
        ((3,), "[3]", "[3]", "[3]"),
        # Only an image item's crop is inline in JSON; its other fields and other crops stay.
        (
            ("prompt", 1, "image", "data"),
            "prompt[1].image.data",
            "prompt.items[1].image.data",
            "prompt[1].data",
        ),
        (("crop",), "crop", "crop", "crop"),
        (("image", "crop"), "image.crop", "image.crop", "image.crop"),
        (
            ("prompt", 0, "text", "crop"),
            "prompt[0].text.crop",
            "prompt.items[0].text.crop",
            "prompt[0].crop",
        ),
    ],
)
def test_a_path_as_each_reader_writes_it(
    path: FieldPath, domain: str, grpc: str, http: str
) -> None:
    assert (dotted(path), protobuf_field(path), json_field(path)) == (domain, grpc, http)
    error = InvalidArgument(path, "wrong")
    assert error.message == f"{domain}: wrong" and str(error) == error.message


def test_an_error_moves_under_another_prompt_only_from_its_root() -> None:
    error = InvalidArgument(("prompt", 0, "text", "data"), "too long")
    moved = error.moved(("prompt",), ("prompts", 3))
    assert (moved.field, moved.problem) == (("prompts", 3, 0, "text", "data"), "too long")
    assert moved.message == "prompts[3][0].text.data: too long"
    whole = InvalidArgument(("prompt",), "empty").moved(("prompt",), ("prompts", 1))
    assert whole.field == ("prompts", 1)
    elsewhere = InvalidArgument(("layers", 0), "past the model")
    assert elsewhere.moved(("prompt",), ("prompts", 3)) is elsewhere
    # A root is a whole segment: ("prompts", ...) is not under ("prompt",).
    batch = InvalidArgument(("prompts", 2), "empty")
    assert batch.moved(("prompt",), ("prompts", 9)) is batch
