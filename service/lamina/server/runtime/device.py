"""Where a pool runs: its device, threads, hosting labels and precision, and the ONNX Runtime
execution providers that device means."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lamina.server.domain import Precision

# Execution providers in order of preference, each a name or (name, options).
Providers = Sequence[str | tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class PoolSpec:
    name: str
    device: str  # "cpu" or "cuda:<index>"
    threads: int
    hostings: frozenset[str]
    # The graphs it serves (models/precision.py); None: auto, the fastest that passes its gate.
    precision: Precision | None = None
    # The lowest measured cosine to fp32 it serves a reduced precision at; None: each one's gate.
    min_cosine: float | None = None

    @property
    def providers(self) -> Providers:
        """ONNX Runtime execution providers for this device, CPU as the fallback for any op."""
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        kind, _, index = self.device.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise ValueError(f"pool {self.name}: device {self.device!r} is not 'cpu' or 'cuda:<n>'")
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
