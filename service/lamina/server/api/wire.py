"""Protobuf <-> domain objects: the gRPC edge's one conversion each way.

What a value means is checked by the shared field rules (fields.py), so every error names the
field the way the domain does; api/status.py renders it as the protobuf path the caller sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from lamina.server import domain, embeddings, fields
from lamina.server.errors import INPUT, FieldPath, InvalidArgument
from lamina.v1 import embed_pb2 as pb

# The request messages sharing the fields that every embedding request has.
AnyEmbedRequest = (
    pb.EmbedRequest
    | pb.SemanticEmbedRequest
    | pb.BatchSemanticEmbedRequest
    | pb.InstructableEmbedRequest
)


def embed_request(message: pb.EmbedRequest) -> domain.EmbedRequest:
    fields.model(message.model)
    if not message.HasField("prompt"):
        raise InvalidArgument(("prompt",), fields.EMPTY_PROMPT)
    return domain.EmbedRequest(
        model=message.model,
        prompt=_prompt(message.prompt, ("prompt",)),
        layers=tuple(message.layers),
        pooling=tuple(fields.pooling(name, i) for i, name in enumerate(message.pooling)),
        normalize=message.normalize,
        tokens=message.tokens,
        hosting=_hosting(message),
        nice=message.nice,
        contextual_control_threshold=_threshold(message),
        control_log_additive=_control_log_additive(message),
    )


def semantic_embed_request(message: pb.SemanticEmbedRequest) -> domain.SemanticEmbedRequest:
    fields.model(message.model)
    if not message.HasField("prompt"):
        raise InvalidArgument(("prompt",), fields.EMPTY_PROMPT)
    return _semantic(message, (_prompt(message.prompt, ("prompt",)),), batch=False)


def batch_semantic_embed_request(
    message: pb.BatchSemanticEmbedRequest,
) -> domain.SemanticEmbedRequest:
    fields.model(message.model)
    fields.batch_size(len(message.prompts))
    prompts = tuple(_prompt(p, ("prompts", i)) for i, p in enumerate(message.prompts))
    return _semantic(message, prompts, batch=True)


def embeddings_request(message: pb.EmbeddingsRequest) -> domain.EmbeddingsRequest:
    fields.model(message.model)
    embeddings.input_count(len(message.input))
    inputs: list[domain.EmbeddingsInput] = []
    for i, item in enumerate(message.input):
        kind = item.WhichOneof("input")
        if kind is None:
            raise InvalidArgument(("input", i), "the input has neither text nor token_ids")
        inputs.append(item.text if kind == "text" else tuple(item.token_ids.ids))
    return domain.EmbeddingsRequest(
        model=message.model,
        inputs=tuple(inputs),
        dimensions=message.dimensions if message.HasField("dimensions") else None,
        hosting=fields.hosting(message.hosting if message.HasField("hosting") else None),
        nice=message.nice,
    )  # `user` is OpenAI's end-user id: accepted and ignored


def embeddings_response(model: str, result: domain.SemanticEmbedResult) -> pb.EmbeddingsResponse:
    tokens = result.num_tokens_prompt_total
    return pb.EmbeddingsResponse(
        model=model,
        model_version=result.model_version,
        embeddings=[pb.Vector(values=e.tolist()) for e in result.embeddings],
        usage=pb.EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens),
        timing=_timing(result.timing),
    )


def instructable_embed_request(
    message: pb.InstructableEmbedRequest,
) -> domain.InstructableEmbedRequest:
    fields.model(message.model)
    if not message.HasField("input"):
        raise InvalidArgument((INPUT,), fields.EMPTY_PROMPT)
    return domain.InstructableEmbedRequest(
        model=message.model,
        input=_prompt(message.input, (INPUT,)),
        instruction=message.instruction,
        normalize=message.normalize,
        hosting=_hosting(message),
        nice=message.nice,
        contextual_control_threshold=_threshold(message),
        control_log_additive=_control_log_additive(message),
    )


def _semantic(
    message: pb.SemanticEmbedRequest | pb.BatchSemanticEmbedRequest,
    prompts: tuple[tuple[domain.PromptItem, ...], ...],
    *,
    batch: bool,
) -> domain.SemanticEmbedRequest:
    compress = message.compress_to_size if message.HasField("compress_to_size") else None
    return domain.SemanticEmbedRequest(
        model=message.model,
        prompts=prompts,
        representation=fields.representation(message.representation),
        batch=batch,
        compress_to_size=fields.compress_to_size(compress),
        # Unset: the model's own default (its manifest's semantic.normalize).
        normalize=message.normalize if message.HasField("normalize") else None,
        hosting=_hosting(message),
        nice=message.nice,
        contextual_control_threshold=_threshold(message),
        control_log_additive=_control_log_additive(message),
    )


def _prompt(prompt: pb.Prompt, field: FieldPath) -> tuple[domain.PromptItem, ...]:
    if not prompt.items:
        raise InvalidArgument(field, fields.EMPTY_PROMPT)
    return tuple(_prompt_item(item, (*field, i)) for i, item in enumerate(prompt.items))


def _hosting(message: AnyEmbedRequest) -> str | None:
    return fields.hosting(message.hosting if message.HasField("hosting") else None)


def _threshold(message: AnyEmbedRequest) -> float | None:
    given = message.HasField("contextual_control_threshold")
    return fields.threshold(message.contextual_control_threshold if given else None)


def _control_log_additive(message: AnyEmbedRequest) -> bool:
    # Unset means true (docs/api.md).
    return message.control_log_additive if message.HasField("control_log_additive") else True


def _overlap(control: pb.TextControl | pb.ImageControl, field: FieldPath) -> domain.TokenOverlap:
    given = control.HasField("token_overlap")
    return fields.token_overlap(control.token_overlap if given else None, field)


def _crop(crop: pb.ImageCrop, field: FieldPath) -> domain.ImageCrop:
    x, y, size = (getattr(crop, n) if crop.HasField(n) else None for n in ("x", "y", "size"))
    return fields.crop(x, y, size, field)


def _prompt_item(item: pb.PromptItem, field: FieldPath) -> domain.PromptItem:
    kind = item.WhichOneof("item")
    if kind == "text":
        at: FieldPath = (*field, "text", "controls")
        return domain.TextItem(
            data=item.text.data,
            controls=tuple(
                domain.TextControl(
                    start=c.start,
                    length=c.length,
                    factor=fields.factor(c.factor, (*at, j, "factor")),
                    token_overlap=_overlap(c, (*at, j, "token_overlap")),
                )
                for j, c in enumerate(item.text.controls)
            ),
        )
    if kind == "token_ids":
        at = (*field, "token_ids", "controls")
        return domain.TokenIdsItem(
            data=tuple(item.token_ids.data),
            controls=tuple(
                domain.TokenControl(
                    index=c.index, factor=fields.factor(c.factor, (*at, j, "factor"))
                )
                for j, c in enumerate(item.token_ids.controls)
            ),
        )
    if kind == "image":
        image = item.image
        at = (*field, "image", "controls")
        crop = _crop(image.crop, (*field, "image", "crop")) if image.HasField("crop") else None
        return domain.ImageItem(
            data=image.data,
            crop=crop,
            controls=tuple(
                domain.ImageControl(
                    rect=domain.Rect(c.rect.left, c.rect.top, c.rect.width, c.rect.height),
                    factor=fields.factor(c.factor, (*at, j, "factor")),
                    token_overlap=_overlap(c, (*at, j, "token_overlap")),
                )
                for j, c in enumerate(image.controls)
            ),
        )
    raise InvalidArgument(field, "the item has none of text, image or token_ids")


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


def instructable_embed_response(
    result: domain.InstructableEmbedResult,
) -> pb.InstructableEmbedResponse:
    return pb.InstructableEmbedResponse(
        model_version=result.model_version,
        embedding=result.embedding.tolist(),
        num_tokens_prompt_total=result.num_tokens_prompt_total,
        timing=_timing(result.timing),
    )


def _timing(timing: domain.Timing) -> pb.RequestTiming:
    return pb.RequestTiming(
        queue_seconds=timing.queue_seconds,
        tokenization_seconds=timing.tokenization_seconds,
        inference_seconds=timing.inference_seconds,
        parked_seconds=timing.parked_seconds,
    )


def tokenize_response(
    request: pb.TokenizeRequest, pieces: list[str], ids: list[int]
) -> pb.TokenizeResponse:
    reply = pb.TokenizeResponse()
    # SetInParent: an asked-for list is present even when the text has no tokens.
    if request.tokens:
        reply.tokens.SetInParent()
        reply.tokens.tokens.extend(pieces)
    if request.token_ids:
        reply.token_ids.SetInParent()
        reply.token_ids.ids.extend(ids)
    return reply


def model_info(model: domain.ModelDescription) -> pb.ModelInfo:
    info = pb.ModelInfo(**model.api_fields())  # type: ignore[arg-type]
    info.versions.extend(version_states(model.versions))
    return info


def version_states(states: Iterable[domain.ModelVersionState]) -> list[pb.ModelVersionState]:
    """The registry's rows as ModelsAvailable carries them (ModelsAvailableResponse.versions and
    ModelInfo.versions); no reason is the empty string."""
    return [
        pb.ModelVersionState(
            model=s.model, version=s.version, state=s.state.value, reason=s.reason or ""
        )
        for s in states
    ]
