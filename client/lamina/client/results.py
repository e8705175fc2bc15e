"""Typed results. Vectors are numpy float32 arrays when numpy is installed, else lists."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


def _optional_numpy() -> ModuleType | None:
    try:
        return importlib.import_module("numpy")
    except ImportError:  # numpy is optional for the client
        return None


_numpy = _optional_numpy()

Vector = Any  # numpy.ndarray (float32) with numpy, list[float] without


def make_vector(values: Any) -> Vector:
    if _numpy is not None:
        return _numpy.asarray(values, dtype=_numpy.float32)
    return list(values)


@dataclass(frozen=True)
class Timing:
    queue_seconds: float
    tokenization_seconds: float
    inference_seconds: float
    parked_seconds: float = 0.0  # paused between segments while more urgent work ran; 0 if never


@dataclass(frozen=True)
class EmbedResult:
    model_version: str
    embeddings: dict[int, dict[str, Vector]]  # absolute layer -> pooling -> vector
    tokens: list[str] | None  # only when asked for
    num_tokens_prompt_total: int
    timing: Timing

    def vector(self, layer: int, pooling: str) -> Vector:
        """The vector of an absolute layer index and a pooling, e.g. `vector(6, "mean")`."""
        try:
            return self.embeddings[layer][pooling]
        except KeyError:
            available = {k: sorted(v) for k, v in self.embeddings.items()}
            raise KeyError(f"no layer {layer} / pooling {pooling!r}; have {available}") from None


@dataclass(frozen=True)
class SemanticEmbedResult:
    model_version: str
    embedding: Vector
    num_tokens_prompt_total: int
    timing: Timing


@dataclass(frozen=True)
class BatchSemanticEmbedResult:
    model_version: str  # one version served every prompt
    embeddings: list[Vector]  # one per prompt, in the order sent
    num_tokens_prompt_total: int  # summed over the prompts
    timing: Timing  # the prompts ran concurrently: the longest of each figure


@dataclass(frozen=True)
class EmbeddingsResult:
    """OpenAI-style embeddings: one vector per input, in the order sent."""

    model: str  # the name asked for
    model_version: str  # one version served every input
    embeddings: list[Vector]
    prompt_tokens: int  # summed over the inputs (OpenAI's usage.prompt_tokens)
    timing: Timing  # the inputs ran concurrently: the longest of each figure


@dataclass(frozen=True)
class InstructableEmbedResult:
    model_version: str
    embedding: Vector
    num_tokens_prompt_total: int  # the instruction's and the template's tokens included
    timing: Timing


@dataclass(frozen=True)
class ModelVersionState:
    """Where one version of a model stands on the server."""

    model: str
    version: int
    state: str  # "loading", "serving", "failed" or "retired"
    # For "failed": why it did not load; for "serving": why its changed files do not serve.
    reason: str | None = None


@dataclass(frozen=True)
class PoolPrecision:
    """The precision one server pool serves a model in, and how close it came to fp32."""

    pool: str
    precision: str  # "fp32", "int8", ...
    # Per hidden state 0..num_layers: the lowest cosine to fp32 on the server's calibration set.
    min_cosine: list[float]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    max_context_size: int
    hostings: list[str]
    image_support: bool
    embedding_types: list[str]
    version: str
    num_layers: int
    hidden_size: int
    architecture: str
    untrained: bool = False  # random weights: the embeddings carry no meaning
    # Every version of the model the server knows, by version (what serves, what failed and why).
    versions: list[ModelVersionState] = field(default_factory=list)
    precisions: list[PoolPrecision] = field(default_factory=list)  # per pool


@dataclass(frozen=True)
class TokenizeResult:
    tokens: list[str] | None
    token_ids: list[int] | None
