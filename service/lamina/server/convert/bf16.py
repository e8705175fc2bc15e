"""bf16: the version's own fp32 graph, computed in bf16 by OpenVINO's CPU plugin
(runtime/openvino.py), measured against fp32 on the calibration set.

OpenVINO runs the graph cut into one graph per block (convert/blockwise.py writes them beside
the graph: it miscomputes the If nodes of the whole one); OpenVINO converts weights and
activations to bf16 itself when it compiles each, so the record names the fp32 graph and its
blocks, with what bf16 measured on this machine. Where some layer falls below the gate, the block
that loses the most fidelity (between its input's and its output's) is kept in fp32, on ONNX
Runtime's CPU provider, and the set is measured again, for at most ROUNDS rounds, and only while
each round closes a good part of the gap to the gate (a loss that starts at one position and
grows over many blocks does not close by keeping one). Where that does not pass either, the
record is the all-bf16 cut with what it measured: pools at the gate serve fp32, and a pool
whose operator accepts that fidelity (`--min-cosine`, models/precision.py) serves it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from lamina.server.convert import calibration, fidelity
from lamina.server.convert.blockwise import CutFiles, write_blocks
from lamina.server.domain import Precision
from lamina.server.repository.manifest import Manifest, PrecisionGraph
from lamina.server.runtime import openvino
from lamina.server.runtime.blockwise import CutGraph

# At most this many blocks kept in fp32 (one per round of measuring the whole set); past it,
# too little of the model would be bf16 to be worth it.
ROUNDS = 4
# A round that closes less than this share of the gap between the lowest cosine and the gate
# ends the search.
LEAST_GAIN = 0.1


def measure_bf16(
    version: Path, manifest: Manifest, progress: Callable[[str], None]
) -> PrecisionGraph:
    reference = fidelity.Reference.of(version, manifest, "bf16", progress)
    files = write_blocks(version, manifest.graph)
    read = {
        name: (version / name).read_bytes()
        for name in dict.fromkeys(
            (*files.blocks, *files.plain_blocks, files.condition, files.whole)
        )
    }
    cut = CutGraph(
        [read[n] for n in files.blocks],
        [read[n] for n in files.plain_blocks],
        read[files.condition],
        read[files.whole],
    )
    kept: set[int] = set()
    first: fidelity.Fidelity | None = None
    last: fidelity.Fidelity | None = None
    while True:
        plan = openvino.OnOpenVino(Precision.BF16, frozenset(kept))
        # Both ways a pool runs it: block by block (segments, shallow runs, controls) and, for
        # plain runs of every block, the chained graph (only where no block is kept in fp32).
        ways = [cut, dataclasses.replace(cut, whole=None)] if not kept else [cut]
        measured = fidelity.lowest(
            reference.measure(openvino.session(way, plan, 0, fidelity.session_options))
            for way in ways
        )
        progress(
            f"bf16 with {len(kept)} of {manifest.num_layers} blocks in fp32: lowest cosine "
            f"{measured.worst:.4f} (gate {Precision.BF16.gate})"
        )
        first = first or measured
        if measured.passes(Precision.BF16.gate):
            if kept:  # pieces kept in fp32 run one by one: the chained plain graph serves none
                (version / files.whole).unlink(missing_ok=True)
            return _record(manifest, files, measured, frozenset(kept))
        gap = Precision.BF16.gate - (last or measured).worst
        stalled = last is not None and measured.worst - last.worst < LEAST_GAIN * gap
        if stalled or len(kept) >= min(ROUNDS, manifest.num_layers - 1):
            # Below the gate: all bf16, as measured, for a pool whose operator accepts less
            # (--min-cosine); pools at the gate serve fp32.
            return _record(manifest, files, first, frozenset())
        last = measured
        kept.add(_costliest(measured.per_layer, kept))


def _record(
    manifest: Manifest, files: CutFiles, measured: fidelity.Fidelity, kept: frozenset[int]
) -> PrecisionGraph:
    return PrecisionGraph(
        graph=manifest.graph,
        min_cosine=measured.per_layer,
        calibration=calibration.CALIBRATION_ID,
        kept_fp32=openvino.fp32_parts(kept),
        blocks=files.blocks,
        plain_blocks=files.plain_blocks,
        condition=files.condition,
        whole=files.whole if not kept else "",
    )


def _costliest(per_layer: tuple[float, ...], kept: set[int]) -> int:
    """The block, of those not kept yet, whose output falls furthest below its input."""
    blocks = [b for b in range(1, len(per_layer)) if b not in kept]
    return max(blocks, key=lambda b: per_layer[b - 1] - per_layer[b])
