"""Images in a graph: the image inputs, each image's 12 x 12 cells, and placing cells into the
token sequence at the prompt positions the images take.

A DINOv2 tower at its native 224 x 224 sees 16 x 16 patches; their states are pooled by area
onto the 12 x 12 cells every image occupies in a prompt. That keeps the model exactly as trained
(mean pooling over an image equals the original patch mean), which a 168 x 168 input with
resized position embeddings does not (docs/architecture.md, Images, has the comparison).
"""

from __future__ import annotations

import numpy as np
import onnx

from lamina.server.convert.dinov2 import Dinov2Config, VisionInputs, VisionTower, Weights
from lamina.server.convert.graph import BOOL, FLOAT, INT64, GraphBuilder
from lamina.server.convert.layered import declare_sequence_inputs
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
    i's output for that image's cells. Block i runs only when `depth` >= i."""
    g = GraphBuilder("dinov2")
    declare_sequence_inputs(g)
    tower = VisionTower(config, weights, image_size)
    inputs = declare_image_inputs(g, image_size, tower.side * tower.side)
    shape: list[str | int] = ["batch", "sequence", config.hidden_size]

    def expose(layer: int, state: str) -> None:
        placed = place_cells(g, image_cells(g, tower, state), config.hidden_size)
        g.output(signature.hidden_state_output(layer), placed, FLOAT, shape)

    hidden = tower.embed(g, inputs)
    expose(0, hidden)
    controls = tower.controls(g, inputs)
    for layer in range(1, config.num_layers + 1):
        wanted = g.op("GreaterOrEqual", [signature.DEPTH, g.const("layer", np.int64(layer))])

        def run(b: GraphBuilder, x: str, index: int = layer - 1) -> str:
            return tower.block(b, index, x, controls)

        hidden = g.gated(wanted, hidden, run, tower.shape)
        expose(layer, hidden)
    return g.build(producer="lamina-convert-dinov2")


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
