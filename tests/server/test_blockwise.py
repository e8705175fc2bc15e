"""A converted graph cut into one graph per block (convert/blockwise.py, chained by
runtime/blockwise.py), as the OpenVINO provider runs it, computes what the whole graph computes:
every hidden state, at every depth, resumed from any block, in both control modes, with padding.
Checked here on ONNX Runtime's CPU provider, so that it holds on every machine;
tests/parity/test_precisions.py runs the same cut on the OpenVINO provider in bf16 where the
machine has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lamina.server.convert.blockwise import split_blocks
from lamina.server.domain import PromptItem, TextControl, TextItem
from lamina.server.models.loaded import LoadedModel
from lamina.server.repository import signature
from lamina.server.repository.layout import list_versions
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.blockwise import BLOCK_INPUT, BlockwiseSession
from tests.conftest import DINOV2, MINILM, SMOLLM2

pytestmark = pytest.mark.model

PROMPTS: tuple[tuple[PromptItem, ...], ...] = (
    (TextItem("Cut into blocks, the graph says the same.", (TextControl(2, 5, 0.2),)),),
    (TextItem("Short."),),
    (TextItem("Amplified words count for more", (TextControl(0, 9, 3.0),)),),
)


def graph_of(repository: Path, name: str) -> onnx.ModelProto:
    version = list_versions(repository)[name][-1]
    return onnx.load(str(version.path / "model.onnx"))


def on_cpu(model: onnx.ModelProto) -> BlockwiseSession:
    pieces = [
        ort.InferenceSession(piece.SerializeToString(), providers=["CPUExecutionProvider"])
        for piece in split_blocks(model)
    ]
    return BlockwiseSession(pieces)


def feeds_of(loaded: LoadedModel, depth: int) -> dict[str, np.ndarray]:
    encoded = [loaded.encoder.encode(items) for items in PROMPTS]
    batch = Batch.pad(encoded, [True, False, True], loaded.manifest.pad_token_id)
    return (
        batch.feeds()
        | {signature.DEPTH: np.array(depth, np.int64)}
        | signature.from_the_start(loaded.manifest.hidden_size)
    )


@pytest.mark.parametrize("name", [MINILM, SMOLLM2])
def test_the_blocks_chained_compute_what_the_whole_graph_does(
    model_repository: Path, name: str, request: pytest.FixtureRequest
) -> None:
    loaded: LoadedModel = request.getfixturevalue("minilm" if name == MINILM else "smollm2")
    model = graph_of(model_repository, name)
    blocks = loaded.manifest.num_layers
    pieces = split_blocks(model)
    assert len(pieces) == blocks + 1
    for piece in pieces:  # nothing left for a provider to miscompute
        assert not any(n.op_type == "If" for n in piece.graph.node)
    assert all(BLOCK_INPUT in {i.name for i in p.graph.input} for p in pieces[1:])
    whole = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    cut = on_cpu(model)
    names = [signature.hidden_state_output(i) for i in range(blocks + 1)]
    feeds = feeds_of(loaded, blocks)
    pairs = zip(cut.run(names, feeds), whole.run(names, feeds), strict=True)
    for layer, (a, b) in enumerate(pairs):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5, err_msg=f"layer {layer}")
    # A shallow run computes only up to its depth; one resumed after block 2 reads RESUME_STATE.
    shallow = cut.run(names[:3], feeds_of(loaded, 2))
    with pytest.raises(ValueError, match="not computed"):
        cut.run([names[3]], feeds_of(loaded, 2))
    resumed = feeds | {
        signature.START: np.array(2, np.int64),
        signature.RESUME_STATE: shallow[2],
    }
    rest = cut.run(names[3:], resumed)
    np.testing.assert_array_equal(rest[-1], cut.run(names[-1:], feeds)[0])


def test_a_graph_that_takes_images_is_not_cut(model_repository: Path) -> None:
    with pytest.raises(ValueError, match="takes images"):
        split_blocks(graph_of(model_repository, DINOV2))
