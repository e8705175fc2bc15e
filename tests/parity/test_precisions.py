"""Each reduced precision a prepared model holds, against `transformers` with its own bound.

`make models` prepares int8 (`lamina prepare --precision int8`). Where int8 passed its gate on the
calibration set, its graph must hold that gate on the parity fixtures too (prompts it was not
measured on), every layer, and keep what fp32 guarantees besides the numbers: the depth gating,
both control modes and padded batches. Where it did not pass, the manifest records what it
measured and a pool asking for int8 serves fp32: both are checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.server.convert.fidelity import cosines
from lamina.server.domain import Precision, TextItem
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.repository.layout import list_versions
from lamina.server.repository.manifest import Manifest
from lamina.server.runtime.batch import Batch
from tests.parity.test_parity import FIXTURE, MODELS

pytestmark = pytest.mark.model


def newest(repository: Path, model: str) -> Manifest:
    manifest = Manifest.read(list_versions(repository)[model][-1].path)
    if Precision.INT8 not in manifest.precisions:
        pytest.fail(f"{model} has no int8 record: run `make models` (it prepares int8)")
    return manifest


def load(repository: Path, model: str, precision: Precision) -> LoadedModel:
    entry = list_versions(repository)[model][-1]
    return LoadedModel.load(
        entry, threads=2, providers=["CPUExecutionProvider"], precision=precision
    )


@pytest.mark.parametrize("model", MODELS)
def test_int8_holds_its_gate_on_the_parity_fixtures_in_every_layer(
    model_repository: Path, model: str
) -> None:
    record = newest(model_repository, model).precisions[Precision.INT8]
    loaded = load(model_repository, model, Precision.INT8)
    if not record.passes_gate(Precision.INT8):
        assert loaded.chosen.precision is Precision.FP32  # served in fp32, said so
        assert loaded.model_version.endswith(f"@{loaded.version}")
        assert min(record.min_cosine) < Precision.INT8.gate and not record.graph
        return
    assert loaded.chosen.precision is Precision.INT8
    assert loaded.model_version.endswith("+int8")
    meta, arrays = FIXTURE[model]
    prompts = [loaded.encoder.encode((TextItem(text),)) for text in meta["prompts"]]
    layers = range(loaded.manifest.num_layers + 1)
    batch = Batch.pad(prompts, [True] * len(prompts), loaded.manifest.pad_token_id)
    states = loaded.session.run(batch, layers)
    for index, prompt in enumerate(prompts):
        reference = arrays[f"hidden_{index}"]
        for layer in layers:
            ours = states[layer][index, : prompt.length]
            lowest = float(cosines(ours, reference[layer]).min())
            assert lowest >= Precision.INT8.gate, f"prompt {index} layer {layer}: {lowest:.4f}"


@pytest.mark.parametrize("model", MODELS)
def test_int8_keeps_depth_gating_and_both_control_modes(model_repository: Path, model: str) -> None:
    if not newest(model_repository, model).precisions[Precision.INT8].passes_gate(Precision.INT8):
        pytest.skip(f"{model}: int8 did not pass its gate; pools serve it in fp32")
    exact = load(model_repository, model, Precision.FP32)
    fast = load(model_repository, model, Precision.INT8)
    prompt = exact.encoder.encode((TextItem("An apple a day keeps the doctor away"),))
    suppressed = prompt.control_factors.copy()
    suppressed[2:4] = 0.1
    controlled = EncodedPrompt(prompt.ids, suppressed)
    for log_additive in (True, False):
        batch = Batch.pad([prompt, controlled], [log_additive] * 2, exact.manifest.pad_token_id)
        want = exact.session.run(batch, [1])[1]
        got = fast.session.run(batch, [1])[1]  # depth 1: the blocks past it are skipped
        changed = got[1] - got[0]
        assert float(np.abs(changed).max()) > 0  # the control still acts on int8
        for row in range(2):
            assert float(cosines(got[row], want[row]).min()) >= Precision.INT8.gate
