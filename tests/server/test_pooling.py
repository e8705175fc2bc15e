"""Pooling formulas against values computed by hand (docs/api.md, Embed)."""

from __future__ import annotations

import numpy as np
import pytest

from lamina.server.domain import Pooling
from lamina.server.pooling import normalize, pool

# Three positions, two dimensions.
STATES = np.array([[1.0, -4.0], [2.0, 0.0], [6.0, 1.0]], dtype=np.float32)


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        (Pooling.MEAN, [3.0, -1.0]),  # (1+2+6)/3, (-4+0+1)/3
        # weights i / (n(n+1)/2) = 1/6, 2/6, 3/6
        (Pooling.WEIGHTED_MEAN, [(1 + 4 + 18) / 6, (-4 + 0 + 3) / 6]),
        (Pooling.MAX, [6.0, 1.0]),
        (Pooling.LAST_TOKEN, [6.0, 1.0]),
        (Pooling.ABS_MAX, [6.0, 4.0]),
    ],
)
def test_pooling_matches_hand_computed_values(pooling: Pooling, expected: list[float]) -> None:
    result = pool(STATES, pooling)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_last_token_differs_from_max_when_last_is_not_largest() -> None:
    states = np.array([[5.0], [1.0]], dtype=np.float32)
    assert pool(states, Pooling.LAST_TOKEN)[0] == 1.0
    assert pool(states, Pooling.MAX)[0] == 5.0


def test_weighted_mean_of_one_position_is_that_position() -> None:
    np.testing.assert_allclose(pool(STATES[:1], Pooling.WEIGHTED_MEAN), STATES[0])


def test_pooled_vector_does_not_alias_the_states() -> None:
    states = STATES.copy()
    pooled = pool(states, Pooling.LAST_TOKEN)
    states[-1] = 0
    np.testing.assert_allclose(pooled, [6.0, 1.0])


def test_normalize_gives_unit_length_and_keeps_direction() -> None:
    vector = np.array([3.0, 4.0], dtype=np.float32)
    np.testing.assert_allclose(normalize(vector), [0.6, 0.8], rtol=1e-6)


def test_normalize_leaves_the_zero_vector_finite() -> None:
    assert np.all(np.isfinite(normalize(np.zeros(4, dtype=np.float32))))


def test_pooling_refuses_empty_states() -> None:
    with pytest.raises(ValueError, match="n > 0"):
        pool(np.zeros((0, 3), dtype=np.float32), Pooling.MEAN)
