"""A converted text graph run as one graph per block, for a provider that cannot run its If
nodes (OpenVINO's CPU plugin: docs/precision.md).

The converter gates every block behind an If (repository/signature.py: DEPTH, START), so that a
batch pays only for the blocks it reads and can stop between them. For a provider that
miscomputes those, `lamina prepare` also writes the graph cut into an embedding graph (hidden
state 0 from the inputs) and one graph per block (its output from BLOCK_INPUT, the state before
it, and the inputs its attention controls read), each with and without the AtMan control path,
with no If left, and the graph of the condition that picks a way (convert/blockwise.py).
`BlockwiseSession` chains them: the blocks from START + 1 to DEPTH, the way the condition says,
as the If nodes would. Same signature, the same results as the whole graph up to rounding, the
same depth-proportional cost. A run of every block from the start without controls (most
runs of short requests) takes the plain pieces chained into one graph where the cut has it,
in one call instead of one per block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lamina.server.repository import signature

BLOCK_INPUT = "block_input"  # a block graph's input: the state the block before handed on


@dataclass(frozen=True)
class Port:
    """What HiddenStateSession reads of an input or output: ONNX Runtime's NodeArg, in part."""

    name: str
    shape: list[Any]  # ints and dimension names (None: unnamed), as ONNX Runtime's


class PieceSession(Protocol):
    """An ONNX Runtime InferenceSession, as far as a piece is run."""

    def get_inputs(self) -> Sequence[Any]: ...
    def get_outputs(self) -> Sequence[Any]: ...
    def run(self, output_names: Any, input_feed: Mapping[str, np.ndarray]) -> list[Any]: ...


@dataclass(frozen=True)
class CutGraph:
    """The files of a graph cut into blocks (convert/blockwise.py), read: each block with the
    AtMan control path and without, and the graph of the condition that picks one per batch."""

    blocks: Sequence[bytes]  # embedding first
    plain_blocks: Sequence[bytes]
    condition: bytes
    whole: bytes | None = None  # the plain pieces chained (cuts written before it have none)


class BlockwiseSession:
    """The pieces [embedding, block 1, ..., block N] behind the whole graph's `run(names,
    feeds)`: hidden states START .. DEPTH, each block fed the state before it, every block of a
    run taken the way `condition` (a session of the cut's condition graph) says: `plain` where it
    is true, as the whole graph's If nodes would; `whole` (the plain pieces chained) for a
    plain run of every block from the start."""

    def __init__(
        self,
        pieces: Sequence[PieceSession],
        plain: Sequence[PieceSession] | None = None,
        condition: PieceSession | None = None,
        whole: PieceSession | None = None,
    ):
        self._pieces = list(pieces)
        self._whole = whole
        self._whole_feeds = {i.name for i in whole.get_inputs()} if whole is not None else set()
        self._plain = list(plain) if plain is not None else self._pieces
        if len(self._plain) != len(self._pieces):
            raise ValueError(f"{len(self._plain)} plain pieces for {len(self._pieces)}")
        self._condition = condition
        self._condition_feeds = (
            {i.name for i in condition.get_inputs()} if condition is not None else set()
        )
        self._feeds = [{i.name for i in piece.get_inputs()} for piece in self._pieces]
        self._plain_feeds = [{i.name for i in piece.get_inputs()} for piece in self._plain]
        outputs = [piece.get_outputs()[0] for piece in self._pieces]
        expected = [signature.hidden_state_output(i) for i in range(len(self._pieces))]
        if [o.name for o in outputs] != expected:
            raise ValueError(f"pieces output {[o.name for o in outputs]}, not {expected}")
        self._outputs = [Port(o.name, list(o.shape)) for o in outputs]
        width = outputs[0].shape[-1]
        read = {i.name: i for piece in self._pieces for i in piece.get_inputs()}
        self._inputs = [
            *(Port(i.name, list(i.shape)) for name, i in read.items() if name != BLOCK_INPUT),
            Port(signature.DEPTH, []),
            Port(signature.START, []),
            Port(signature.RESUME_STATE, ["state_rows", "state_positions", width]),
        ]

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        start = int(feeds.get(signature.START, np.int64(0)))
        depth = int(feeds[signature.DEPTH])
        plain = self._condition is None or bool(
            self._condition.run(None, _only(feeds, self._condition_feeds))[0]
        )
        pieces, wanted = (self._plain, self._plain_feeds) if plain else (self._pieces, self._feeds)
        if plain and self._whole is not None and start == 0 and depth >= len(pieces) - 1:
            return list(self._whole.run(list(names), _only(feeds, self._whole_feeds)))
        states: dict[str, np.ndarray] = {}
        state = feeds.get(signature.RESUME_STATE)  # read only when resuming (START > 0)
        first = start + 1 if start > 0 else 0
        for layer in range(first, min(depth, len(pieces) - 1) + 1):
            piece_feeds = _only(feeds, wanted[layer])
            if layer > 0:
                if state is None:
                    raise ValueError(f"resuming at block {layer} needs {signature.RESUME_STATE}")
                piece_feeds[BLOCK_INPUT] = state
            state = pieces[layer].run(None, piece_feeds)[0]
            states[signature.hidden_state_output(layer)] = state
        missing = [n for n in names if n not in states]
        if missing:
            raise ValueError(f"not computed between START {start} and DEPTH {depth}: {missing}")
        return [states[n] for n in names]


def _only(feeds: Mapping[str, np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    """The feeds a session reads (ONNX Runtime refuses any other)."""
    return {k: v for k, v in feeds.items() if k in names}
