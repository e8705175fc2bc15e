"""What this machine's CPU computes natively, from its instruction-set flags."""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool:
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
