"""The fidelity measurement a reduced precision is gated on (convert/fidelity.py) and the
calibration set it runs on (convert/calibration.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from lamina.server.convert import calibration
from lamina.server.convert.fidelity import Fidelity, calibration_ids, cosines
from lamina.server.repository.layout import list_versions
from tests.conftest import MINILM


def test_cosines_row_by_row_with_zero_rows_defined() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    b = np.array([[2.0, 0.0], [0.0, -1.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(cosines(a, b), [1.0, -1.0, 1.0, 0.0, 2**-0.5], rtol=1e-12)


def test_a_gate_reads_the_lower_figure_of_every_layer() -> None:
    measured = Fidelity(per_position=(1.0, 0.995, 0.97), pooled=(1.0, 0.98, 0.999))
    assert measured.per_layer == (1.0, 0.98, 0.97)
    assert measured.worst == 0.97
    assert measured.passes(0.97) and not measured.passes(0.99)


@pytest.mark.model
def test_the_calibration_set_spans_one_position_to_the_context(model_repository: Path) -> None:
    version = list_versions(model_repository)[MINILM][-1]
    tokenizer = Tokenizer.from_file(str(version.path / "tokenizer.json"))
    prompts = calibration_ids(tokenizer, 512)
    lengths = sorted(p.size for p in prompts)
    assert lengths[0] == 1 and lengths[-1] == 512
    assert len(prompts) == len(calibration.TEXTS) + 2
    assert all(p.dtype == np.int64 for p in prompts)
    assert max(calibration_ids(tokenizer, 64), key=len).size == 64  # cut at a smaller context


def test_the_calibration_set_mixes_scripts_code_and_emoji() -> None:
    texts = calibration.TEXTS
    assert sum(not t.isascii() for t in texts) >= 10
    assert any("def " in t for t in texts) and any("SELECT" in t for t in texts)
    assert any(ord(c) > 0x1F000 for t in texts for c in t)  # emoji
    assert len(set(texts)) == len(texts)
