"""Lamina's client: `Client` (blocking) and `AsyncClient` (asyncio) for the embed API over gRPC."""

from lamina.client._channel import Security
from lamina.client.aio import AsyncClient
from lamina.client.errors import LaminaError
from lamina.client.prompt import (
    Image,
    ImageControl,
    ImageCrop,
    Prompt,
    PromptItem,
    Rect,
    Text,
    TextControl,
    TokenControl,
    TokenIds,
)
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
    Vector,
)
from lamina.client.sync import Client

__all__ = [
    "AsyncClient",
    "BatchSemanticEmbedResult",
    "Client",
    "EmbedResult",
    "EmbeddingsResult",
    "Image",
    "ImageControl",
    "ImageCrop",
    "InstructableEmbedResult",
    "LaminaError",
    "ModelInfo",
    "ModelVersionState",
    "PoolPrecision",
    "Prompt",
    "PromptItem",
    "Rect",
    "Security",
    "SemanticEmbedResult",
    "Text",
    "TextControl",
    "Timing",
    "TokenControl",
    "TokenIds",
    "TokenizeResult",
    "Vector",
]
