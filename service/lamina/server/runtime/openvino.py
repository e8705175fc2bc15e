"""OpenVINO's own runtime: bf16 on CPUs with AMX or AVX512_BF16, Intel and AMD alike.

ONNX Runtime's CPU provider has no bf16 matrix kernels. OpenVINO's CPU plugin computes the same
fp32 graph in bf16 (it converts the weights when it compiles it), cut into one graph per block
(runtime/blockwise.py: it miscomputes the If nodes that gate them). Each piece is compiled by
OpenVINO itself (`OpenVinoPiece`, behind the PieceSession surface BlockwiseSession chains), not
through ONNX Runtime's OpenVINO execution provider: that plugin offers a device only on Intel
CPUs (none on an AMD EPYC with AVX512_BF16, which computes bf16 natively), and per call it cost
more (a MiniLM block of 4 positions: 0.44 ms through ONNX Runtime, 0.28 ms in OpenVINO's own
runtime; 32 x 128 batches the same within noise, measured on an Intel Xeon with AMX).

Only bf16 is served through it: fp32 stays on ONNX Runtime's CPU provider, the reference.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from lamina.server.domain import Precision
from lamina.server.runtime.blockwise import BlockwiseSession, CutGraph, PieceSession, Port
from lamina.server.runtime.cpu import CPUINFO, cpu_has_bf16

if TYPE_CHECKING:
    import openvino

# What each precision asks OpenVINO's CPU plugin for.
_HINTS = {Precision.BF16: "bf16"}


@functools.cache
def _core() -> tuple[openvino.Core | None, str]:
    """OpenVINO, where it has a CPU device here, or None and why not."""
    try:
        import openvino
    except ImportError:
        return None, "openvino is not installed"
    core = openvino.Core()
    if "CPU" not in core.available_devices:
        return None, "OpenVINO offers no CPU device here"
    return core, ""


def unavailable() -> str:
    """Why no graph can run on OpenVINO's CPU plugin here; "" when one can."""
    return _core()[1]


@functools.cache  # the CPU and OpenVINO do not change while the process runs
def bf16_unavailable(cpuinfo: Path = CPUINFO) -> str:
    """Why this machine computes no bf16 on its CPU; "" when it does (natively, through
    OpenVINO)."""
    if not cpu_has_bf16(cpuinfo):
        return "the CPU has neither AVX512_BF16 nor AMX"
    core, reason = _core()
    if core is None:
        return reason
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "OpenVINO's CPU plugin computes no bf16 on this CPU"
    return ""


class OpenVinoPiece:
    """One piece compiled by OpenVINO's CPU plugin in `precision`, as a PieceSession: run(names,
    feeds) gives fresh arrays (the plugin's output buffers are reused by its next run, and a
    parked batch holds its state across them). Runs from several threads each take their own
    infer request; the plugin releases the GIL while it computes."""

    def __init__(self, data: bytes, precision: Precision, threads: int):
        core, reason = _core()
        if core is None:
            raise RuntimeError(reason)
        if precision not in _HINTS:
            raise ValueError(f"OpenVINO computes {', '.join(_HINTS)} here, not {precision}")
        config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self._compiled = core.compile_model(core.read_model(data), "CPU", config)
        self._inputs = [_port(i) for i in self._compiled.inputs]
        self._outputs = [_port(o) for o in self._compiled.outputs]
        # An output answers to each of its tensor's names (a chained graph's state has several).
        self._by_name = {n: o for o in self._compiled.outputs for n in o.get_names()}
        self._requests = threading.local()

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def run(self, output_names: Any, input_feed: Mapping[str, np.ndarray]) -> list[Any]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        results = request.infer(dict(input_feed))  # copies out, unless told to share
        wanted = (
            self._compiled.outputs
            if output_names is None
            else [self._by_name[name] for name in output_names]
        )
        return [results[output] for output in wanted]


def _port(node: Any) -> Port:
    """A compiled model's input or output as ONNX Runtime names it: its name, and its shape with
    None for each dynamic dimension."""
    shape = [d.get_length() if d.is_static else None for d in node.get_partial_shape()]
    return Port(_onnx_name(node.get_names()), shape)


def _onnx_name(names: Iterable[str]) -> str:
    """The graph's own name among a tensor's names: where OpenVINO merged nodes into an output
    it adds theirs, and the pieces' outputs are hidden states (repository/signature.py)."""
    ordered = sorted(names)
    if len(ordered) == 1:
        return ordered[0]
    return next((n for n in ordered if _HIDDEN_STATE.fullmatch(n)), ordered[0])


_HIDDEN_STATE = re.compile(r"hidden_state_\d+")  # signature.hidden_state_output


@dataclass(frozen=True)
class OnOpenVino:
    """A graph computed in `precision` by OpenVINO, but for `fp32_blocks` (1-based, as their
    output's hidden state index), which ONNX Runtime's CPU provider computes in fp32: the blocks
    that lose the most where the whole model in bf16 would not pass its gate."""

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
    """A graph cut into blocks as `plan` says, one compiled piece each, behind the whole graph's
    signature; blocks kept in fp32 and the condition that picks a way (a few nodes) run on ONNX
    Runtime's CPU provider, each with `options()`. The chained plain pieces, where the cut has
    them and every block runs on OpenVINO, take plain runs of every block."""

    def piece(data: bytes, in_fp32: bool = False) -> PieceSession:
        if not in_fp32:
            return OpenVinoPiece(data, plan.precision, threads)
        on_cpu: PieceSession = ort.InferenceSession(
            data, options(), providers=["CPUExecutionProvider"]
        )
        return on_cpu

    kept = plan.fp32_blocks
    controlled = [piece(data, index in kept) for index, data in enumerate(cut.blocks)]
    plain: Sequence[PieceSession] = [
        controlled[index] if same is data else piece(data, index in kept)
        for index, (same, data) in enumerate(zip(cut.blocks, cut.plain_blocks, strict=True))
    ]
    condition = piece(cut.condition, in_fp32=True)
    # With blocks kept in fp32, each piece runs where the plan says: no whole graph.
    whole = piece(cut.whole) if cut.whole is not None and not kept else None
    return BlockwiseSession(controlled, plain, condition, whole)
