"""The skeleton every architecture shares: inputs, embedding, gated blocks, hidden-state outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from lamina.server.convert.attention import KeyControls
from lamina.server.convert.graph import BOOL, FLOAT, INT64, GraphBuilder
from lamina.server.repository import signature

Embed = Callable[[GraphBuilder], str]
Prepare = Callable[[GraphBuilder], None]
Block = Callable[[GraphBuilder, int, str, KeyControls], str]  # (builder, block index, x, controls)
Final = Callable[[GraphBuilder, str], str]


def layered_graph(
    name: str,
    *,
    num_layers: int,
    hidden_size: int,
    causal: bool,
    embed: Embed,
    block: Block,
    final: Final | None = None,
    prepare: Prepare | None = None,
) -> onnx.ModelProto:
    """hidden_state_0 = embed(ids); hidden_state_i = block(i - 1, hidden_state_{i-1}).

    `final` (a decoder's last norm) applies to the last hidden state only, as Hugging Face's
    output_hidden_states reports it. A run is one segment of a batch (signature.py): it runs the
    blocks i with START < i <= DEPTH, and the state the next segment resumes from is
    hidden_state_DEPTH itself. `embed` runs on the first segment only; `prepare` builds what
    every segment's blocks read in the top graph (rotary tables).
    """
    g = GraphBuilder(name)
    shape: list[str | int] = ["batch", "sequence", hidden_size]
    declare_sequence_inputs(g, hidden_size)
    if prepare is not None:
        prepare(g)

    first = first_state(g, embed, shape, name=signature.hidden_state_output(0))
    g.expose(first, FLOAT, shape)
    controls = KeyControls.build(g, causal=causal)

    def run(b: GraphBuilder, index: int, x: str) -> str:
        y = block(b, index, x, controls)
        return final(b, y) if final is not None and index == num_layers - 1 else y

    names = [signature.hidden_state_output(layer) for layer in range(1, num_layers + 1)]
    for output in segment_blocks(g, first, run, hidden_size, names):
        g.expose(output, FLOAT, maybe_empty(hidden_size))
    return g.build(producer=f"lamina-convert-{name}")


def declare_sequence_inputs(g: GraphBuilder, state_width: int) -> None:
    """The inputs every graph takes (signature.INPUT_NAMES, START and RESUME_STATE)."""
    g.input(signature.INPUT_IDS, INT64, ["batch", "sequence"])
    g.input(signature.ATTENTION_MASK, INT64, ["batch", "sequence"])
    g.input(signature.CONTROL_FACTORS, FLOAT, ["batch", "sequence"])
    g.input(signature.CONTROL_LOG_ADDITIVE, BOOL, ["batch"])
    g.input(signature.DEPTH, INT64, [])
    g.input(signature.START, INT64, [])
    # Its own dimension names: fed empty on a first segment, whatever the batch.
    g.input(signature.RESUME_STATE, FLOAT, ["state_rows", "state_positions", state_width])


def first_state(
    g: GraphBuilder, embed: Embed, shape: list[str | int], name: str | None = None
) -> str:
    """The state block START + 1 reads: `embed`'s on a batch's first segment, else the state the
    segment before handed over."""
    return g.branch(starts_at(g, 0), embed, lambda b: signature.RESUME_STATE, shape, name)


def segment_blocks(
    g: GraphBuilder,
    first: str,
    block: Callable[[GraphBuilder, int, str], str],
    width: int,
    names: Sequence[str | None],
) -> list[str]:
    """The output of each block (`block(builder, index, x)`, one per name), in an If that runs
    it only when START < i <= DEPTH. A skipped block outputs a [1, 1, width] zero constant
    rather than passing its input on: ONNX Runtime copies what an If passes through, and a
    segment late in a deep model would pay a copy of the state per block before it. So the block
    after START reads `first`, every other one its predecessor's output."""
    shape = maybe_empty(width)
    outputs: list[str] = []
    for index, name in enumerate(names):
        layer = index + 1
        previous = outputs[-1] if outputs else first
        resumes_here = starts_at(g, index) if layer > 1 else None

        def run(
            b: GraphBuilder,
            index: int = index,
            previous: str = previous,
            resumes_here: str | None = resumes_here,
        ) -> str:
            x = previous
            if resumes_here is not None:
                x = b.branch(resumes_here, lambda _: first, lambda _: previous, shape)
            return block(b, index, x)

        outputs.append(
            g.branch(runs_block(g, layer), run, lambda b: empty_state(b, width), shape, name)
        )
    return outputs


def empty_state(g: GraphBuilder, width: int) -> str:
    """A [1, 1, width] zero constant: what a segment leaves where it ran nothing. Not [0, 0,
    width]: OpenVINO's ONNX frontend loses a zero-size value that an If branch returns
    ("Non-existent connection in else-branch") and refuses the whole graph."""
    return g.const("empty_state", np.zeros((1, 1, width), np.float32))


def maybe_empty(width: int) -> list[str | int | None]:
    """The shape of a value a segment may leave empty: no named dimensions, which ONNX Runtime
    would otherwise hold to one size across the run (and reuse buffers by)."""
    return [None, None, width]


def starts_at(g: GraphBuilder, blocks_done: int) -> str:
    """bool: this segment resumes after `blocks_done` blocks (START == blocks_done)."""
    return g.op("Equal", [signature.START, g.const("blocks_done", np.int64(blocks_done))])


def runs_block(g: GraphBuilder, layer: int) -> str:
    """bool: block `layer` runs in this segment, START < layer <= DEPTH."""
    index = g.const("layer", np.int64(layer))
    after_start = g.op("Less", [signature.START, index])
    return g.op("And", [after_start, g.op("GreaterOrEqual", [signature.DEPTH, index])])
