"""Pooling over the n prompt positions of one request (docs/api.md, Embed)."""

from __future__ import annotations

import numpy as np

from lamina.server.domain import Pooling


def pool(states: np.ndarray, pooling: Pooling) -> np.ndarray:
    """`states` is [n, hidden] for exactly the request's prompt positions: no padding."""
    if states.ndim != 2 or states.shape[0] == 0:
        raise ValueError(f"pooling needs [n > 0, hidden] states, got shape {states.shape}")
    n = states.shape[0]
    pooled: np.ndarray
    match pooling:
        case Pooling.MEAN:
            pooled = states.mean(axis=0, dtype=np.float64)
        case Pooling.WEIGHTED_MEAN:
            weights = np.arange(1, n + 1, dtype=np.float64) / (n * (n + 1) / 2)
            pooled = weights @ states.astype(np.float64)
        case Pooling.MAX:
            pooled = states.max(axis=0)
        case Pooling.LAST_TOKEN:
            pooled = states[-1]
        case Pooling.ABS_MAX:
            pooled = np.abs(states).max(axis=0)
        case Pooling.FIRST_TOKEN:
            pooled = states[0]
    return np.asarray(pooled, dtype=np.float32).copy()


def normalize(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm == 0.0:
        return vector  # the zero vector has no direction; returned as is rather than NaN
    return (vector / norm).astype(np.float32)
