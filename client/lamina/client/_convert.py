"""Python arguments <-> protobuf messages: the only client module that touches the wire format."""

from __future__ import annotations

from collections.abc import Sequence

from lamina.client.prompt import Image, Prompt, Text, TokenIds
from lamina.client.results import EmbedResult, ModelInfo, Timing, TokenizeResult, make_vector
from lamina.v1 import embed_pb2 as pb

LAYER_PREFIX = "layer_"


def embed_request(
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
) -> pb.EmbedRequest:
    request = pb.EmbedRequest(
        model=model,
        prompt=prompt_message(prompt),
        layers=list(layers),
        pooling=list(pooling),
        nice=nice,
    )
    # proto3 `optional`: None leaves the field unset, which the server reads as the API default.
    if normalize is not None:
        request.normalize = normalize
    if tokens is not None:
        request.tokens = tokens
    if hosting is not None:
        request.hosting = hosting
    if contextual_control_threshold is not None:
        request.contextual_control_threshold = contextual_control_threshold
    if control_log_additive is not None:
        request.control_log_additive = control_log_additive
    if type is not None:
        request.type = type
    return request


def prompt_message(prompt: Prompt) -> pb.Prompt:
    items = [Text(prompt)] if isinstance(prompt, str) else list(prompt)
    return pb.Prompt(items=[_item(item) for item in items])


def _item(item: Text | TokenIds | Image) -> pb.PromptItem:
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


def embed_result(response: pb.EmbedResponse) -> EmbedResult:
    embeddings = {
        _layer_index(key): {name: make_vector(v.values) for name, v in layer.pooling.items()}
        for key, layer in response.embeddings.items()
    }
    return EmbedResult(
        model_version=response.model_version,
        embeddings=dict(sorted(embeddings.items())),
        tokens=list(response.tokens.tokens) if response.HasField("tokens") else None,
        num_tokens_prompt_total=response.num_tokens_prompt_total,
        timing=Timing(
            queue_seconds=response.timing.queue_seconds,
            tokenization_seconds=response.timing.tokenization_seconds,
            inference_seconds=response.timing.inference_seconds,
        ),
    )


def _layer_index(key: str) -> int:
    if not key.startswith(LAYER_PREFIX):
        raise ValueError(f"unexpected embeddings key {key!r}")
    return int(key[len(LAYER_PREFIX) :])


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
        )
        for m in response.models
    ]


def tokenize_request(
    model: str, prompt: str, *, tokens: bool, token_ids: bool
) -> pb.TokenizeRequest:
    return pb.TokenizeRequest(model=model, prompt=prompt, tokens=tokens, token_ids=token_ids)


def tokenize_result(response: pb.TokenizeResponse) -> TokenizeResult:
    return TokenizeResult(
        tokens=list(response.tokens.tokens) if response.HasField("tokens") else None,
        token_ids=list(response.token_ids.ids) if response.HasField("token_ids") else None,
    )


def detokenize_request(model: str, token_ids: Sequence[int]) -> pb.DetokenizeRequest:
    return pb.DetokenizeRequest(model=model, token_ids=list(token_ids))


# Per-layer replies are big: 64 MiB each way, as on the server.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
