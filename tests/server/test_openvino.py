"""OpenVinoPiece (runtime/openvino.py): a block compiled by OpenVINO's CPU plugin behind the
surface of an ONNX Runtime session, as BlockwiseSession chains it. Where this machine computes
no bf16 (no AVX512_BF16 or AMX, or no OpenVINO), skipped, saying why; the cut's arithmetic is
checked on every machine by test_blockwise.py, and the whole bf16 pool by
tests/parity/test_precisions.py."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lamina.server.convert.blockwise import split_blocks
from lamina.server.convert.fidelity import cosines
from lamina.server.domain import Precision
from lamina.server.repository import signature
from lamina.server.repository.layout import list_versions
from lamina.server.runtime import openvino
from lamina.server.runtime.blockwise import BLOCK_INPUT
from tests.conftest import MINILM

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(bool(openvino.bf16_unavailable()), reason=openvino.bf16_unavailable()),
]


@pytest.fixture(scope="module")
def cut(model_repository: Path) -> list[onnx.ModelProto]:
    version = list_versions(model_repository)[MINILM][-1]
    pieces = split_blocks(onnx.load(str(version.path / "model.onnx")))
    return [pieces.plain[0], pieces.plain[1], pieces.whole]


def feeds(rows: int, positions: int, seed: int) -> dict[str, np.ndarray]:
    """The inputs of the embedding piece (it reads only the ids)."""
    ids = np.random.default_rng(seed).integers(1000, 20000, (rows, positions))
    return {signature.INPUT_IDS: ids}


def test_a_piece_names_its_inputs_and_outputs_as_the_graph_does(
    cut: list[onnx.ModelProto],
) -> None:
    for model in cut:
        piece = openvino.OpenVinoPiece(model.SerializeToString(), Precision.BF16, 1)
        assert [i.name for i in piece.get_inputs()] == [i.name for i in model.graph.input]
        # The chained graph's states are also the next block's inputs: OpenVINO gives those
        # outputs several names, and the graph's own is the one reported.
        assert [o.name for o in piece.get_outputs()] == [o.name for o in model.graph.output]
        assert piece.get_outputs()[0].shape[-1] == 384  # the width BlockwiseSession reads


def test_a_piece_computes_what_the_cpu_provider_does_and_its_results_stay_its_callers(
    cut: list[onnx.ModelProto],
) -> None:
    embedding, block, _ = (m.SerializeToString() for m in cut)
    piece = openvino.OpenVinoPiece(embedding, Precision.BF16, 1)
    reference = ort.InferenceSession(embedding, providers=["CPUExecutionProvider"])
    first = piece.run(None, feeds(2, 9, 0))[0]
    kept = first.copy()
    second = piece.run(None, feeds(3, 17, 1))[0]  # another shape, other ids
    # A parked batch holds its state across other runs of the same piece: never overwritten.
    np.testing.assert_array_equal(first, kept)
    assert second.shape == (3, 17, 384)
    expected = reference.run(None, feeds(2, 9, 0))[0]
    assert cosines(first, expected).min() > Precision.BF16.gate
    # A block reads the state before it, by name, as BlockwiseSession feeds it.
    after = openvino.OpenVinoPiece(block, Precision.BF16, 1)
    mask = {signature.ATTENTION_MASK: np.ones((2, 9), np.int64), BLOCK_INPUT: first}
    assert {i.name for i in after.get_inputs()} == set(mask)  # a plain block: no controls
    state = after.run([signature.hidden_state_output(1)], mask)
    assert state[0].shape == (2, 9, 384)


def test_runs_from_several_threads_each_get_their_own_answer(
    cut: list[onnx.ModelProto],
) -> None:
    piece = openvino.OpenVinoPiece(cut[0].SerializeToString(), Precision.BF16, 1)
    alone = {seed: piece.run(None, feeds(2, 8 + seed, seed))[0] for seed in range(4)}
    together: dict[int, np.ndarray] = {}

    def run(seed: int) -> None:
        for _ in range(5):
            together[seed] = piece.run(None, feeds(2, 8 + seed, seed))[0]

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, states in alone.items():
        np.testing.assert_array_equal(together[seed], states)


def test_a_precision_openvino_does_not_serve_here_is_refused(
    cut: list[onnx.ModelProto],
) -> None:
    with pytest.raises(ValueError, match="not int8"):
        openvino.OpenVinoPiece(cut[0].SerializeToString(), Precision.INT8, 1)
