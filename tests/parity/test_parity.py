"""Every hidden state of the converted models against Hugging Face `transformers`.

The references are committed fixtures made by tests/parity/make_fixtures.py from the same pinned
weights (the SmolLM2 GGUF dequantized by transformers itself). Bounds (issue 2): cosine >= 0.9999
per position and max abs error <= 1e-4 x the layer's scale (its largest absolute reference value).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lamina.server.convert.vision import grid_pooling
from lamina.server.domain import Pooling, TextItem
from lamina.server.images import PreparedImage
from lamina.server.models.inference import run_batch
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.batch import Batch
from tests.jobs import make_job
from tests.parity.bounds import assert_layer_matches

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ("all-minilm-l6-v2", "smollm2-135m-instruct")


def load_fixture(model: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = json.loads((FIXTURES / f"{model}.json").read_text())
    with np.load(FIXTURES / f"{model}.npz") as arrays:
        return meta, {name: arrays[name] for name in arrays.files}


FIXTURE = {model: load_fixture(model) for model in MODELS}
CASES = [(model, i) for model in MODELS for i in range(len(FIXTURE[model][0]["prompts"]))]


@pytest.fixture
def model(request: pytest.FixtureRequest) -> LoadedModel:
    fixture = {"all-minilm-l6-v2": "minilm", "smollm2-135m-instruct": "smollm2"}[request.param]
    loaded: LoadedModel = request.getfixturevalue(fixture)
    return loaded


def test_fixtures_cover_non_ascii_and_every_layer() -> None:
    for model, blocks in zip(MODELS, (6, 30), strict=True):
        meta, arrays = FIXTURE[model]
        assert any(not prompt.isascii() for prompt in meta["prompts"])
        assert arrays["hidden_0"].shape[0] == blocks + 1


@pytest.mark.parametrize(("model", "index"), CASES, indirect=["model"])
def test_tokenization_matches_transformers(model: LoadedModel, index: int) -> None:
    meta, arrays = FIXTURE[model.name]
    encoded = model.encoder.encode((TextItem(meta["prompts"][index]),))
    assert encoded.ids.tolist() == arrays[f"ids_{index}"].tolist()


@pytest.mark.parametrize(("model", "index"), CASES, indirect=["model"])
def test_every_hidden_state_matches_transformers(model: LoadedModel, index: int) -> None:
    meta, arrays = FIXTURE[model.name]
    reference = arrays[f"hidden_{index}"]
    prompt = model.encoder.encode((TextItem(meta["prompts"][index]),))
    layers = range(reference.shape[0])
    states = model.session.run(Batch.pad([prompt], [True], model.manifest.pad_token_id), layers)
    for layer in layers:
        assert_layer_matches(states[layer][0], reference[layer], f"prompt {index} layer {layer}")


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_hidden_states_match_transformers_inside_a_padded_batch(model: LoadedModel) -> None:
    meta, arrays = FIXTURE[model.name]
    prompts = [model.encoder.encode((TextItem(text),)) for text in meta["prompts"]]
    batch = Batch.pad(prompts, [True] * len(prompts), model.manifest.pad_token_id)
    layers = range(model.manifest.num_layers + 1)
    states = model.session.run(batch, layers)
    for index, prompt in enumerate(prompts):
        reference = arrays[f"hidden_{index}"]
        for layer in layers:
            ours = states[layer][index, : prompt.length]
            assert_layer_matches(ours, reference[layer], f"batched {index}/{layer}")


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_served_pooling_matches_pooled_reference(model: LoadedModel) -> None:
    """The whole path (prompt, batch, depth, pooling) against pooling the transformers states."""
    meta, arrays = FIXTURE[model.name]
    last = model.manifest.num_layers
    middle = last // 2
    loop = asyncio.new_event_loop()
    try:
        prompt = model.encoder.encode((TextItem(meta["prompts"][2]),))
        poolings = (Pooling.MEAN, Pooling.LAST_TOKEN)
        job = make_job(loop, prompt=prompt, layers=(0, middle, last), pooling=poolings)
        result = run_batch(model, [job])[0]
    finally:
        loop.close()
    reference = arrays["hidden_2"]
    for layer in (0, middle, last):
        scale = float(np.abs(reference[layer]).max())
        mean, last_token = reference[layer].mean(axis=0), reference[layer][-1]
        np.testing.assert_allclose(result[layer][Pooling.MEAN], mean, atol=1e-4 * scale)
        np.testing.assert_allclose(result[layer][Pooling.LAST_TOKEN], last_token, atol=1e-4 * scale)


def test_smollm2_tokenizer_matches_transformers_gguf_tokenizer(smollm2: LoadedModel) -> None:
    meta, _ = FIXTURE["smollm2-135m-instruct"]
    for text, ids, decoded in zip(
        meta["tokenizer_corpus"], meta["tokenizer_ids"], meta["tokens_decoded"], strict=True
    ):
        encoded = smollm2.encoder.tokenizer.encode(text)
        assert encoded.ids == ids, repr(text)
        prompt = EncodedPrompt(np.asarray(ids), np.ones(len(ids), np.float32))
        assert list(smollm2.encoder.token_strings(prompt)) == decoded, repr(text)


def test_dinov2_small_matches_transformers_in_every_layer(dinov2: LoadedModel) -> None:
    """transformers' Dinov2Model on the same weights and pixels: every hidden state's patch mean
    (which the cells keep exactly), and all 256 patches of blocks 6 and 12 pooled onto cells."""
    _, arrays = load_fixture("dinov2-small")
    pixels = arrays["pixels"]
    images = tuple(
        PreparedImage(p, np.ones(144, np.float32), np.ones(256, np.float32)) for p in pixels
    )
    prompt = EncodedPrompt(
        ids=np.zeros(144 * len(images), np.int64),
        control_factors=np.ones(144 * len(images), np.float32),
        images=images,
        image_cells=np.arange(144 * len(images)),
    )
    states = dinov2.session.run(Batch.pad([prompt], [True], 0), range(13))
    pooling = grid_pooling(16, 12)
    for layer in range(13):
        cells = states[layer][0].reshape(len(images), 144, -1)
        assert_layer_matches(cells.mean(axis=1), arrays["patch_mean"][layer], f"mean {layer}")
        if layer in (6, 12):
            expected = np.stack([pooling @ p for p in arrays[f"patches_layer_{layer}"]])
            assert_layer_matches(cells, expected, f"cells {layer}")
