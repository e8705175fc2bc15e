"""The field rules that need no model, shared by both edges: each edge reads its wire format into
plain values and asks these for the domain's, so a bad value gets the same answer over gRPC and
HTTP. Errors carry domain field paths (errors.FieldPath), which each edge renders its own way."""

from __future__ import annotations

import math

from lamina.server import domain
from lamina.server.errors import FieldPath, InvalidArgument, shown

HOSTINGS = ("aleph-alpha",)
MAX_BATCH_PROMPTS = 100  # BatchSemanticEmbed (docs/api.md)
SEMANTIC_COMPRESSED_SIZE = 128  # the one size compress_to_size may ask for
EMPTY_PROMPT = "the prompt is empty (no text, token ids or images)"


def model(name: str) -> str:
    if not name:
        raise InvalidArgument(("model",), "a model name is required")
    return name


def batch_size(count: int) -> None:
    if not 1 <= count <= MAX_BATCH_PROMPTS:
        raise InvalidArgument(
            ("prompts",), f"{count} prompts; a batch takes 1 to {MAX_BATCH_PROMPTS}"
        )


def hosting(value: str | None) -> str | None:
    if value is not None and value not in HOSTINGS:
        raise InvalidArgument(
            ("hosting",), f"unknown hosting {shown(value)}; expected unset or one of {HOSTINGS}"
        )
    return value


def threshold(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise InvalidArgument(("contextual_control_threshold",), "must be a finite number")
    return value


def compress_to_size(value: int | None) -> int | None:
    if value is not None and value != SEMANTIC_COMPRESSED_SIZE:
        raise InvalidArgument(
            ("compress_to_size",),
            f"{value} is not supported; expected {SEMANTIC_COMPRESSED_SIZE} or unset",
        )
    return value


def representation(name: str) -> domain.Representation:
    try:
        return domain.Representation(name)
    except ValueError:
        expected = ", ".join(r.value for r in domain.Representation)
        problem = "is required" if not name else f"unknown representation {shown(name)}"
        raise InvalidArgument(
            ("representation",), f"{problem}; expected one of {expected}"
        ) from None


def pooling(name: str, index: int) -> domain.Pooling:
    if name not in domain.EMBED_POOLINGS:  # first_token is a semantic embedding's own
        expected = ", ".join(p.value for p in domain.EMBED_POOLINGS)
        raise InvalidArgument(
            ("pooling", index), f"unknown pooling {shown(name)}; expected one of {expected}"
        )
    return domain.Pooling(name)


def factor(value: float, field: FieldPath) -> float:
    if not (0 <= value <= domain.MAX_CONTROL_FACTOR):  # NaN fails every comparison
        raise InvalidArgument(
            field,
            f"control factor must be finite, >= 0 and at most {domain.MAX_CONTROL_FACTOR:.0e}, "
            f"got {value:.6g}",
        )
    return value


def token_overlap(value: str | None, field: FieldPath) -> domain.TokenOverlap:
    if value is None:
        return domain.TokenOverlap.PARTIAL
    try:
        return domain.TokenOverlap(value)
    except ValueError:
        raise InvalidArgument(
            field, f"unknown token_overlap {shown(value)}; expected partial or complete"
        ) from None


def crop(x: int | None, y: int | None, size: int | None, field: FieldPath) -> domain.ImageCrop:
    given = {"x": x, "y": y, "size": size}
    missing = [name for name, value in given.items() if value is None]
    if x is None or y is None or size is None:
        raise InvalidArgument(
            field, f"give x, y and size together, or no crop at all (missing: {', '.join(missing)})"
        )
    return domain.ImageCrop(x, y, size)
