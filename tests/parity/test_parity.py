"""Every hidden state of the converted model against Hugging Face `transformers`.

The references are committed fixtures made by tests/parity/make_fixtures.py from the same pinned
weights. Bounds (issue 2): cosine >= 0.9999 per position and max abs error <= 1e-4 x the layer's
scale (its largest absolute reference value).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from lamina.server.domain import Pooling, TextItem
from lamina.server.models.loaded import LoadedModel
from lamina.server.runtime.batch import Batch

FIXTURES = Path(__file__).parent / "fixtures"


def _fixtures(model: str) -> tuple[list[str], dict[str, np.ndarray]]:
    meta = json.loads((FIXTURES / f"{model}.json").read_text())
    with np.load(FIXTURES / f"{model}.npz") as arrays:
        return meta["prompts"], {name: arrays[name] for name in arrays.files}


PROMPTS, ARRAYS = _fixtures("all-minilm-l6-v2")


def assert_layer_matches(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert ours.shape == reference.shape, what
    scale = float(np.abs(reference).max())
    error = float(np.abs(ours - reference).max())
    assert error <= 1e-4 * scale, f"{what}: max abs error {error:.2e} > 1e-4 x scale {scale:.3f}"
    cosine = np.sum(ours * reference, axis=-1) / (
        np.linalg.norm(ours, axis=-1) * np.linalg.norm(reference, axis=-1)
    )
    assert float(cosine.min()) >= 0.9999, f"{what}: cosine {cosine.min():.6f}"


def test_fixtures_cover_non_ascii_and_every_layer() -> None:
    assert any(not prompt.isascii() for prompt in PROMPTS)
    assert ARRAYS["hidden_0"].shape[0] == 7  # embedding output + 6 blocks


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_tokenization_matches_transformers(minilm: LoadedModel, index: int) -> None:
    encoded = minilm.prompts.encode((TextItem(PROMPTS[index]),))
    assert encoded.ids.tolist() == ARRAYS[f"ids_{index}"].tolist()


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_every_hidden_state_matches_transformers(minilm: LoadedModel, index: int) -> None:
    ids = ARRAYS[f"ids_{index}"]
    reference = ARRAYS[f"hidden_{index}"]
    prompt = minilm.prompts.encode((TextItem(PROMPTS[index]),))
    states = minilm.session.run(Batch.pad([prompt], [True], 0), range(7))
    for layer in range(reference.shape[0]):
        assert_layer_matches(
            states[layer][0, : len(ids)], reference[layer], f"prompt {index} layer {layer}"
        )


def test_hidden_states_match_transformers_inside_a_padded_batch(minilm: LoadedModel) -> None:
    prompts = [minilm.prompts.encode((TextItem(text),)) for text in PROMPTS]
    states = minilm.session.run(Batch.pad(prompts, [True] * len(prompts), 0), range(7))
    for index, prompt in enumerate(prompts):
        reference = ARRAYS[f"hidden_{index}"]
        for layer in range(reference.shape[0]):
            assert_layer_matches(
                states[layer][index, : prompt.length], reference[layer], f"batched {index}/{layer}"
            )


def test_served_pooling_matches_pooled_reference(minilm: LoadedModel) -> None:
    """The whole path (prompt, batch, pooling) against pooling the transformers states."""
    from lamina.server.scheduling.inference import run_batch
    from lamina.server.scheduling.job import Job

    loop = asyncio.new_event_loop()
    try:
        prompt = minilm.prompts.encode((TextItem(PROMPTS[2]),))
        job = Job(
            prompt,
            (0, 3, 6),
            (Pooling.MEAN, Pooling.LAST_TOKEN),
            False,
            True,
            loop.create_future(),
            0.0,
        )
        result = run_batch(minilm, [job])[0]
    finally:
        loop.close()
    reference = ARRAYS["hidden_2"]
    for layer in (0, 3, 6):
        np.testing.assert_allclose(
            result[layer][Pooling.MEAN], reference[layer].mean(axis=0), atol=1e-4
        )
        np.testing.assert_allclose(
            result[layer][Pooling.LAST_TOKEN], reference[layer][-1], atol=1e-4
        )
