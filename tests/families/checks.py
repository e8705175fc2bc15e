"""Checks of a converted model against a family fixture (tests/families/fixtures/<name>/): the
same bounds whichever route (folder, GGUF) the model came by."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.domain import TextItem
from lamina.server.errors import InvalidArgument
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.batch import Batch
from tests.parity.bounds import assert_layer_matches
from tests.tiny_models import load_version

FIXTURES = Path(__file__).parent / "fixtures"


def convert(path: Path, tmp_path: Path) -> LoadedModel:
    return load_version(
        convert_checkpoint(path, tmp_path / "repo", "m", trained=False, progress=lambda _: None)
    )


def assert_tokenizes_as_transformers(model: LoadedModel, fixture: Path) -> None:
    meta = json.loads((fixture / "reference.json").read_text())
    for text, expected in zip(meta["tokenizer_corpus"], meta["tokenizer_ids"], strict=True):
        if not text:
            continue  # an empty prompt is refused before it is tokenized
        try:
            ours = model.encoder.encode((TextItem(text),)).ids.tolist()
        except InvalidArgument:  # no token of its own (" " in WordPiece): an empty prompt
            assert not text.strip(), f"{text!r} refused"
            continue
        assert ours == expected, text


def assert_matches_reference(model: LoadedModel, fixture: Path, what: str) -> None:
    """Every layer of every prompt alone, and the long prompt beside a short one in a padded
    batch, within the parity bounds of the family fixture."""
    meta = json.loads((fixture / "reference.json").read_text())
    layers = range(meta["layers"] + 1)
    with np.load(fixture / "reference.npz") as arrays:
        reference = {key: arrays[key] for key in arrays.files}
    prompts = [
        EncodedPrompt(reference[f"ids_{i}"], np.ones(len(reference[f"ids_{i}"]), np.float32))
        for i in range(len(meta["prompts"]))
    ]
    for index, prompt in enumerate(prompts):
        states = run(model, [prompt], layers)
        for layer in layers:
            assert_layer_matches(
                states[layer][0],
                reference[f"hidden_{index}"][layer],
                f"{what} prompt {index} layer {layer}",
            )
    long, short = len(prompts) - 1, 0
    states = run(model, [prompts[long], prompts[short]], layers)
    for row, index in enumerate((long, short)):
        for layer in layers:
            assert_layer_matches(
                states[layer][row, : prompts[index].length],
                reference[f"hidden_{index}"][layer],
                f"{what} batched prompt {index} layer {layer}",
            )


def run(model: LoadedModel, prompts: list[EncodedPrompt], layers: range) -> dict[int, np.ndarray]:
    batch = Batch.pad(prompts, [True] * len(prompts), model.manifest.pad_token_id)
    return model.session.run(batch, layers)
