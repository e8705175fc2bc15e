"""bf16: the version's own fp32 graph, computed in bf16 by the OpenVINO execution provider
(runtime/openvino.py), measured against fp32 on the calibration set.

The provider runs the graph cut into one graph per block (convert/blockwise.py writes them beside
the graph: it miscomputes the If nodes of the whole one); OpenVINO converts weights and
activations to bf16 itself when it compiles each, so the record names the fp32 graph and its
blocks, with what bf16 measured on this machine. Where some layer falls below the gate, the block
that loses the most fidelity (between its input's and its output's) is kept in fp32, on ONNX
Runtime's CPU provider, and the set is measured again, for at most ROUNDS rounds, and only while
each round closes a good part of the gap to the gate (a loss that starts at one position and
grows over many blocks does not close by keeping one). Where that does not pass either, the
record keeps what all-bf16 measured, names no graph, and pools asking for bf16 (or auto) serve
fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lamina.server.convert import calibration, fidelity
from lamina.server.convert.blockwise import write_blocks
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
        for name in dict.fromkeys((*files.blocks, *files.plain_blocks, files.condition))
    }
    cut = CutGraph(
        [read[n] for n in files.blocks],
        [read[n] for n in files.plain_blocks],
        read[files.condition],
    )
    kept: set[int] = set()
    first: fidelity.Fidelity | None = None
    last: fidelity.Fidelity | None = None
    while True:
        plan = openvino.OnOpenVino(Precision.BF16, frozenset(kept))
        measured = reference.measure(openvino.session(cut, plan, 0, fidelity.session_options))
        progress(
            f"bf16 with {len(kept)} of {manifest.num_layers} blocks in fp32: lowest cosine "
            f"{measured.worst:.4f} (gate {Precision.BF16.gate})"
        )
        first = first or measured
        if measured.passes(Precision.BF16.gate):
            return PrecisionGraph(
                graph=manifest.graph,
                min_cosine=measured.per_layer,
                calibration=calibration.CALIBRATION_ID,
                kept_fp32=openvino.fp32_parts(kept),
                blocks=files.blocks,
                plain_blocks=files.plain_blocks,
                condition=files.condition,
            )
        gap = Precision.BF16.gate - (last or measured).worst
        stalled = last is not None and measured.worst - last.worst < LEAST_GAIN * gap
        if stalled or len(kept) >= min(ROUNDS, manifest.num_layers - 1):
            for name in read:  # nothing serves from them
                (version / name).unlink(missing_ok=True)
            return PrecisionGraph("", first.per_layer, calibration.CALIBRATION_ID)
        last = measured
        kept.add(_costliest(measured.per_layer, kept))


def _costliest(per_layer: tuple[float, ...], kept: set[int]) -> int:
    """The block, of those not kept yet, whose output falls furthest below its input."""
    blocks = [b for b in range(1, len(per_layer)) if b not in kept]
    return max(blocks, key=lambda b: per_layer[b - 1] - per_layer[b])
