"""int8 graphs: ONNX Runtime's dynamic quantization of the weight matrices, measured against the
fp32 graph on the calibration set, with the parts that cost the most fidelity kept in fp32.

Weights are quantized per output channel (one scale per column: a few outlier columns do not
flatten the others), activations per tensor at run time, with the 7-bit range that keeps the
AVX2/AVX-512 int8 kernels from saturating their 16-bit accumulators. Only MatMuls with a constant
weight are quantized: the attention products of two activations stay fp32, and with them the
AtMan control path. Norms, softmax and the embedding lookup stay fp32 too.

Even so, the feed-forward layers of some blocks lose too much (their inputs carry outliers that
one scale per tensor cannot hold): `quantize_int8` measures, finds the block whose output falls
furthest below its input's fidelity, keeps that block's feed-forward (then its attention) in
fp32, and measures again, until every hidden state passes the int8 gate. Measured on the default
models (docs/precision.md), the gate keeps most feed-forward layers in fp32: dynamic int8 with
one activation scale per tensor is the limit, not the rule.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

from lamina.server.convert import calibration, fidelity
from lamina.server.domain import Precision
from lamina.server.repository.manifest import Manifest, PrecisionGraph

log = logging.getLogger(__name__)

INT8_GRAPH_FILE = "model.int8.onnx"
ATTENTION_WEIGHTS = ("q", "k", "v", "o")  # the converters' weight names: q.weight_t_59, ...
QUANTIZABLE = ("bert", "llama")  # text graphs; image encoders keep fp32
ROUNDS = 8  # at most about this many quantize-and-measure rounds


@dataclass(frozen=True)
class Unit:
    """The weight MatMuls of one part of one block: what is kept in fp32 together."""

    block: int  # 1-based, as its output's hidden state index
    part: str  # "mlp" or "attention"
    nodes: tuple[str, ...]

    def __str__(self) -> str:
        return f"block {self.block} {self.part}"


def weight_units(graph: onnx.ModelProto) -> list[Unit]:
    """Per block (an If node of the main graph holding weight MatMuls, in order), its parts."""
    units: list[Unit] = []
    block = 0
    for node in graph.graph.node:
        matmuls = [(n.name, n.input[1]) for n in _subgraph_nodes(node) if n.op_type == "MatMul"]
        weights = [(name, w) for name, w in matmuls if ".weight" in w]
        if not weights:
            continue
        block += 1
        parts: dict[str, list[str]] = {"mlp": [], "attention": []}
        for name, weight in weights:
            kind = weight.split(".")[0]
            parts["attention" if kind in ATTENTION_WEIGHTS else "mlp"].append(name)
        units += [Unit(block, part, tuple(nodes)) for part, nodes in parts.items() if nodes]
    return units


def _subgraph_nodes(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    found = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            for inner in attribute.g.node:
                found += [inner, *_subgraph_nodes(inner)]
    return found


def quantize_int8(
    version: Path, manifest: Manifest, progress: Callable[[str], None] = log.info
) -> PrecisionGraph:
    """Write `INT8_GRAPH_FILE` into the version folder and return its record for the manifest.
    Deterministic: the same fp32 graph and calibration set give the same int8 graph."""
    if manifest.architecture not in QUANTIZABLE:
        raise ValueError(
            f"int8 is prepared for text models ({', '.join(QUANTIZABLE)}), not "
            f"{manifest.architecture!r}"
        )
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = version / manifest.graph
    units = weight_units(onnx.load(str(source), load_external_data=False))
    reference = fidelity.Reference.of(version, manifest, "int8", progress)
    kept: list[Unit] = []
    first: fidelity.Fidelity | None = None  # all int8
    with (
        _without_preprocessing_advice(),
        tempfile.TemporaryDirectory(prefix="lamina-int8-") as scratch,
    ):
        candidate = Path(scratch) / INT8_GRAPH_FILE
        while True:
            excluded = [name for unit in kept for name in unit.nodes]
            quantize_dynamic(
                str(source),
                str(candidate),
                op_types_to_quantize=["MatMul"],
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                nodes_to_exclude=excluded,
                extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True},
            )
            measured = reference.measure(fidelity.session(candidate))
            progress(
                f"int8 with {len(kept)} of {len(units)} parts in fp32: lowest cosine "
                f"{measured.worst:.4f} (gate {Precision.INT8.gate})"
            )
            left = [u for u in units if u not in kept]
            if measured.passes(Precision.INT8.gate) or not left:
                break
            if first is None:
                first = measured
            # One part at a time for shallow models; for deep ones a share that bounds the
            # rounds (each a quantization and a measurement of the whole set) at about ROUNDS.
            step = 1 if len(units) <= 2 * ROUNDS else -(-len(units) // ROUNDS)
            kept += _costliest(left, measured.per_layer, step)
        if not left and first is not None:
            # Nothing of int8 passes: recorded (with what all-int8 measured) so that it is not
            # tried again, and no graph is written; pools asking for int8 serve fp32.
            progress(f"int8 fails its gate even in part (all int8: {first.worst:.4f})")
            return PrecisionGraph("", first.per_layer, calibration.CALIBRATION_ID)
        candidate.replace(version / INT8_GRAPH_FILE)
    return PrecisionGraph(
        graph=INT8_GRAPH_FILE,
        min_cosine=measured.per_layer,
        calibration=calibration.CALIBRATION_ID,
        kept_fp32=tuple(str(u) for u in sorted(kept, key=lambda u: (u.block, u.part))),
    )


@contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice to pre-process the graph (shape inference, for
    static quantization) on every call, once per round here; the fidelity is measured without
    it, so the line says nothing about the result."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _costliest(left: list[Unit], per_layer: tuple[float, ...], count: int) -> list[Unit]:
    """The `count` parts of the blocks that lose the most fidelity between their input and their
    output; in a block, the feed-forward before attention (the outliers are there)."""

    def loss(unit: Unit) -> tuple[float, bool]:
        return per_layer[unit.block - 1] - per_layer[unit.block], unit.part == "mlp"

    return sorted(left, key=loss, reverse=True)[:count]
