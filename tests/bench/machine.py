"""What machine a benchmark ran on, as its report states it: the CPU model and the instruction
sets that decide which precisions and kernels are fast on it (AVX2, AVX-512, its BF16/VNNI/FP16
extensions, AMX), the core count, ONNX Runtime's version and execution providers, and whether
OpenVINO (bf16) serves here."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from lamina.server.runtime.cpu import cpu_flags

# The flags that change what runs fast, in the order a reader compares them.
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_of(cpuinfo: str) -> tuple[str, list[str]]:
    """The model name and the relevant flags of the first processor in a /proc/cpuinfo text."""
    model = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
            break
    flags = cpu_flags(cpuinfo)
    return model, [flag for flag in RELEVANT_FLAGS if flag in flags]


def describe(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> str:
    """One line: `AMD EPYC, 2 cores (avx2 fma f16c; no AVX-512, no AMX), ONNX Runtime 1.32.0
    (CPUExecutionProvider)`."""
    try:
        model, flags = cpu_of(cpuinfo_path.read_text())
    except OSError:  # not Linux: what platform knows
        model, flags = platform.processor() or platform.machine(), []
    missing = [
        name
        for name, prefix in (("AVX-512", "avx512"), ("AMX", "amx"))
        if not any(f.startswith(prefix) for f in flags)
    ]
    listed = " ".join(flags) or "no flags read"
    if missing:
        listed += "; " + ", ".join(f"no {name}" for name in missing)
    try:
        import onnxruntime as ort

        from lamina.server.runtime import openvino

        runtime = f"ONNX Runtime {ort.__version__} ({', '.join(ort.get_available_providers())})"
        why_not = openvino.unavailable()
        runtime += f", OpenVINO {'not usable: ' + why_not if why_not else 'on this CPU'}"
        why_not_bf16 = openvino.bf16_unavailable(cpuinfo_path)
        runtime += f", bf16 {'not computed: ' + why_not_bf16 if why_not_bf16 else 'computed'}"
    except ImportError:
        runtime = "no ONNX Runtime"
    return f"{model or platform.machine()}, {os.cpu_count()} cores ({listed}), {runtime}"
