"""Images in a graph: the image inputs, each image's 12 x 12 cells, and placing cells into the
token sequence at the prompt positions the images take.

A DINOv2 tower at its native 224 x 224 sees 16 x 16 patches; their states are pooled by area
onto the 12 x 12 cells every image occupies in a prompt. That keeps the model exactly as trained
(mean pooling over an image equals the original patch mean), which a 168 x 168 input with
resized position embeddings does not (docs/architecture.md, Images, has the comparison).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from lamina.server.convert.dinov2 import Dinov2Config, VisionInputs, VisionTower, Weights
from lamina.server.convert.graph import BOOL, FLOAT, INT64, GraphBuilder
from lamina.server.convert.layered import (
    declare_sequence_inputs,
    empty_state,
    first_state,
    maybe_empty,
    runs_block,
    segment_blocks,
    starts_at,
)
from lamina.server.repository import signature

CELLS_PER_SIDE = signature.CELLS_PER_SIDE


def declare_image_inputs(g: GraphBuilder, image_size: int, patches: int) -> VisionInputs:
    g.input(signature.PIXEL_VALUES, FLOAT, ["images", 3, image_size, image_size])
    g.input(signature.IMAGE_KEY_FACTORS, FLOAT, ["images", patches])
    g.input(signature.IMAGE_LOG_ADDITIVE, BOOL, ["images"])
    g.input(signature.IMAGE_SLOTS, INT64, ["batch", "sequence"])
    return VisionInputs(
        signature.PIXEL_VALUES, signature.IMAGE_KEY_FACTORS, signature.IMAGE_LOG_ADDITIVE
    )


def image_cells(g: GraphBuilder, tower: VisionTower, hidden: str) -> str:
    """[images * 144, hidden]: the patch states of each image (class token dropped), pooled onto
    its 12 x 12 cells, images one after another."""
    patches = g.op(
        "Slice",
        [hidden, g.const("one_l", [1]), g.const("end", [2**62]), g.const("axis_1", [1])],
    )
    if tower.side != CELLS_PER_SIDE:
        pooling = grid_pooling(tower.side, CELLS_PER_SIDE)
        patches = g.op("MatMul", [g.const("cell_pooling", pooling), patches])
    return g.op("Reshape", [patches, g.const("shape_cells", [-1, tower.config.hidden_size])])


def place_cells(g: GraphBuilder, cells: str, hidden_size: int) -> str:
    """[batch, sequence, hidden]: cell image_slots[b, s] at each image position, zeros elsewhere.
    A zero row in front makes slot -1 a valid index, so a batch without images needs no branch."""
    table = g.op(
        "Concat", [g.const("zero_row", np.zeros((1, hidden_size), np.float32)), cells], axis=0
    )
    shifted = g.op("Add", [signature.IMAGE_SLOTS, g.const("one_i", np.int64(1))])
    return g.op("Gather", [table, shifted], axis=0)


def is_image_position(g: GraphBuilder) -> str:
    """bool [batch, sequence, 1]."""
    image = g.op("GreaterOrEqual", [signature.IMAGE_SLOTS, g.const("zero_i", np.int64(0))])
    return g.op("Unsqueeze", [image, g.const("axis_last", [-1])])


def build_vision_graph(config: Dinov2Config, weights: Weights, image_size: int) -> onnx.ModelProto:
    """An image encoder served on its own: hidden state i at a prompt's image positions is block
    i's output for that image's cells. Block i runs only when START < i <= DEPTH; the state a
    later segment resumes from is the tower's own, [images, tokens, hidden]."""
    g = GraphBuilder("dinov2")
    declare_sequence_inputs(g, config.hidden_size)
    tower = VisionTower(config, weights, image_size)
    inputs = declare_image_inputs(g, image_size, tower.side * tower.side)
    exposed = maybe_empty(config.hidden_size)  # a layer's image positions; empty if not run

    def placed(b: GraphBuilder, state: str) -> str:
        return place_cells(b, image_cells(b, tower, state), config.hidden_size)

    def expose(layer: int, state: str, ran: str) -> None:
        """Placed only where the segment ran the layer: the others are never read, and the
        placing costs a matrix product per layer."""
        output = signature.hidden_state_output(layer)
        skipped = _given(empty_state(g, config.hidden_size))
        value = g.branch(ran, lambda b: placed(b, state), skipped, exposed, name=output)
        g.expose(value, FLOAT, exposed)

    first = first_state(g, lambda b: tower.embed(b, inputs), tower.shape)
    expose(0, first, starts_at(g, 0))
    controls = tower.controls(g, inputs)
    width = config.hidden_size
    state_shape = maybe_empty(width)  # the tower's state, or empty where a segment skipped it
    states = segment_blocks(
        g,
        first,
        lambda b, index, x: tower.block(b, index, x, controls),
        width,
        [None] * config.num_layers,
    )
    carried = empty_state(g, width)
    for layer, state in enumerate(states, start=1):
        expose(layer, state, runs_block(g, layer))
        # The image positions are not the tower's state: STATE carries block DEPTH's output on
        # past the blocks after it (a copy each; an image encoder's state is small).
        at_depth = g.op("Equal", [signature.DEPTH, g.const("layer", np.int64(layer))])
        carried = g.branch(at_depth, _given(state), _given(carried), state_shape)
    g.output(signature.STATE, carried, FLOAT, state_shape)
    return g.build(producer="lamina-convert-dinov2")


def _given(value: str) -> Callable[[GraphBuilder], str]:
    """A branch that hands on `value` from the outer scope."""
    return lambda b: value


def grid_pooling(side: int, cells: int) -> np.ndarray:
    """[cells^2, side^2]: each cell of a cells x cells grid averages the patches of a side x side
    grid it covers, weighted by covered area; so the mean over cells is the mean over patches."""
    edges = np.arange(side + 1) * (cells / side)  # patch edges in cell units
    weights = np.zeros((cells, side))
    for cell in range(cells):
        weights[cell] = np.clip(
            np.minimum(edges[1:], cell + 1) - np.maximum(edges[:-1], cell), 0, None
        )
    weights /= weights.sum(axis=1, keepdims=True)
    return np.kron(weights, weights).astype(np.float32)
