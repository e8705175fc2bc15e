"""The request and result objects every layer below the api speaks (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Pooling(StrEnum):
    MEAN = "mean"
    WEIGHTED_MEAN = "weighted_mean"
    MAX = "max"
    LAST_TOKEN = "last_token"
    ABS_MAX = "abs_max"


class TokenOverlap(StrEnum):
    PARTIAL = "partial"
    COMPLETE = "complete"


@dataclass(frozen=True)
class TextControl:
    start: int  # Unicode code points into the item's text
    length: int
    factor: float
    token_overlap: TokenOverlap = TokenOverlap.PARTIAL


@dataclass(frozen=True)
class TokenControl:
    index: int
    factor: float


@dataclass(frozen=True)
class Rect:
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class ImageControl:
    rect: Rect
    factor: float
    token_overlap: TokenOverlap = TokenOverlap.PARTIAL


@dataclass(frozen=True)
class ImageCrop:
    x: int
    y: int
    size: int


@dataclass(frozen=True)
class TextItem:
    data: str
    controls: tuple[TextControl, ...] = ()


@dataclass(frozen=True)
class TokenIdsItem:
    data: tuple[int, ...]
    controls: tuple[TokenControl, ...] = ()


@dataclass(frozen=True)
class ImageItem:
    data: bytes
    crop: ImageCrop | None = None
    controls: tuple[ImageControl, ...] = ()


PromptItem = TextItem | TokenIdsItem | ImageItem


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    prompt: tuple[PromptItem, ...]
    layers: tuple[int, ...]  # as asked: negative counts from the last block
    pooling: tuple[Pooling, ...]
    normalize: bool = False
    tokens: bool = False
    hosting: str | None = None
    nice: bool = False
    contextual_control_threshold: float | None = None
    control_log_additive: bool = True


@dataclass(frozen=True)
class Timing:
    queue_seconds: float
    tokenization_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class EmbedResult:
    model_version: str
    embeddings: dict[int, dict[Pooling, np.ndarray]]  # absolute layer -> pooling -> vector
    tokens: tuple[str, ...] | None
    num_tokens_prompt_total: int
    timing: Timing


@dataclass(frozen=True)
class ModelDescription:
    name: str
    version: int
    model_version: str
    description: str
    architecture: str
    num_layers: int
    hidden_size: int
    max_context_size: int
    image_support: bool
    trained: bool
    embedding_types: tuple[str, ...]
    hostings: tuple[str, ...]
