"""OpenAI's embeddings, as the engine runs them: each input is one prompt of a SemanticEmbed batch
with representation symmetric, so every input is its own row in the queue, on one model version,
with Embed's limits and scheduling (engine.semantic_embed); nothing here runs a model.

`dimensions` is Matryoshka truncation (SemanticEmbed's compress_to_size, which the engine checks
against the manifest's matryoshka_dimensions) followed by L2 normalisation, as OpenAI's own
`dimensions` answers unit vectors. Errors come back with the fields the caller wrote: `input`,
`input[i]`, `input[i][k]` (a token id) and `dimensions`.
"""

from __future__ import annotations

from lamina.server import domain
from lamina.server.errors import FieldPath, InvalidArgument, shown
from lamina.server.fields import MAX_BATCH_PROMPTS
from lamina.server.repository.manifest import Manifest

# The most inputs one request takes: BatchSemanticEmbed's bound, as each input is one of its rows.
MAX_INPUTS = MAX_BATCH_PROMPTS
ENCODING_FORMATS = ("float", "base64")


def input_count(count: int) -> None:
    """The list bound, checked before any input is read further."""
    if count == 0:
        raise InvalidArgument(("input",), f"an empty list; give 1 to {MAX_INPUTS} inputs")
    if count > MAX_INPUTS:
        raise InvalidArgument(
            ("input",), f"{count} inputs, more than the limit of {MAX_INPUTS} per request"
        )


def encoding_format(value: str | None) -> str:
    """`float` (unset) or `base64`: how the HTTP edge writes each vector."""
    if value is None:
        return "float"
    if value not in ENCODING_FORMATS:
        expected = " or ".join(ENCODING_FORMATS)
        raise InvalidArgument(
            ("encoding_format",), f"unknown format {shown(value)}; expected {expected}"
        )
    return value


def check_dimensions(manifest: Manifest, name: str, dimensions: int | None) -> int | None:
    """The compress_to_size that gives `dimensions`: None for the full vector. A size the model
    does not declare is refused naming the sizes it allows."""
    semantic = manifest.semantic
    if dimensions is None or semantic is None:  # no semantic section: refused naming the model
        return None
    full = semantic.dimensions or semantic.output_size(manifest.hidden_size)
    if dimensions == full:
        return None
    if dimensions not in semantic.matryoshka_dimensions:
        allowed = ", ".join(map(str, (*semantic.matryoshka_dimensions, full)))
        kind = "Matryoshka sizes and full size" if semantic.matryoshka_dimensions else "full size"
        raise InvalidArgument(
            ("dimensions",),
            f"model {name!r} gives no {dimensions}-dimensional embedding; its {kind}: {allowed}",
        )
    return dimensions


def semantic_request(
    request: domain.EmbeddingsRequest, compress_to_size: int | None
) -> domain.SemanticEmbedRequest:
    prompts = tuple(
        (domain.TextItem(data=i),) if isinstance(i, str) else (domain.TokenIdsItem(data=i),)
        for i in request.inputs
    )
    return domain.SemanticEmbedRequest(
        model=request.model,
        prompts=prompts,
        representation=domain.Representation.SYMMETRIC,
        batch=True,  # errors name prompts[i], which `relocated` turns into input[i]
        compress_to_size=compress_to_size,
        # Truncated vectors are renormalised; the full one is as the model's default says.
        normalize=True if request.dimensions is not None else None,
        hosting=request.hosting,
        nice=request.nice,
    )


def relocated(error: InvalidArgument, listed: bool) -> InvalidArgument:
    """An error of the SemanticEmbed batch with the field the caller wrote: ("prompts", i, 0,
    kind, "data", k) -> `input[i][k]` (or `input[k]` for one input), ("prompts", i) -> `input[i]`,
    compress_to_size -> dimensions."""
    field = error.field
    if field == ("compress_to_size",):
        return InvalidArgument(("dimensions",), error.problem)
    if not field or field[0] != "prompts" or len(field) < 2:
        return error
    head: FieldPath = ("input", field[1]) if listed else ("input",)
    rest = field[2:]
    if rest[:1] == (0,):  # inside the input's one item, whose index and kind the caller never saw
        rest = rest[2:]
        if rest[:1] == ("data",):
            rest = rest[1:]
    return InvalidArgument((*head, *rest), error.problem)
