"""Protobuf <-> domain objects: the only place below the servicer that knows the wire format.

Field-level checks that need no model (known pooling names, hosting values, control factors)
happen here, so every error names the field as the caller wrote it.
"""

from __future__ import annotations

import math

from lamina.server import domain
from lamina.server.errors import InvalidArgument, shown
from lamina.v1 import embed_pb2 as pb

HOSTINGS = ("aleph-alpha",)
MAX_BATCH_PROMPTS = 100  # BatchSemanticEmbed (api-reference.md)
SEMANTIC_COMPRESSED_SIZE = 128  # the one size compress_to_size may ask for

# The request messages sharing the fields that every embedding request has.
AnyEmbedRequest = pb.EmbedRequest | pb.SemanticEmbedRequest | pb.BatchSemanticEmbedRequest


def embed_request(message: pb.EmbedRequest) -> domain.EmbedRequest:
    _check_model(message)
    if not message.HasField("prompt"):
        raise InvalidArgument("prompt", "the prompt is empty (no text, token ids or images)")
    return domain.EmbedRequest(
        model=message.model,
        prompt=_prompt(message.prompt, "prompt"),
        layers=tuple(message.layers),
        pooling=tuple(_pooling(name, i) for i, name in enumerate(message.pooling)),
        normalize=message.normalize,
        tokens=message.tokens,
        hosting=_hosting(message),
        nice=message.nice,
        contextual_control_threshold=_threshold(message),
        control_log_additive=_control_log_additive(message),
    )


def semantic_embed_request(message: pb.SemanticEmbedRequest) -> domain.SemanticEmbedRequest:
    _check_model(message)
    if not message.HasField("prompt"):
        raise InvalidArgument("prompt", "the prompt is empty (no text, token ids or images)")
    return _semantic(message, (_prompt(message.prompt, "prompt"),), batch=False)


def batch_semantic_embed_request(
    message: pb.BatchSemanticEmbedRequest,
) -> domain.SemanticEmbedRequest:
    _check_model(message)
    count = len(message.prompts)
    if not 1 <= count <= MAX_BATCH_PROMPTS:
        raise InvalidArgument("prompts", f"{count} prompts; a batch takes 1 to {MAX_BATCH_PROMPTS}")
    prompts = tuple(_prompt(p, f"prompts[{i}]") for i, p in enumerate(message.prompts))
    return _semantic(message, prompts, batch=True)


def _semantic(
    message: pb.SemanticEmbedRequest | pb.BatchSemanticEmbedRequest,
    prompts: tuple[tuple[domain.PromptItem, ...], ...],
    *,
    batch: bool,
) -> domain.SemanticEmbedRequest:
    compress = message.compress_to_size if message.HasField("compress_to_size") else None
    if compress is not None and compress != SEMANTIC_COMPRESSED_SIZE:
        raise InvalidArgument(
            "compress_to_size",
            f"{compress} is not supported; expected {SEMANTIC_COMPRESSED_SIZE} or unset",
        )
    return domain.SemanticEmbedRequest(
        model=message.model,
        prompts=prompts,
        representation=_representation(message.representation),
        batch=batch,
        compress_to_size=compress,
        # Unset: the model's own default (its manifest's semantic.normalize).
        normalize=message.normalize if message.HasField("normalize") else None,
        hosting=_hosting(message),
        nice=message.nice,
        contextual_control_threshold=_threshold(message),
        control_log_additive=_control_log_additive(message),
    )


def _check_model(message: AnyEmbedRequest) -> None:
    if not message.model:
        raise InvalidArgument("model", "a model name is required")


def _prompt(prompt: pb.Prompt, field: str) -> tuple[domain.PromptItem, ...]:
    if not prompt.items:
        raise InvalidArgument(field, "the prompt is empty (no text, token ids or images)")
    return tuple(_prompt_item(item, f"{field}.items[{i}]") for i, item in enumerate(prompt.items))


def _hosting(message: AnyEmbedRequest) -> str | None:
    hosting = message.hosting if message.HasField("hosting") else None
    if hosting is not None and hosting not in HOSTINGS:
        raise InvalidArgument(
            "hosting", f"unknown hosting {shown(hosting)}; expected unset or one of {HOSTINGS}"
        )
    return hosting


def _threshold(message: AnyEmbedRequest) -> float | None:
    if not message.HasField("contextual_control_threshold"):
        return None
    threshold = message.contextual_control_threshold
    if not math.isfinite(threshold):
        raise InvalidArgument("contextual_control_threshold", "must be a finite number")
    return threshold


def _control_log_additive(message: AnyEmbedRequest) -> bool:
    # Unset means true (api-reference.md).
    return message.control_log_additive if message.HasField("control_log_additive") else True


def _representation(name: str) -> domain.Representation:
    try:
        return domain.Representation(name)
    except ValueError:
        expected = ", ".join(r.value for r in domain.Representation)
        problem = "is required" if not name else f"unknown representation {shown(name)}"
        raise InvalidArgument("representation", f"{problem}; expected one of {expected}") from None


def _pooling(name: str, index: int) -> domain.Pooling:
    try:
        return domain.Pooling(name)
    except ValueError:
        expected = ", ".join(p.value for p in domain.Pooling)
        raise InvalidArgument(
            f"pooling[{index}]", f"unknown pooling {shown(name)}; expected one of {expected}"
        ) from None


def _crop(crop: pb.ImageCrop, field: str) -> domain.ImageCrop:
    missing = [name for name in ("x", "y", "size") if not crop.HasField(name)]
    if missing:
        raise InvalidArgument(
            field, f"give x, y and size together, or no crop at all (missing: {', '.join(missing)})"
        )
    return domain.ImageCrop(crop.x, crop.y, crop.size)


def _prompt_item(item: pb.PromptItem, field: str) -> domain.PromptItem:
    kind = item.WhichOneof("item")
    if kind == "text":
        return domain.TextItem(
            data=item.text.data,
            controls=tuple(
                domain.TextControl(
                    start=c.start,
                    length=c.length,
                    factor=_factor(c.factor, f"{field}.text.controls[{j}].factor"),
                    token_overlap=_overlap(c, f"{field}.text.controls[{j}].token_overlap"),
                )
                for j, c in enumerate(item.text.controls)
            ),
        )
    if kind == "token_ids":
        return domain.TokenIdsItem(
            data=tuple(item.token_ids.data),
            controls=tuple(
                domain.TokenControl(
                    index=c.index,
                    factor=_factor(c.factor, f"{field}.token_ids.controls[{j}].factor"),
                )
                for j, c in enumerate(item.token_ids.controls)
            ),
        )
    if kind == "image":
        image = item.image
        crop = _crop(image.crop, f"{field}.image.crop") if image.HasField("crop") else None
        return domain.ImageItem(
            data=image.data,
            crop=crop,
            controls=tuple(
                domain.ImageControl(
                    rect=domain.Rect(c.rect.left, c.rect.top, c.rect.width, c.rect.height),
                    factor=_factor(c.factor, f"{field}.image.controls[{j}].factor"),
                    token_overlap=_overlap(c, f"{field}.image.controls[{j}].token_overlap"),
                )
                for j, c in enumerate(image.controls)
            ),
        )
    raise InvalidArgument(field, "the item has none of text, image or token_ids")


def _factor(value: float, field: str) -> float:
    if not (0 <= value <= domain.MAX_CONTROL_FACTOR):  # NaN fails every comparison
        raise InvalidArgument(
            field,
            f"control factor must be finite, >= 0 and at most {domain.MAX_CONTROL_FACTOR:.0e}, "
            f"got {value:.6g}",
        )
    return value


def _overlap(control: pb.TextControl | pb.ImageControl, field: str) -> domain.TokenOverlap:
    if not control.HasField("token_overlap"):
        return domain.TokenOverlap.PARTIAL
    try:
        return domain.TokenOverlap(control.token_overlap)
    except ValueError:
        raise InvalidArgument(
            field,
            f"unknown token_overlap {shown(control.token_overlap)}; expected partial or complete",
        ) from None


def embed_response(result: domain.EmbedResult) -> pb.EmbedResponse:
    response = pb.EmbedResponse(
        model_version=result.model_version,
        num_tokens_prompt_total=result.num_tokens_prompt_total,
        timing=_timing(result.timing),
    )
    for layer, vectors in result.embeddings.items():
        entry = response.embeddings[f"layer_{layer}"]
        for pooling, vector in vectors.items():
            entry.pooling[pooling.value].values.extend(vector.tolist())
    if result.tokens is not None:
        response.tokens.tokens.extend(result.tokens)
    return response


def semantic_embed_response(result: domain.SemanticEmbedResult) -> pb.SemanticEmbedResponse:
    (embedding,) = result.embeddings
    return pb.SemanticEmbedResponse(
        model_version=result.model_version,
        embedding=embedding.tolist(),
        num_tokens_prompt_total=result.num_tokens_prompt_total,
        timing=_timing(result.timing),
    )


def batch_semantic_embed_response(
    result: domain.SemanticEmbedResult,
) -> pb.BatchSemanticEmbedResponse:
    return pb.BatchSemanticEmbedResponse(
        model_version=result.model_version,
        embeddings=[pb.Vector(values=e.tolist()) for e in result.embeddings],
        num_tokens_prompt_total=result.num_tokens_prompt_total,
        timing=_timing(result.timing),
    )


def _timing(timing: domain.Timing) -> pb.RequestTiming:
    return pb.RequestTiming(
        queue_seconds=timing.queue_seconds,
        tokenization_seconds=timing.tokenization_seconds,
        inference_seconds=timing.inference_seconds,
    )


def model_info(model: domain.ModelDescription) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=model.name,
        description=model.description,
        max_context_size=model.max_context_size,
        hostings=list(model.hostings),
        image_support=model.image_support,
        embedding_types=list(model.embedding_types),
        version=str(model.version),
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        architecture=model.architecture,
        untrained=not model.trained,
    )
