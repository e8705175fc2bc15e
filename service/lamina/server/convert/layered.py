"""The skeleton every architecture shares: inputs, embedding, gated blocks, hidden-state outputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from lamina.server.convert.attention import KeyControls
from lamina.server.convert.graph import BOOL, FLOAT, INT64, GraphBuilder
from lamina.server.repository import signature

Embed = Callable[[GraphBuilder], str]
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
) -> onnx.ModelProto:
    """hidden_state_0 = embed(ids); hidden_state_i = block(i - 1, hidden_state_{i-1}).

    `final` (a decoder's last norm) applies to the last hidden state only, as Hugging Face's
    output_hidden_states reports it. Block i runs only when the `depth` input is >= i.
    """
    g = GraphBuilder(name)
    shape: list[str | int] = ["batch", "sequence", hidden_size]
    declare_sequence_inputs(g)

    hidden = embed(g)
    g.output(signature.hidden_state_output(0), hidden, FLOAT, shape)
    controls = KeyControls.build(g, causal=causal)
    for layer in range(1, num_layers + 1):
        wanted = g.op("GreaterOrEqual", [signature.DEPTH, g.const("layer", np.int64(layer))])

        def run(b: GraphBuilder, x: str, index: int = layer - 1) -> str:
            y = block(b, index, x, controls)
            return final(b, y) if final is not None and index == num_layers - 1 else y

        hidden = g.gated(wanted, hidden, run, shape)
        g.output(signature.hidden_state_output(layer), hidden, FLOAT, shape)
    return g.build(producer=f"lamina-convert-{name}")


def declare_sequence_inputs(g: GraphBuilder) -> None:
    """The inputs every graph takes (signature.INPUT_NAMES)."""
    g.input(signature.INPUT_IDS, INT64, ["batch", "sequence"])
    g.input(signature.ATTENTION_MASK, INT64, ["batch", "sequence"])
    g.input(signature.CONTROL_FACTORS, FLOAT, ["batch", "sequence"])
    g.input(signature.CONTROL_LOG_ADDITIVE, BOOL, ["batch"])
    g.input(signature.DEPTH, INT64, [])
