"""Python arguments <-> protobuf messages: the only client module that touches the wire format.

Each public builder returns a `Call`: the EmbedService method, its request, and how to read its
reply. The sync and asyncio clients differ only in how they send a `Call`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from lamina.client.prompt import Image, Prompt, PromptItem, Text, TokenIds
from lamina.client.results import (
    BatchSemanticEmbedResult,
    EmbeddingsResult,
    EmbedResult,
    InstructableEmbedResult,
    ModelInfo,
    ModelVersionState,
    PoolPrecision,
    SemanticEmbedResult,
    Timing,
    TokenizeResult,
    make_vector,
)
from lamina.v1 import embed_pb2 as pb

LAYER_PREFIX = "layer_"

T = TypeVar("T")


def set_present(request: Message, **fields: object) -> None:
    """Set the proto3 `optional` fields given a value; None leaves one unset, which the server
    reads as the API default (so unset and False stay distinct, as control_log_additive's default
    is true)."""
    for name, value in fields.items():
        if value is not None:
            setattr(request, name, value)


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str  # attribute of the generated EmbedServiceStub, e.g. "Embed"
    request: Message
    parse: Callable[[Any], T]


def embed(
    model: str,
    prompt: Prompt,
    *,
    layers: Sequence[int],
    pooling: Sequence[str],
    normalize: bool | None,
    tokens: bool | None,
    hosting: str | None,
    nice: bool,
    contextual_control_threshold: float | None,
    control_log_additive: bool | None,
    type: str | None,
) -> Call[EmbedResult]:
    request = pb.EmbedRequest(
        model=model,
        prompt=prompt_message(prompt),
        layers=list(layers),
        # A bare string is a Sequence[str] too; read it as one pooling, not as its letters.
        pooling=[pooling] if isinstance(pooling, str) else list(pooling),
        nice=nice,
    )
    set_present(
        request,
        normalize=normalize,
        tokens=tokens,
        hosting=hosting,
        contextual_control_threshold=contextual_control_threshold,
        control_log_additive=control_log_additive,
        type=type,
    )
    return Call("Embed", request, embed_result)


def semantic_embed(
    model: str,
    prompt: Prompt,
    *,
    representation: str,
    compress_to_size: int | None,
    normalize: bool | None,
    hosting: str | None,
    nice: bool,
    contextual_control_threshold: float | None,
    control_log_additive: bool | None,
) -> Call[SemanticEmbedResult]:
    request = pb.SemanticEmbedRequest(
        model=model, prompt=prompt_message(prompt), representation=representation, nice=nice
    )
    set_present(
        request,
        compress_to_size=compress_to_size,
        normalize=normalize,
        hosting=hosting,
        contextual_control_threshold=contextual_control_threshold,
        control_log_additive=control_log_additive,
    )
    return Call("SemanticEmbed", request, semantic_embed_result)


def batch_semantic_embed(
    model: str,
    prompts: Sequence[Prompt],
    *,
    representation: str,
    compress_to_size: int | None,
    normalize: bool | None,
    hosting: str | None,
    nice: bool,
    contextual_control_threshold: float | None,
    control_log_additive: bool | None,
) -> Call[BatchSemanticEmbedResult]:
    if isinstance(prompts, str):
        # A bare string is a Sequence too; it is one prompt, not one per letter.
        raise TypeError("prompts is a list of prompts; for a single one use semantic_embed")
    request = pb.BatchSemanticEmbedRequest(
        model=model,
        prompts=[prompt_message(p) for p in prompts],
        representation=representation,
        nice=nice,
    )
    set_present(
        request,
        compress_to_size=compress_to_size,
        normalize=normalize,
        hosting=hosting,
        contextual_control_threshold=contextual_control_threshold,
        control_log_additive=control_log_additive,
    )
    return Call("BatchSemanticEmbed", request, batch_semantic_embed_result)


def embeddings(
    model: str,
    inputs: str | Sequence[str | Sequence[int]],
    *,
    dimensions: int | None,
    hosting: str | None,
    nice: bool,
) -> Call[EmbeddingsResult]:
    """`inputs`: one text, or a list of texts and token-id lists (each one input)."""
    listed = [inputs] if isinstance(inputs, str) else list(inputs)
    request = pb.EmbeddingsRequest(model=model, nice=nice)
    for item in listed:
        if isinstance(item, str):
            request.input.add(text=item)
        else:
            request.input.add(token_ids=pb.TokenIdList(ids=list(item)))
    set_present(request, dimensions=dimensions, hosting=hosting)
    return Call("Embeddings", request, embeddings_result)


def instructable_embed(
    model: str,
    input: Prompt,
    *,
    instruction: str,
    normalize: bool | None,
    hosting: str | None,
    nice: bool,
    contextual_control_threshold: float | None,
    control_log_additive: bool | None,
) -> Call[InstructableEmbedResult]:
    request = pb.InstructableEmbedRequest(
        model=model, input=prompt_message(input), instruction=instruction, nice=nice
    )
    set_present(
        request,
        normalize=normalize,
        hosting=hosting,
        contextual_control_threshold=contextual_control_threshold,
        control_log_additive=control_log_additive,
    )
    return Call("InstructableEmbed", request, instructable_embed_result)


def models() -> Call[list[ModelInfo]]:
    return Call("ModelsAvailable", pb.ModelsAvailableRequest(), model_infos)


def model_versions() -> Call[list[ModelVersionState]]:
    return Call("ModelsAvailable", pb.ModelsAvailableRequest(), version_states)


def tokenize(model: str, prompt: str, *, tokens: bool, token_ids: bool) -> Call[TokenizeResult]:
    request = pb.TokenizeRequest(model=model, prompt=prompt, tokens=tokens, token_ids=token_ids)
    return Call("Tokenize", request, tokenize_result)


def detokenize(model: str, token_ids: Sequence[int]) -> Call[str]:
    request = pb.DetokenizeRequest(model=model, token_ids=list(token_ids))
    return Call("Detokenize", request, detokenize_result)


# ---------------------------------------------------------------------------------------------
# Prompts


def prompt_message(prompt: Prompt) -> pb.Prompt:
    if isinstance(prompt, str):
        items: Sequence[PromptItem] = [Text(prompt)]
    elif isinstance(prompt, Text | TokenIds | Image):
        items = [prompt]
    else:
        items = prompt
    return pb.Prompt(items=[_item(item) for item in items])


def _item(item: PromptItem) -> pb.PromptItem:
    if isinstance(item, Text):
        text = pb.TextItem(data=item.data)
        for c in item.controls:
            control = text.controls.add(start=c.start, length=c.length, factor=c.factor)
            if c.token_overlap is not None:
                control.token_overlap = c.token_overlap
        return pb.PromptItem(text=text)
    if isinstance(item, TokenIds):
        ids = pb.TokenIdsItem(data=list(item.data))
        for t in item.controls:
            ids.controls.add(index=t.index, factor=t.factor)
        return pb.PromptItem(token_ids=ids)
    if isinstance(item, Image):
        image = pb.ImageItem(data=item.data)
        if item.crop is not None:
            image.crop.CopyFrom(pb.ImageCrop(x=item.crop.x, y=item.crop.y, size=item.crop.size))
        for i in item.controls:
            rect = pb.Rect(
                left=i.rect.left, top=i.rect.top, width=i.rect.width, height=i.rect.height
            )
            image_control = image.controls.add(rect=rect, factor=i.factor)
            if i.token_overlap is not None:
                image_control.token_overlap = i.token_overlap
        return pb.PromptItem(image=image)
    raise TypeError(f"a prompt item is Text, TokenIds or Image, not {type(item).__name__}")


# ---------------------------------------------------------------------------------------------
# Replies


def embed_result(response: pb.EmbedResponse) -> EmbedResult:
    embeddings = {
        _layer_index(key): {name: make_vector(v.values) for name, v in layer.pooling.items()}
        for key, layer in response.embeddings.items()
    }
    return EmbedResult(
        model_version=response.model_version,
        # protobuf maps have no order; ascending layers read (and print) predictably.
        embeddings=dict(sorted(embeddings.items())),
        tokens=list(response.tokens.tokens) if response.HasField("tokens") else None,
        num_tokens_prompt_total=response.num_tokens_prompt_total,
        timing=_timing(response.timing),
    )


def semantic_embed_result(response: pb.SemanticEmbedResponse) -> SemanticEmbedResult:
    return SemanticEmbedResult(
        model_version=response.model_version,
        embedding=make_vector(response.embedding),
        num_tokens_prompt_total=response.num_tokens_prompt_total,
        timing=_timing(response.timing),
    )


def batch_semantic_embed_result(
    response: pb.BatchSemanticEmbedResponse,
) -> BatchSemanticEmbedResult:
    return BatchSemanticEmbedResult(
        model_version=response.model_version,
        embeddings=[make_vector(v.values) for v in response.embeddings],
        num_tokens_prompt_total=response.num_tokens_prompt_total,
        timing=_timing(response.timing),
    )


def embeddings_result(response: pb.EmbeddingsResponse) -> EmbeddingsResult:
    return EmbeddingsResult(
        model=response.model,
        model_version=response.model_version,
        embeddings=[make_vector(v.values) for v in response.embeddings],
        prompt_tokens=response.usage.prompt_tokens,
        timing=_timing(response.timing),
    )


def instructable_embed_result(response: pb.InstructableEmbedResponse) -> InstructableEmbedResult:
    return InstructableEmbedResult(
        model_version=response.model_version,
        embedding=make_vector(response.embedding),
        num_tokens_prompt_total=response.num_tokens_prompt_total,
        timing=_timing(response.timing),
    )


def _timing(timing: pb.RequestTiming) -> Timing:
    return Timing(
        queue_seconds=timing.queue_seconds,
        tokenization_seconds=timing.tokenization_seconds,
        inference_seconds=timing.inference_seconds,
        parked_seconds=timing.parked_seconds,
    )


def _layer_index(key: str) -> int:
    number = key.removeprefix(LAYER_PREFIX)
    if number == key or not number.lstrip("-").isdigit():
        raise ValueError(f"unexpected embeddings key {key!r}, expected 'layer_<N>'")
    return int(number)


def model_infos(response: pb.ModelsAvailableResponse) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=m.name,
            description=m.description,
            max_context_size=m.max_context_size,
            hostings=list(m.hostings),
            image_support=m.image_support,
            embedding_types=list(m.embedding_types),
            version=m.version,
            num_layers=m.num_layers,
            hidden_size=m.hidden_size,
            architecture=m.architecture,
            untrained=m.untrained,
            versions=[version_state(v) for v in m.versions],
            precisions=[
                PoolPrecision(p.pool, p.precision, list(p.min_cosine)) for p in m.precisions
            ],
        )
        for m in response.models
    ]


def version_states(response: pb.ModelsAvailableResponse) -> list[ModelVersionState]:
    return [version_state(state) for state in response.versions]


def version_state(state: pb.ModelVersionState) -> ModelVersionState:
    return ModelVersionState(
        model=state.model, version=state.version, state=state.state, reason=state.reason or None
    )


def tokenize_result(response: pb.TokenizeResponse) -> TokenizeResult:
    return TokenizeResult(
        tokens=list(response.tokens.tokens) if response.HasField("tokens") else None,
        token_ids=list(response.token_ids.ids) if response.HasField("token_ids") else None,
    )


def detokenize_result(response: pb.DetokenizeResponse) -> str:
    return response.result
