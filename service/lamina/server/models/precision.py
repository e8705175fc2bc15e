"""Which graph of a model version a pool serves: its precision, chosen per pool.

A pool asks for fp32, int8 or `auto` (None). What it gets is a graph the version holds whose
measured fidelity passes that precision's gate (repository/manifest.py PrecisionGraph); where the
version has none (an image encoder asked for int8, a version prepared without it), fp32, which is
the reference itself. `auto` picks the fastest precision that passes its gate and that the pool's
device computes natively: fp16 on CUDA, bf16 on a CPU with bf16 instructions (AVX512_BF16 or
AMX), else fp32. int8 passes a looser gate (0.99) and is only served when asked for. An operator
may set a pool's own gate (`--min-cosine`, pools.toml `min_cosine`): a bf16 graph measured below
0.999 (SmolLM2: 0.990 at one position of the calibration set) serves where it accepts that.

bf16 on a CPU runs on OpenVINO's own runtime (runtime/openvino.py; ONNX Runtime's CPU provider
has no bf16 kernels), over the fp32 graph cut into blocks (the record's `blocks`): where OpenVINO
cannot run here, a pool asking for bf16 serves fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lamina.server.domain import Precision
from lamina.server.repository.manifest import Manifest, PrecisionGraph
from lamina.server.runtime.blockwise import CutGraph
from lamina.server.runtime.openvino import OnOpenVino, bf16_unavailable, fp32_blocks

# What a pool asks for: its precision (None: auto) on its device, and the lowest measured
# cosine it accepts (None: each precision's own gate).
Asked = tuple[Precision | None, str, float | None]


@dataclass(frozen=True)
class ChosenGraph:
    precision: Precision
    # What the version records of it (repository/manifest.py PrecisionGraph); for fp32 the
    # converted graph, at 1.0 throughout.
    record: PrecisionGraph

    @property
    def graph(self) -> str:
        """The file in the version folder."""
        return self.record.graph

    @property
    def min_cosine(self) -> tuple[float, ...]:
        """Per hidden state, as measured."""
        return self.record.min_cosine

    @property
    def files(self) -> tuple[str, ...]:
        """The graph files a pool serving this reads."""
        r = self.record
        if r.blocks:
            cut = (*r.blocks, *r.plain_blocks, r.condition, r.whole)
            return tuple(name for name in dict.fromkeys(cut) if name)
        return (r.graph,)

    def cut(self, graphs: Mapping[str, bytes]) -> CutGraph | None:
        """The graph cut into blocks, from its files read (`graphs`), where it runs so."""
        r = self.record
        if not r.blocks:
            return None
        return CutGraph(
            [graphs[f] for f in r.blocks],
            [graphs[f] for f in r.plain_blocks],
            graphs[r.condition],
            graphs[r.whole] if r.whole else None,
        )

    @property
    def openvino(self) -> OnOpenVino | None:
        """How OpenVINO computes this graph; None: the pool's own providers run it."""
        if self.precision is not Precision.BF16:
            return None
        return OnOpenVino(self.precision, fp32_blocks(self.record.kept_fp32))


def choose(
    manifest: Manifest, requested: Precision | None, device: str, min_cosine: float | None = None
) -> ChosenGraph:
    """The graph a pool serves: `requested` (None: auto) where its record is measured at
    `min_cosine` or above (None: the precision's gate) and the device runs it; else fp32."""
    wanted = [requested] if requested is not None else native(device)
    for precision in wanted:
        record = manifest.precisions.get(precision)
        if (
            record is not None
            and record.passes_gate(precision, min_cosine)
            and runnable(precision, record, device)
        ):
            return ChosenGraph(precision, record)
    exact = (1.0,) * (manifest.num_layers + 1)
    return ChosenGraph(Precision.FP32, PrecisionGraph(manifest.graph, exact, calibration=""))


def native(device: str) -> list[Precision]:
    """The reduced precisions `device` computes natively, faster first."""
    if device.startswith("cuda"):
        return [Precision.FP16]
    return [Precision.BF16] if bf16_unavailable() == "" else []


def runnable(precision: Precision, record: PrecisionGraph, device: str) -> bool:
    """Whether a session of `precision` from `record` can run on `device` here: bf16 needs a
    CPU that computes it and the graph cut into blocks (what OpenVINO runs)."""
    if precision is Precision.BF16:
        return bool(record.blocks) and device == "cpu" and bf16_unavailable() == ""
    return True
