"""Pooling and normalisation compute in float64 and return float32: a float32 accumulator loses
whole units of a sum at 2**24, which these states are built to show."""

from __future__ import annotations

import numpy as np

from lamina.server.domain import Pooling
from lamina.server.pooling import normalize, pool

BIG = float(2**24)  # float32 stops counting single units here: 2**24 + 1 == 2**24


def column(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def test_mean_accumulates_in_float64() -> None:
    states = column(BIG, 1, 1, 1)
    assert np.float32(BIG) + np.float32(1) == np.float32(BIG)  # what a float32 sum would do
    result = pool(states, Pooling.MEAN)
    assert result.dtype == np.float32
    assert result[0] == np.float32((BIG + 3) / 4)  # not BIG / 4


def test_normalize_returns_float32_of_a_float64_norm() -> None:
    vector = np.array([BIG, 1.0, 1.0, 1.0], dtype=np.float32)
    result = normalize(vector)
    assert result.dtype == np.float32
    expected = (vector.astype(np.float64) / np.sqrt(BIG**2 + 3)).astype(np.float32)
    np.testing.assert_array_equal(result, expected)
