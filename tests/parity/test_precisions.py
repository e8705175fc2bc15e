"""Each reduced precision a prepared model holds, against `transformers` with its own bound.

`make models` prepares int8 (`lamina prepare --precision int8`) and, where this machine computes
bf16 (a CPU with AMX or AVX512_BF16, through OpenVINO), bf16. Where one passed
its gate on the calibration set, it must hold that gate on the parity fixtures too (prompts it
was not measured on), every layer, and keep what fp32 guarantees besides the numbers: the depth
gating, both control modes, padded batches and segments that resume bit-identically. Where it did
not pass, the manifest records what it measured and a pool asking for it serves fp32: both are
checked.
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
from lamina.server.repository.manifest import Manifest, PrecisionGraph
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.openvino import bf16_unavailable
from tests.parity.test_parity import FIXTURE, MODELS

pytestmark = pytest.mark.model

PRECISIONS = [Precision.INT8, Precision.BF16]


def prepared(repository: Path, model: str, precision: Precision) -> PrecisionGraph:
    """The version's record of `precision`; skips bf16 where this machine computes none."""
    if precision is Precision.BF16 and bf16_unavailable():
        pytest.skip(f"bf16 is not computed here: {bf16_unavailable()}")
    manifest = Manifest.read(list_versions(repository)[model][-1].path)
    if precision not in manifest.precisions:
        pytest.fail(f"{model} has no {precision} record: run `make models` (it prepares it)")
    return manifest.precisions[precision]


def load(
    repository: Path, model: str, precision: Precision, min_cosine: float | None = None
) -> LoadedModel:
    entry = list_versions(repository)[model][-1]
    return LoadedModel.load(
        entry,
        threads=2,
        providers=["CPUExecutionProvider"],
        precision=precision,
        min_cosine=min_cosine,
    )


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_a_precision_holds_its_gate_on_the_parity_fixtures_in_every_layer(
    model_repository: Path, model: str, precision: Precision
) -> None:
    record = prepared(model_repository, model, precision)
    loaded = load(model_repository, model, precision)
    gate = precision.gate
    if not record.passes_gate(precision):
        assert loaded.chosen.precision is Precision.FP32  # served in fp32, said so
        assert loaded.model_version.endswith(f"@{loaded.version}")
        assert min(record.min_cosine) < gate
        if not record.graph:  # int8 below its gate keeps no graph
            return
        # bf16 keeps its graph below the gate: a pool that accepts what it measured serves it,
        # held here to that figure, less the margin prompts it was not measured on may need.
        gate = min(record.min_cosine) - 0.005
        loaded = load(model_repository, model, precision, min(record.min_cosine))
    assert loaded.chosen.precision is precision
    assert loaded.model_version.endswith(f"+{precision}")
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
            assert lowest >= gate, f"prompt {index} layer {layer}: {lowest:.4f}"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_a_precision_keeps_depth_gating_both_control_modes_and_resuming(
    model_repository: Path, model: str, precision: Precision
) -> None:
    if not prepared(model_repository, model, precision).passes_gate(precision):
        pytest.skip(f"{model}: {precision} did not pass its gate; pools serve it in fp32")
    exact = load(model_repository, model, Precision.FP32)
    fast = load(model_repository, model, precision)
    prompt = exact.encoder.encode((TextItem("An apple a day keeps the doctor away"),))
    suppressed = prompt.control_factors.copy()
    suppressed[2:4] = 0.1
    controlled = EncodedPrompt(prompt.ids, suppressed)
    for log_additive in (True, False):
        batch = Batch.pad([prompt, controlled], [log_additive] * 2, exact.manifest.pad_token_id)
        want = exact.session.run(batch, [1])[1]
        got = fast.session.run(batch, [1])[1]  # depth 1: the blocks past it are skipped
        changed = got[1] - got[0]
        assert float(np.abs(changed).max()) > 0  # the control still acts
        for row in range(2):
            assert float(cosines(got[row], want[row]).min()) >= precision.gate
    # A batch run one block per segment, resuming each time, equals one uninterrupted run.
    batch = Batch.pad([prompt, controlled], [True, False], exact.manifest.pad_token_id)
    layers = range(fast.manifest.num_layers + 1)
    whole = fast.session.run(batch, layers)
    run = fast.session.begin(batch, layers)
    while not run.finished:
        fast.session.advance(run, seconds=0.0)
    assert run.done == fast.manifest.num_layers
    for layer in layers:
        assert np.array_equal(run.states[layer], whole[layer]), f"layer {layer}"
