"""The OpenVINO execution provider: ONNX Runtime's path to bf16 on Intel CPUs.

ONNX Runtime's own CPU provider has no bf16 matrix kernels. The OpenVINO provider
(`onnxruntime-ep-openvino`) is a plugin library ONNX Runtime loads at run time; on a CPU with
AMX or AVX512_BF16 it computes the same graph in bf16, cut into one graph per block
(runtime/blockwise.py: it miscomputes the If nodes that gate them). It offers a device only on
Intel CPUs, so whether it can run here is found out, once, by asking it (`unavailable`).

Only bf16 is served through it. OpenVINO 2026.4's CPU plugin asked for f32 on these graphs
(`INFERENCE_PRECISION_HINT` f32) was 1.2x ONNX Runtime's CPU provider on 32 x 128 batches but
wrong on shorter ones (cosine 0.3 to 0.8 below 128 positions, measured), and without the hint it
computes bf16 on such CPUs anyway: fp32 stays on ONNX Runtime's CPU provider, the reference.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from lamina.server.domain import Precision
from lamina.server.runtime.blockwise import BlockwiseSession, CutGraph
from lamina.server.runtime.cpu import CPUINFO, cpu_has_bf16

EP_NAME = "OpenVINOExecutionProvider"
# What each precision asks OpenVINO's CPU plugin for.
_HINTS = {Precision.BF16: "bf16"}


@functools.cache
def _cpu_devices() -> tuple[tuple[ort.OrtEpDevice, ...], str]:
    """The plugin's CPU devices, or none and why."""
    try:
        import onnxruntime_ep_openvino
    except ImportError:
        return (), "onnxruntime-ep-openvino is not installed"
    try:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_ep_openvino.get_library_path())
    except Exception as error:  # onnxruntime raises its own types for a library it cannot load
        return (), f"ONNX Runtime could not load the OpenVINO plugin: {error}"
    devices = tuple(
        d
        for d in ort.get_ep_devices()
        if d.ep_name == EP_NAME and d.device.type == ort.OrtHardwareDeviceType.CPU
    )
    if not devices:
        vendor = next((d.device.vendor for d in ort.get_ep_devices()), "unknown")
        return (), f"the OpenVINO plugin offers no device for this CPU (vendor {vendor})"
    return devices, ""


def unavailable() -> str:
    """Why no session can run on the OpenVINO provider here; "" when one can."""
    return _cpu_devices()[1]


@functools.cache  # the CPU and the plugin do not change while the process runs
def bf16_unavailable(cpuinfo: Path = CPUINFO) -> str:
    """Why this machine computes no bf16 on its CPU; "" when it does (natively, through this
    provider)."""
    if not cpu_has_bf16(cpuinfo):
        return "the CPU has neither AVX512_BF16 nor AMX"
    return unavailable()


def add_provider(options: ort.SessionOptions, precision: Precision, threads: int) -> None:
    """Put the OpenVINO provider, computing in `precision`, ahead of the CPU provider (which
    still takes any node OpenVINO does not)."""
    devices, reason = _cpu_devices()
    if not devices:
        raise RuntimeError(reason)
    if precision not in _HINTS:
        raise ValueError(f"the OpenVINO provider computes {', '.join(_HINTS)}, not {precision}")
    # The plugin reads its device from `devices` and everything else from load_config; it
    # ignores (and warns about) the older device_type and num_of_threads options.
    config = {"INFERENCE_PRECISION_HINT": _HINTS[precision]}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    options.add_provider_for_devices(list(devices), {"load_config": json.dumps({"CPU": config})})


@dataclass(frozen=True)
class OnOpenVino:
    """A graph computed in `precision` by the OpenVINO provider, but for `fp32_blocks` (1-based,
    as their output's hidden state index), which ONNX Runtime's CPU provider computes in fp32:
    the blocks that lose the most where the whole model in bf16 would not pass its gate."""

    precision: Precision
    fp32_blocks: frozenset[int] = frozenset()


def fp32_blocks(kept_fp32: Iterable[str]) -> frozenset[int]:
    """The blocks of a record's parts kept in fp32 ("block 12"; parts of a block, as int8 keeps
    them, do not apply here)."""
    return frozenset(int(part.split()[1]) for part in kept_fp32 if re.fullmatch(r"block \d+", part))


def fp32_parts(blocks: Iterable[int]) -> tuple[str, ...]:
    """How a record names `blocks` kept in fp32."""
    return tuple(f"block {block}" for block in sorted(blocks))


def session(
    cut: CutGraph, plan: OnOpenVino, threads: int, options: Callable[[], ort.SessionOptions]
) -> BlockwiseSession:
    """A graph cut into blocks as `plan` says, one session per piece (each with `options()`),
    behind the whole graph's signature; the condition that picks a way runs on the CPU
    provider (a few nodes). The chained plain pieces, where the cut has them and every block
    runs on the provider, take plain runs of every block."""

    def piece(data: bytes, in_fp32: bool = False) -> ort.InferenceSession:
        piece_options = options()
        providers = ["CPUExecutionProvider"]
        if not in_fp32:
            add_provider(piece_options, plan.precision, threads)
            providers = []  # the plugin's devices, then the CPU provider
        return ort.InferenceSession(data, piece_options, providers=providers)

    kept = plan.fp32_blocks
    controlled = [piece(data, index in kept) for index, data in enumerate(cut.blocks)]
    plain = [
        controlled[index] if same is data else piece(data, index in kept)
        for index, (same, data) in enumerate(zip(cut.blocks, cut.plain_blocks, strict=True))
    ]
    condition = piece(cut.condition, in_fp32=True)  # a few nodes
    # With blocks kept in fp32, each piece runs where the plan says: no whole graph.
    whole = piece(cut.whole) if cut.whole is not None and not kept else None
    return BlockwiseSession(controlled, plain, condition, whole)
