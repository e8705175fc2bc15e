"""The input/output signature shared by every graph the converter writes.

The runtime relies on these names only, never on the architecture behind them. Attention-control
inputs are part of every graph from the start, so a request with AtMan controls and a plain one
share a batch and a model never needs a second graph format.
"""

from __future__ import annotations

import numpy as np

INPUT_IDS = "input_ids"  # int64 [batch, sequence]
ATTENTION_MASK = "attention_mask"  # int64 [batch, sequence]: 1 = prompt position, 0 = padding
# float [batch, sequence]: the AtMan factor applied to attention *towards* each key position
# (1 = unchanged, 0 = masked in log-additive mode).
CONTROL_FACTORS = "control_factors"
# bool [batch]: true = s + ln f, false = (s - min_j s) * f (docs/api.md, AtMan).
CONTROL_LOG_ADDITIVE = "control_log_additive"

# int64 scalar: the deepest hidden state the caller reads. Blocks past it are skipped (If nodes),
# so a batch costs as much as its deepest request, not the whole model.
DEPTH = "depth"

INPUT_NAMES = (INPUT_IDS, ATTENTION_MASK, CONTROL_FACTORS, CONTROL_LOG_ADDITIVE, DEPTH)

# Resuming: a batch can run as several segments of blocks, so that its pool can run more urgent
# work in between (scheduling/pool.py). int64 scalar START: blocks 1..START are skipped and block
# START + 1 reads RESUME_STATE, the STATE output of the segment before (the state the blocks
# carry: [batch, sequence, hidden] for text, [images, tokens, hidden] for an image encoder). With
# START 0 the graph embeds its inputs as ever and RESUME_STATE is not read (feed it empty).
# Graphs converted before these existed lack them and run whole.
START = "start"
RESUME_STATE = "resume_state"
STATE = "state"  # output: the state after block DEPTH (text graphs: hidden_state_DEPTH itself)


def from_the_start(state_width: int) -> dict[str, np.ndarray]:
    """START and RESUME_STATE of a run that begins by embedding: a whole run, or a batch's first
    segment."""
    return {
        START: np.array(0, dtype=np.int64),
        RESUME_STATE: np.zeros((0, 0, state_width), np.float32),
    }


def hidden_state_output(index: int) -> str:
    """Output name of hidden state `index` (0 = embedding output, i = output of block i)."""
    return f"hidden_state_{index}"


# Graphs of models with image support take these too (their manifest has an `image` section).
PIXEL_VALUES = "pixel_values"  # float [images, 3, size, size], normalised
# float [images, patches]: the AtMan factor towards each patch key of the vision encoder.
IMAGE_KEY_FACTORS = "image_key_factors"
IMAGE_LOG_ADDITIVE = "image_log_additive"  # bool [images]: the mode of each image's request
# int64 [batch, sequence]: -1 at token and padding positions; at image positions the index into
# the batch's image cells, image * CELLS_PER_IMAGE + row-major cell of the 12 x 12 grid.
IMAGE_SLOTS = "image_slots"
CELLS_PER_SIDE = 12  # every image takes 12 x 12 prompt positions (docs/api.md)
CELLS_PER_IMAGE = CELLS_PER_SIDE * CELLS_PER_SIDE
