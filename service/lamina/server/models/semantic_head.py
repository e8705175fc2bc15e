"""What SemanticEmbed does to a pooled vector after the graph: the model's Dense projections
(read from the version folder when it loads), truncation and normalisation.

sentence-transformers applies its Dense modules to the pooled vector, then (encode's
`truncate_dim`) keeps a prefix of it; normalising after the truncation gives the unit vector a
Matryoshka caller compares with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors

from lamina.server.pooling import normalize
from lamina.server.repository.files import read_file
from lamina.server.repository.manifest import DenseLayer, SemanticConfig

Activation = Callable[[np.ndarray], np.ndarray]

_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    # torch.nn.GELU's default (approximate="none"), exactly: x * Phi(x) with the erf.
    return np.asarray(0.5 * x * (1.0 + np.asarray(_erf(x / math.sqrt(2.0)), np.float64)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)))


ACTIVATIONS: dict[str, Activation] = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": _gelu,
    "sigmoid": lambda x: _sigmoid(x),
    "silu": lambda x: x * _sigmoid(x),
}


@dataclass(frozen=True)
class Projection:
    """One Dense layer in memory: activation(vectors @ weight.T + bias)."""

    weight: np.ndarray  # [out, in], float64: the products are summed without float32 rounding
    bias: np.ndarray | None  # [out]
    activation: str

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        out = vectors @ self.weight.T
        if self.bias is not None:
            out = out + self.bias
        return ACTIVATIONS[self.activation](out)

    @staticmethod
    def read(directory: Path, layer: DenseLayer) -> Projection:
        """From its safetensors file, every tensor checked against the manifest's sizes."""
        limit = 8 * layer.out_features * (layer.in_features + 1) + (1 << 16)  # float64 + header
        tensors = load_safetensors(read_file(directory / layer.file, limit=limit))
        expected: dict[str, tuple[int, ...]] = {"weight": (layer.out_features, layer.in_features)}
        if layer.bias:
            expected["bias"] = (layer.out_features,)
        if set(tensors) != set(expected):
            raise ValueError(
                f"{layer.file}: expected the tensors {sorted(expected)}, found {sorted(tensors)}"
            )
        for name, shape in expected.items():
            tensor = tensors[name]
            if tensor.shape != shape or tensor.dtype.kind != "f":
                raise ValueError(
                    f"{layer.file}: {name} is {tensor.dtype} {list(tensor.shape)}, "
                    f"expected floats of shape {list(shape)}"
                )
            if not np.isfinite(tensor).all():
                raise ValueError(f"{layer.file}: {name} holds NaN or infinity")
        bias = tensors["bias"].astype(np.float64) if layer.bias else None
        return Projection(tensors["weight"].astype(np.float64), bias, layer.activation)


@dataclass(frozen=True)
class SemanticHead:
    """The projections of a model's semantic embedding, in order (none for most models)."""

    projections: tuple[Projection, ...] = ()

    @staticmethod
    def read(directory: Path, semantic: SemanticConfig | None) -> SemanticHead:
        if semantic is None:
            return SemanticHead()
        return SemanticHead(tuple(Projection.read(directory, d) for d in semantic.dense))

    def apply(
        self, pooled: Sequence[np.ndarray], size: int | None, normalized: bool
    ) -> list[np.ndarray]:
        """`pooled` vectors through the projections, cut to their first `size` values (None:
        all), then normalised where asked: float32 vectors, one per input."""
        if not pooled:
            return []
        vectors = np.stack(pooled).astype(np.float64)
        for projection in self.projections:
            vectors = projection(vectors)
        if size is not None:
            vectors = vectors[:, :size]
        rows = [np.asarray(row, dtype=np.float32) for row in vectors]
        return [normalize(row) for row in rows] if normalized else rows
