"""A converted graph cut into one graph per block (convert/blockwise.py, chained by
runtime/blockwise.py), as OpenVINO runs it, computes what the whole graph computes:
every hidden state, at every depth, resumed from any block, in both control modes, with padding.
Checked here on ONNX Runtime's CPU provider, so that it holds on every machine;
tests/parity/test_precisions.py runs the same cut on OpenVINO in bf16 where the
machine has it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lamina.server.convert.blockwise import split_blocks, write_blocks
from lamina.server.domain import PromptItem, TextControl, TextItem
from lamina.server.models.loaded import LoadedModel
from lamina.server.repository import signature
from lamina.server.repository.layout import list_versions
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.blockwise import BLOCK_INPUT, BlockwiseSession
from tests.conftest import DINOV2, MINILM, SMOLLM2

pytestmark = pytest.mark.model

TEXTS = ("Cut into blocks, the graph says the same.", "Short.", "Amplified words count for more")
PROMPTS: tuple[tuple[PromptItem, ...], ...] = (
    (TextItem(TEXTS[0], (TextControl(2, 5, 0.2),)),),
    (TextItem(TEXTS[1]),),
    (TextItem(TEXTS[2], (TextControl(0, 9, 3.0),)),),
)
PLAIN: tuple[tuple[PromptItem, ...], ...] = tuple((TextItem(text),) for text in TEXTS)


def graph_of(repository: Path, name: str) -> onnx.ModelProto:
    version = list_versions(repository)[name][-1]
    return onnx.load(str(version.path / "model.onnx"))


def cpu(piece: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(piece.SerializeToString(), providers=["CPUExecutionProvider"])


def on_cpu(model: onnx.ModelProto, whole: bool = True) -> BlockwiseSession:
    cut = split_blocks(model)
    return BlockwiseSession(
        [cpu(p) for p in cut.controlled],
        [cpu(p) for p in cut.plain],
        cpu(cut.condition),
        cpu(cut.whole) if whole else None,
    )


class Counted:
    """A piece session that counts its runs."""

    def __init__(self, session: ort.InferenceSession):
        self.session, self.runs = session, 0

    def get_inputs(self) -> Sequence[Any]:
        return self.session.get_inputs()

    def get_outputs(self) -> Sequence[Any]:
        return self.session.get_outputs()

    def run(self, output_names: Any, input_feed: Mapping[str, np.ndarray]) -> list[Any]:
        self.runs += 1
        return list(self.session.run(output_names, dict(input_feed)))


def feeds_of(loaded: LoadedModel, depth: int, plain: bool = False) -> dict[str, np.ndarray]:
    """The prompts with their controls and both modes; `plain`: without controls, all
    log-additive (what the attention's If sends down its plain branch)."""
    prompts = PLAIN if plain else PROMPTS
    encoded = [loaded.encoder.encode(items) for items in prompts]
    modes = [True, True, True] if plain else [True, False, True]
    batch = Batch.pad(encoded, modes, loaded.manifest.pad_token_id)
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
    assert len(pieces.controlled) == len(pieces.plain) == blocks + 1
    assert pieces.plain[0] is pieces.controlled[0]  # the embedding has no If to take
    for piece in [*pieces.controlled, *pieces.plain, pieces.whole]:  # nothing to miscompute
        assert not any(n.op_type == "If" for n in piece.graph.node)
    for piece in pieces.controlled[1:] + pieces.plain[1:]:
        assert BLOCK_INPUT in {i.name for i in piece.graph.input}
    whole = cpu(model)
    names = [signature.hidden_state_output(i) for i in range(blocks + 1)]
    for chained in (True, False):  # with the plain pieces chained into one graph, and without
        cut = on_cpu(model, chained)
        for plain in (False, True):  # each way, as the whole graph's If takes it
            feeds = feeds_of(loaded, blocks, plain)
            (takes_plain,) = cpu(pieces.condition).run(
                None,
                {
                    k: v
                    for k, v in feeds.items()
                    if k in {i.name for i in pieces.condition.graph.input}
                },
            )
            assert bool(takes_plain) is plain
            for layer, (a, b) in enumerate(
                zip(cut.run(names, feeds), whole.run(names, feeds), strict=True)
            ):
                # Not bit for bit: ONNX Runtime fuses the pieces' nodes as it fuses the whole
                # graph's only up to rounding (1e-5 relative at most, seen).
                np.testing.assert_allclose(
                    a, b, rtol=2e-5, atol=2e-5, err_msg=f"chained {chained} plain {plain} {layer}"
                )
    feeds = feeds_of(loaded, blocks)
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


def test_a_plain_run_of_every_block_is_one_call_of_the_chained_graph(
    model_repository: Path, minilm: LoadedModel
) -> None:
    cut = split_blocks(graph_of(model_repository, MINILM))
    blocks = minilm.manifest.num_layers
    plain = [Counted(cpu(p)) for p in cut.plain]
    controlled = [Counted(cpu(p)) for p in cut.controlled]
    whole = Counted(cpu(cut.whole))
    session = BlockwiseSession(controlled, plain, cpu(cut.condition), whole)
    names = [signature.hidden_state_output(i) for i in range(blocks + 1)]

    def runs() -> list[int]:
        return [whole.runs, sum(p.runs for p in plain), sum(p.runs for p in controlled)]

    session.run(names, feeds_of(minilm, blocks, plain=True))
    assert runs() == [1, 0, 0]
    session.run(names[:3], feeds_of(minilm, 2, plain=True))  # shallow: block by block
    assert runs() == [1, 3, 0]
    session.run(names, feeds_of(minilm, blocks))  # with controls: the controlled pieces
    assert runs() == [1, 3, blocks + 1]
    resumed = feeds_of(minilm, blocks, plain=True) | {
        signature.START: np.array(2, np.int64),
        signature.RESUME_STATE: session.run([names[2]], feeds_of(minilm, 2, plain=True))[0],
    }
    session.run(names[3:], resumed)  # resumed: block by block
    assert runs() == [1, 3 + 3 + blocks - 2, blocks + 1]


def test_the_cut_is_written_once_beside_the_graph(model_repository: Path, tmp_path: Path) -> None:
    source = list_versions(model_repository)[MINILM][-1].path / "model.onnx"
    (tmp_path / "model.onnx").symlink_to(source)
    files = write_blocks(tmp_path, "model.onnx")
    assert files.blocks[0] == files.plain_blocks[0] and files.condition == "model.condition.onnx"
    assert files.whole == "model.whole.plain.onnx" and (tmp_path / files.whole).exists()
    assert len(set(files.blocks) | set(files.plain_blocks)) == 2 * len(files.blocks) - 1
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert write_blocks(tmp_path, "model.onnx") == files  # again: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps


def test_a_graph_that_takes_images_is_not_cut(model_repository: Path) -> None:
    with pytest.raises(ValueError, match="takes images"):
        split_blocks(graph_of(model_repository, DINOV2))
