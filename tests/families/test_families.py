"""Every supported family, converted from a tiny random checkpoint, against the reference
implementation's hidden states (fixtures by tests/families/make_fixtures.py).

Per family: the tokenizer gives transformers' ids on the whole corpus; every layer matches within
the parity bounds for each prompt alone and inside a right-padded batch; a layer asked for alone
runs only the blocks up to it and gives the same values; AtMan controls act in the graph and a
factor of 1 leaves a row bit-identical; the graph cut into blocks (how OpenVINO runs
it) computes the same, and OpenVINO computes it in bf16 as the same model where this machine has
bf16.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lamina.server.convert.blockwise import split_blocks
from lamina.server.convert.hf_folder import SUPPORTED_ARCHITECTURES
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.domain import Precision
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.repository import signature
from lamina.server.runtime import openvino
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.blockwise import BlockwiseSession, CutGraph
from tests.families.checks import FIXTURES, assert_tokenizes_as_transformers
from tests.parity.bounds import assert_layer_matches
from tests.tiny_models import load_version

NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.json").is_file())
README = Path(__file__).parents[2] / "README.md"


@dataclass(frozen=True)
class Family:
    name: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    model: LoadedModel
    version: Path

    def prompt(self, index: int) -> EncodedPrompt:
        ids = self.arrays[f"ids_{index}"]
        return EncodedPrompt(ids, np.ones(len(ids), np.float32))

    def run(self, prompts: list[EncodedPrompt], layers: range | list[int]) -> dict[int, np.ndarray]:
        batch = Batch.pad(prompts, [True] * len(prompts), self.model.manifest.pad_token_id)
        return self.model.session.run(batch, layers)


@pytest.fixture(scope="module", params=NAMES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Family:
    name: str = request.param
    folder = FIXTURES / name
    version = convert_checkpoint(
        folder / "checkpoint",
        tmp_path_factory.mktemp(name),
        name,
        trained=False,
        progress=lambda _: None,
    )
    with np.load(folder / "reference.npz") as arrays:
        loaded = {key: arrays[key] for key in arrays.files}
    meta = json.loads((folder / "reference.json").read_text())
    return Family(name, meta, loaded, load_version(version), version)


def test_every_family_has_a_fixture() -> None:
    assert "bert" in NAMES
    for name in NAMES:
        architecture = json.loads((FIXTURES / name / "reference.json").read_text())["architecture"]
        assert architecture in SUPPORTED_ARCHITECTURES, name


def test_the_readme_lists_every_supported_architecture() -> None:
    readme = README.read_text()
    missing = [a for a in SUPPORTED_ARCHITECTURES if f"`{a}`" not in readme]
    assert not missing, f"README.md does not name {missing}"


def test_tokenizer_matches_transformers_on_the_corpus(family: Family) -> None:
    assert_tokenizes_as_transformers(family.model, FIXTURES / family.name)


def test_every_layer_of_every_prompt_matches(family: Family) -> None:
    layers = range(family.meta["layers"] + 1)
    for index in range(len(family.meta["prompts"])):
        states = family.run([family.prompt(index)], layers)
        reference = family.arrays[f"hidden_{index}"]
        for layer in layers:
            assert_layer_matches(
                states[layer][0], reference[layer], f"{family.name} prompt {index} layer {layer}"
            )


def test_every_layer_matches_inside_a_padded_batch(family: Family) -> None:
    layers = range(family.meta["layers"] + 1)
    prompts = [family.prompt(i) for i in range(len(family.meta["prompts"]))]
    states = family.run(prompts, layers)
    reference = family.arrays["batch_hidden"]
    mask = family.arrays["batch_mask"].astype(bool)
    for index, prompt in enumerate(prompts):
        assert int(mask[index].sum()) == prompt.length
        for layer in layers:
            assert_layer_matches(
                states[layer][index, : prompt.length],
                reference[layer, index, : prompt.length],
                f"{family.name} batched row {index} layer {layer}",
            )


def test_a_shallow_layer_runs_alone_with_the_same_values(family: Family) -> None:
    prompt = family.prompt(1)
    everything = family.run([prompt], range(family.meta["layers"] + 1))
    shallow = family.run([prompt], [1])
    assert set(shallow) == {1}
    np.testing.assert_array_equal(shallow[1], everything[1])


def test_controls_act_and_a_factor_of_one_changes_nothing(family: Family) -> None:
    last = family.meta["layers"]
    plain = family.prompt(1)
    factors = np.ones(plain.length, np.float32)
    factors[plain.length // 2] = 0.2
    controlled = EncodedPrompt(plain.ids, factors)
    # A controlled row sends the whole batch down the controlled path; the other row's factors
    # of 1 must leave it exactly as it is on the uncontrolled path.
    controlled_batch = family.run([controlled, plain], [last])[last]
    plain_batch = family.run([plain, plain], [last])[last]
    np.testing.assert_array_equal(controlled_batch[1], plain_batch[1])
    assert not np.allclose(controlled_batch[0], plain_batch[0], atol=1e-5), "no control acted"


def test_the_graph_cut_into_blocks_computes_the_same_and_the_same_model_in_bf16(
    family: Family,
) -> None:
    layers = family.meta["layers"]
    pieces = split_blocks(onnx.load(family.version / "model.onnx"))
    serialized = CutGraph(
        [p.SerializeToString() for p in pieces.controlled],
        [p.SerializeToString() for p in pieces.plain],
        pieces.condition.SerializeToString(),
        pieces.whole.SerializeToString(),
    )

    def cpu(data: bytes) -> ort.InferenceSession:
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    cut = BlockwiseSession(
        [cpu(p) for p in serialized.blocks],
        [cpu(p) for p in serialized.plain_blocks],
        cpu(serialized.condition),
    )
    prompts = [family.prompt(i) for i in range(len(family.meta["prompts"]))]
    batch = Batch.pad(prompts, [True] * len(prompts), family.model.manifest.pad_token_id)
    feeds = (
        batch.feeds()
        | {signature.DEPTH: np.array(layers, np.int64)}
        | signature.from_the_start(family.model.manifest.hidden_size)
    )
    names = [signature.hidden_state_output(i) for i in range(layers + 1)]
    whole = family.run(prompts, range(layers + 1))
    for layer, state in enumerate(cut.run(names, feeds)):
        np.testing.assert_allclose(state, whole[layer], rtol=0, atol=2e-5, err_msg=f"{layer}")
    if openvino.bf16_unavailable():
        return  # bf16 is not computed here
    plan = openvino.OnOpenVino(Precision.BF16)
    bf16 = openvino.session(serialized, plan, 1, ort.SessionOptions)
    reference = family.arrays["batch_hidden"]
    for layer, state in enumerate(bf16.run(names, feeds)):
        for row, prompt in enumerate(prompts):
            ours, theirs = state[row, : prompt.length], reference[layer, row, : prompt.length]
            cosine = (ours * theirs).sum(-1) / (
                np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1)
            )
            # Random tiny weights are no calibration set: whether bf16 serves a model is its
            # gate's call when it is prepared. Here, that OpenVINO computes every family's cut
            # graph as the same model (the If nodes it miscomputes gave 0.0 to 0.9 at most
            # positions): bf16's rounding moves single positions of these weights to 0.987.
            assert float(np.median(cosine)) >= 0.99, f"row {row} layer {layer}"
            assert float(cosine.min()) >= 0.95, f"row {row} layer {layer}"
