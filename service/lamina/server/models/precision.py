"""Which graph of a model version a pool serves: its precision, chosen per pool.

A pool asks for fp32, int8 or `auto` (None). What it gets is a graph the version holds whose
measured fidelity passes that precision's gate (repository/manifest.py PrecisionGraph); where the
version has none (an image encoder asked for int8, a version prepared without it), fp32, which is
the reference itself. `auto` picks the fastest precision that passes its gate and that the pool's
device computes natively: fp16 on CUDA, bf16 on a CPU with bf16 instructions (AVX512_BF16 or
AMX), else fp32. int8 passes a looser gate (0.99) and is only served when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lamina.server.domain import Precision
from lamina.server.repository.manifest import Manifest

# What a pool asks for: its precision (None: auto) on its device.
Asked = tuple[Precision | None, str]
# Faster first, where the device runs them natively.
AUTO_ORDER = (Precision.FP16, Precision.BF16)


@dataclass(frozen=True)
class ChosenGraph:
    precision: Precision
    graph: str  # the file in the version folder
    min_cosine: tuple[float, ...]  # per hidden state, as measured; 1.0 throughout for fp32


def choose(manifest: Manifest, requested: Precision | None, device: str) -> ChosenGraph:
    wanted = [requested] if requested is not None else native(device)
    for precision in wanted:
        record = manifest.precisions.get(precision)
        if record is not None and record.passes_gate(precision):
            return ChosenGraph(precision, record.graph, record.min_cosine)
    return ChosenGraph(Precision.FP32, manifest.graph, (1.0,) * (manifest.num_layers + 1))


def native(device: str) -> list[Precision]:
    """The reduced precisions `device` computes natively, faster first."""
    if device.startswith("cuda"):
        return [Precision.FP16]
    return [Precision.BF16] if cpu_has_bf16() else []


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        flags = cpu_flags(cpuinfo.read_text())
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction-set flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()
