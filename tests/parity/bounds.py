"""The parity bounds (issue 2): cosine >= 0.9999 per position and max abs error <= 1e-4 x the
layer's scale (its largest absolute reference value)."""

from __future__ import annotations

import numpy as np


def assert_layer_matches(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert ours.shape == reference.shape, what
    scale = float(np.abs(reference).max())
    error = float(np.abs(ours - reference).max())
    assert error <= 1e-4 * scale, f"{what}: max abs error {error:.2e} > 1e-4 x scale {scale:.3f}"
    cosine = np.sum(ours * reference, axis=-1) / (
        np.linalg.norm(ours, axis=-1) * np.linalg.norm(reference, axis=-1)
    )
    assert float(cosine.min()) >= 0.9999, f"{what}: cosine {cosine.min():.6f}"
