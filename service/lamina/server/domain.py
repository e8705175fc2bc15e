"""The request and result objects every layer below the api speaks (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

# The largest attention-control factor, alone or as the product of the controls on one
# position: the graph computes in float32, with s + ln f (log-additive) or (s - min s) * f, and
# 1e30 leaves eight orders of magnitude of headroom below float32's largest value (3.4e38) for
# the scores it multiplies.
MAX_CONTROL_FACTOR = 1e30


class Pooling(StrEnum):
    MEAN = "mean"
    WEIGHTED_MEAN = "weighted_mean"
    MAX = "max"
    LAST_TOKEN = "last_token"
    ABS_MAX = "abs_max"
    # h_1: sentence-transformers' CLS pooling. Only a model's semantic embedding pools so; the
    # Embed API does not offer it (EMBED_POOLINGS).
    FIRST_TOKEN = "first_token"


# What an Embed request may ask for (docs/api.md).
EMBED_POOLINGS = tuple(p for p in Pooling if p is not Pooling.FIRST_TOKEN)


class Representation(StrEnum):
    """What a semantic embedding is for: comparing like with like, or a query with documents."""

    SYMMETRIC = "symmetric"
    DOCUMENT = "document"
    QUERY = "query"


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
    # Text tokenized as its own item before `prompt` (a semantic representation's instruction):
    # the caller's items keep their indices, so their controls and error paths stay as written.
    instruction: str = ""


@dataclass(frozen=True)
class SemanticEmbedRequest:
    """SemanticEmbed (one prompt) and BatchSemanticEmbed (up to 100): each prompt becomes one
    EmbedRequest of the model's semantic layer and pooling, scheduled as its own row."""

    model: str
    prompts: tuple[tuple[PromptItem, ...], ...]  # in input order
    representation: Representation
    # BatchSemanticEmbed: errors about a prompt name `prompts[i]`, not `prompt`.
    batch: bool = False
    compress_to_size: int | None = None
    normalize: bool | None = None  # None: the model's own default
    hosting: str | None = None
    nice: bool = False
    contextual_control_threshold: float | None = None
    control_log_additive: bool = True


# One input of OpenAI's embeddings: a text, or token ids used as they are.
EmbeddingsInput = str | tuple[int, ...]


@dataclass(frozen=True)
class EmbeddingsRequest:
    """OpenAI's embeddings (up to 100 inputs): each input one prompt of a SemanticEmbedRequest
    with representation symmetric (embeddings.py), so scheduling and limits are Embed's."""

    model: str
    inputs: tuple[EmbeddingsInput, ...]  # in input order, at least one
    # The caller sent a list of inputs (errors name `input[i]`), not one input (`input`).
    listed: bool = True
    dimensions: int | None = None  # Matryoshka truncation, then normalisation
    hosting: str | None = None
    nice: bool = False


@dataclass(frozen=True)
class InstructableEmbedRequest:
    """InstructableEmbed: one EmbedRequest of the model's instructable layer and pooling, its
    sequence the instruction (in the model's template) followed by the input's items."""

    model: str
    input: tuple[PromptItem, ...]
    instruction: str  # "": the input is embedded alone
    normalize: bool = False
    hosting: str | None = None
    nice: bool = False
    contextual_control_threshold: float | None = None
    control_log_additive: bool = True


@dataclass(frozen=True)
class Timing:
    queue_seconds: float
    tokenization_seconds: float
    inference_seconds: float
    parked_seconds: float = 0.0  # paused between segments while more urgent work ran; 0 if never


@dataclass(frozen=True)
class EmbedResult:
    model_version: str
    embeddings: dict[int, dict[Pooling, np.ndarray]]  # absolute layer -> pooling -> vector
    tokens: tuple[str, ...] | None
    num_tokens_prompt_total: int
    timing: Timing


@dataclass(frozen=True)
class SemanticEmbedResult:
    model_version: str  # one version served every prompt
    embeddings: tuple[np.ndarray, ...]  # one per prompt, in input order
    num_tokens_prompt_total: int  # summed over the prompts
    timing: Timing  # the prompts ran concurrently: the longest of each figure


@dataclass(frozen=True)
class InstructableEmbedResult:
    model_version: str
    embedding: np.ndarray
    num_tokens_prompt_total: int  # the instruction's tokens and the template's included
    timing: Timing


class Precision(StrEnum):
    """The number format a pool's graph computes in."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"

    @property
    def gate(self) -> float:
        """The lowest cosine to fp32, on every hidden state of the calibration set, at which a
        graph of this precision may serve."""
        return _GATES[self]


_GATES = {Precision.FP32: 1.0, Precision.BF16: 0.999, Precision.FP16: 0.999, Precision.INT8: 0.99}


@dataclass(frozen=True)
class PoolPrecision:
    """What a pool serves a model version in, and how close that came to fp32 when measured:
    the lowest cosine per hidden state (1.0 throughout for fp32, the reference itself)."""

    pool: str
    precision: Precision
    min_cosine: tuple[float, ...]


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
    versions: tuple[ModelVersionState, ...] = ()  # every version of it the registry knows
    precisions: tuple[PoolPrecision, ...] = ()  # per pool, of the serving version

    def api_fields(self) -> dict[str, object]:
        """The API's model info, named and typed as both edges write it (lists as lists)."""
        return {
            "name": self.name,
            "description": self.description,
            "max_context_size": self.max_context_size,
            "hostings": list(self.hostings),
            "image_support": self.image_support,
            "embedding_types": list(self.embedding_types),
            "version": str(self.version),
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "architecture": self.architecture,
            "untrained": not self.trained,
            "precisions": [
                {"pool": p.pool, "precision": p.precision.value, "min_cosine": list(p.min_cosine)}
                for p in self.precisions
            ],
        }


class VersionState(StrEnum):
    """Where a version of a model stands in the registry (models/registry.py)."""

    LOADING = "loading"  # being read, or waiting for its files to settle: tried again each scan
    SERVING = "serving"
    FAILED = "failed"  # did not load; not tried again until its files change
    RETIRED = "retired"  # served, and a newer version took over


@dataclass(frozen=True)
class ModelVersionState:
    """One version as the registry reports it: what the edges render, without models/."""

    model: str
    version: int
    state: VersionState
    # Failed: the error, as logged ("ValueError: ..."). Serving: set when its files changed and
    # the changed files failed to load (the copy loaded before keeps serving). Otherwise None.
    reason: str | None = None
