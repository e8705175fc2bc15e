"""A batch run in segments, with other batches run on the same session in between (what parking
does), returns exactly what one uninterrupted run returns: bit for bit, every layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.server.domain import (
    ImageControl,
    ImageItem,
    Precision,
    PromptItem,
    Rect,
    TextControl,
    TextItem,
    TokenIdsItem,
)
from lamina.server.models.loaded import LoadedModel
from lamina.server.repository.layout import list_versions
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.session import GraphRun, HiddenStateSession
from tests.conftest import MINILM
from tests.server.test_convert_vision import TEXT, VISION, png
from tests.tiny_models import convert_tiny_vlm, load_version

TEXTS: tuple[tuple[PromptItem, ...], ...] = (
    (TextItem("A batch that is parked resumes where it stopped.", (TextControl(2, 5, 0.2),)),),
    (TextItem("Short one."),),
    (TextItem("Amplified words count for more", (TextControl(0, 9, 3.0),)),),
)
IMAGES: tuple[tuple[PromptItem, ...], ...] = (
    (ImageItem(png(1), controls=(ImageControl(Rect(0.1, 0.2, 0.5, 0.5), 0.3),)),),
    (ImageItem(png(2)),),
)
MIXED: tuple[tuple[PromptItem, ...], ...] = (
    (
        TextItem("hello", controls=(TextControl(1, 2, 0.3),)),
        ImageItem(png(4), controls=(ImageControl(Rect(0, 0, 0.5, 1), 0.1),)),
        TokenIdsItem((7, 8, 9)),
    ),
    (TextItem("hel"), ImageItem(png(5))),
    (TextItem("no image at all"),),
)


def batch_of(model: LoadedModel, prompts: tuple[tuple[PromptItem, ...], ...]) -> Batch:
    encoded = [model.encoder.encode(items) for items in prompts]
    # Both control modes in one batch.
    modes = [row % 2 == 0 for row in range(len(encoded))]
    return Batch.pad(encoded, modes, model.manifest.pad_token_id)


def interleaved(session: HiddenStateSession, runs: list[GraphRun]) -> None:
    """One block of each unfinished run in turn, until all are done."""
    while not all(run.finished for run in runs):
        for run in runs:
            if not run.finished:
                session.advance(run, 1e-9)  # shorter than any block: one block a segment


def assert_segments_match_one_run(model: LoadedModel, batch: Batch, other: Batch) -> None:
    session = model.session
    assert session.resumable
    layers = range(model.manifest.num_layers + 1)
    whole = session.run(batch, layers)
    shallow = (1, min(3, model.manifest.num_layers - 1))
    parked, meanwhile = session.begin(batch, layers), session.begin(other, shallow)
    interleaved(session, [parked, meanwhile])
    segments = model.manifest.num_layers  # one block each
    assert parked.done == segments and meanwhile.done == shallow[-1]  # stopped at its depth
    for layer in layers:
        assert np.array_equal(parked.states[layer], whole[layer]), f"layer {layer}"
    alone = session.run(other, shallow)
    for layer in shallow:
        assert np.array_equal(meanwhile.states[layer], alone[layer])


@pytest.mark.parametrize("model_name", ["minilm", "smollm2"])
def test_text_batches_parked_between_blocks_are_bit_identical(
    model_name: str, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    assert_segments_match_one_run(model, batch_of(model, TEXTS), batch_of(model, TEXTS[1:]))


def test_image_batches_parked_between_blocks_are_bit_identical(dinov2: LoadedModel) -> None:
    assert_segments_match_one_run(dinov2, batch_of(dinov2, IMAGES), batch_of(dinov2, IMAGES[1:]))


def test_vision_language_batches_parked_between_blocks_are_bit_identical(
    tmp_path: Path,
) -> None:
    path, _ = convert_tiny_vlm(tmp_path, VISION, TEXT)
    model = load_version(path)
    assert_segments_match_one_run(model, batch_of(model, MIXED), batch_of(model, MIXED[1:]))


def test_a_segment_runs_as_many_blocks_as_fit_its_time(minilm: LoadedModel) -> None:
    session = minilm.session
    batch = batch_of(minilm, TEXTS)
    run = session.begin(batch, [2, 6])
    session.advance(run, 1e-9)
    assert run.done == 1  # at least one block, however short the time
    per_block = session.block_seconds(run.positions)
    assert per_block is not None and per_block > 0
    session.advance(run, per_block * 2.5)
    assert 2 <= run.done <= 4 and 2 in run.states and not run.finished
    assert run.held_bytes >= run.states[2].nbytes + (
        run.state.nbytes if run.state is not None else 0
    )
    session.advance(run, None)  # the rest at once
    assert run.finished and set(run.states) == {2, 6} and run.state is None


def test_a_batch_stops_at_its_deepest_layer(smollm2: LoadedModel) -> None:
    run = smollm2.session.begin(batch_of(smollm2, TEXTS[:1]), [0, 2])
    while not run.finished:
        smollm2.session.advance(run, 1e-9)
    assert run.done == 2 and set(run.states) == {0, 2}


def test_a_batch_of_the_embedding_layer_alone_runs_no_block(minilm: LoadedModel) -> None:
    session = minilm.session
    run = session.begin(batch_of(minilm, TEXTS[:1]), [0])
    session.advance(run, 1e-9)
    assert run.finished and run.done == 0 and set(run.states) == {0}
    whole = session.run(batch_of(minilm, TEXTS[:1]), [0])
    assert np.array_equal(run.states[0], whole[0])


def test_int8_batches_parked_between_blocks_are_bit_identical(model_repository: Path) -> None:
    entry = list_versions(model_repository)[MINILM][-1]
    int8 = LoadedModel.load(
        entry, threads=2, providers=["CPUExecutionProvider"], precision=Precision.INT8
    )
    if int8.chosen.precision is not Precision.INT8:
        pytest.fail("all-minilm-l6-v2 serves no int8 graph: run `make models`")
    assert_segments_match_one_run(int8, batch_of(int8, TEXTS), batch_of(int8, TEXTS[1:]))
