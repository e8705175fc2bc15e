"""The converted text graph cut into one graph per block, for a provider that cannot run its If
nodes (runtime/blockwise.py chains the pieces; docs/precision.md says why).

Piece 0 is the embedding (hidden state 0 from the inputs); piece i is block i, reading
BLOCK_INPUT (the state before it) where the whole graph reads the hidden state before it, and
the main-graph nodes its attention controls read, back to the inputs. No If is left: where a
segment resumes, the block reads BLOCK_INPUT either way; the attention's choice between plain
masking and the AtMan control path is made once per batch, outside: each block is written both
ways (`model.blockI.onnx` with the control path, `model.blockI.plain.onnx` without) with a
small graph of the condition (`model.condition.onnx`) that picks one, exactly as the If would.
Computing the control path for every batch instead (both branches and a Where) made a plain
32 x 128 MiniLM batch in bf16 1.5x slower (measured side by side); the price of the two ways is
a second compiled copy of each block's weights (both bf16: together what one fp32 copy takes).

The plain pieces are also written chained into one graph (`model.whole.plain.onnx`: every
hidden state from the inputs), for the common run of every block from the start: OpenVINO
spends about 0.3 ms on each call whatever its size (a MiniLM block of 4 positions: 0.44 ms
through ONNX Runtime, 0.28 ms in OpenVINO's own runtime, measured), so a short request ran
3.4 ms in seven calls. A third compiled copy of the weights is its price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper

from lamina.server.repository import signature
from lamina.server.runtime.blockwise import BLOCK_INPUT


@dataclass(frozen=True)
class Cut:
    """A graph cut into blocks: each block as it runs for a batch with AtMan controls
    (`controlled`, the attention's If as its else branch) and for one without (`plain`, its then
    branch), and `condition`, the If's condition computed from the inputs, which picks one."""

    controlled: list[onnx.ModelProto]
    plain: list[onnx.ModelProto]
    condition: onnx.ModelProto
    whole: onnx.ModelProto  # the plain pieces chained: every hidden state from the inputs


WHOLE = "model.whole.plain.onnx"


@dataclass(frozen=True)
class CutFiles:
    blocks: tuple[str, ...]
    plain_blocks: tuple[str, ...]
    condition: str
    whole: str


def write_blocks(version: Path, graph: str) -> CutFiles:
    """The cut of `graph` as files beside it (written once: the same graph cuts the same way)."""
    cut = split_blocks(onnx.load(str(version / graph)))
    pieces = {"model.condition.onnx": cut.condition, WHOLE: cut.whole}
    blocks, plain = [], []
    for index, (controlled, plain_piece) in enumerate(zip(cut.controlled, cut.plain, strict=True)):
        name = f"model.block{index}.onnx"
        pieces[name] = controlled
        blocks.append(name)
        if plain_piece is controlled:  # no If in it (the embedding)
            plain.append(name)
        else:
            pieces[f"model.block{index}.plain.onnx"] = plain_piece
            plain.append(f"model.block{index}.plain.onnx")
    for name, piece in pieces.items():
        target = version / name
        if not target.exists():
            partial = target.with_suffix(".partial")
            onnx.save(piece, str(partial))
            partial.replace(target)
    return CutFiles(tuple(blocks), tuple(plain), "model.condition.onnx", WHOLE)


def split_blocks(model: onnx.ModelProto) -> Cut:
    """[embedding graph, block 1, ..., block N] of a converted text graph, both ways."""
    graph = model.graph
    if any(i.name == signature.PIXEL_VALUES for i in graph.input):
        raise ValueError("a graph that takes images is not cut into blocks")
    producers = {out: node for node in graph.node for out in node.output}
    num_layers = sum(o.name.startswith("hidden_state_") for o in graph.output) - 1
    controlled, plain = [], []
    conditions: set[str] = set()
    for layer in range(num_layers + 1):
        name = signature.hidden_state_output(layer)
        gate = producers.get(name)
        if gate is None or gate.op_type != "If":
            raise ValueError(f"{name} is not the output of an If node: not a converted text graph")
        branch = next(a.g for a in gate.attribute if a.name == "then_branch")
        found: set[str] = set()
        controlled.append(_standalone(model, branch, name, producers, layer > 0, "else", found))
        plain.append(
            _standalone(model, branch, name, producers, layer > 0, "then", found)
            if found
            else controlled[-1]
        )
        conditions |= found
    if len(conditions) != 1:
        raise ValueError(f"the blocks' If nodes turn on {len(conditions)} conditions, not one")
    (condition,) = conditions
    return Cut(controlled, plain, _condition_graph(model, condition, producers), _chained(plain))


def _chained(pieces: list[onnx.ModelProto]) -> onnx.ModelProto:
    """[embedding, block 1, ..., block N] as one graph: each block reads the state the one
    before outputs, where it reads BLOCK_INPUT; the main-graph nodes they share (the attention
    mask's), once."""
    nodes: dict[str, onnx.NodeProto] = {}  # by first output: shared nodes are the same node
    initializers: dict[str, onnx.TensorProto] = {}
    inputs: dict[str, onnx.ValueInfoProto] = {}
    outputs = []
    for layer, piece in enumerate(pieces):
        before = signature.hidden_state_output(layer - 1)
        for node in piece.graph.node:
            renamed = onnx.NodeProto()
            renamed.CopyFrom(node)
            renamed.input[:] = [before if i == BLOCK_INPUT else i for i in node.input]
            known = nodes.get(renamed.output[0])
            if known is not None and known.SerializeToString() != renamed.SerializeToString():
                raise ValueError(f"blocks {layer - 1} and {layer} both make {renamed.output[0]!r}")
            nodes.setdefault(renamed.output[0], renamed)
        for tensor in piece.graph.initializer:
            known_tensor = initializers.setdefault(tensor.name, tensor)
            if known_tensor is not tensor and known_tensor != tensor:
                raise ValueError(f"blocks before {layer} hold another {tensor.name!r}")
        inputs |= {i.name: i for i in piece.graph.input if i.name != BLOCK_INPUT}
        outputs.append(piece.graph.output[0])
    graph = helper.make_graph(
        list(nodes.values()), "whole", list(inputs.values()), outputs, list(initializers.values())
    )
    whole = helper.make_model(graph, opset_imports=pieces[0].opset_import)
    whole.ir_version = pieces[0].ir_version
    return whole


def _standalone(
    model: onnx.ModelProto,
    branch: onnx.GraphProto,
    output: str,
    producers: Mapping[str, onnx.NodeProto],
    takes_state: bool,
    choose: str,
    conditions: set[str],
) -> onnx.ModelProto:
    body = onnx.GraphProto()
    body.CopyFrom(branch)
    if takes_state:  # the state it reads, whichever hidden state the whole graph names
        _rename_inputs(body)
    nodes = [flat for node in body.node for flat in _flattened(node, choose, conditions)]
    result = body.output[0].name
    for node in nodes:
        node.output[:] = [output if o == result else o for o in node.output]
    width = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    state = helper.make_tensor_value_info(
        BLOCK_INPUT, onnx.TensorProto.FLOAT, ["batch", "sequence", width]
    )
    extra = [state] if takes_state else []
    out = helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [None, None, width])
    return _graph_of(model, nodes, producers, extra, out)


def _condition_graph(
    model: onnx.ModelProto, condition: str, producers: Mapping[str, onnx.NodeProto]
) -> onnx.ModelProto:
    """The If's condition (a bool scalar) from the graph inputs: a few nodes, run per batch."""
    out = helper.make_tensor_value_info(condition, onnx.TensorProto.BOOL, [])
    return _graph_of(model, [], producers, [], out)


def _graph_of(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    producers: Mapping[str, onnx.NodeProto],
    extra_inputs: list[onnx.ValueInfoProto],
    output: onnx.ValueInfoProto,
) -> onnx.ModelProto:
    """`nodes`, after the main-graph nodes they (or `output`) read, back to the inputs."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    outer: list[onnx.NodeProto] = []
    pending, seen = [*_outer_names(nodes), output.name], set()
    made = {o for n in nodes for o in n.output}
    while pending:
        value = pending.pop()
        if value in seen or value in initializers or value in inputs or value == BLOCK_INPUT:
            continue
        seen.add(value)
        if value in made:
            continue
        maker = producers.get(value)
        if maker is None or maker.op_type == "If":
            raise ValueError(f"{output.name} reads {value!r}, which no plain node makes")
        outer.append(maker)
        pending += [i for i in maker.input if i]
    every = [n for n in graph.node if any(n is o for o in outer)] + nodes
    used = _outer_names(every)
    declared = [inputs[n] for n in inputs if n in used] + extra_inputs
    piece = helper.make_graph(
        every, output.name, declared, [output], [initializers[n] for n in initializers if n in used]
    )
    standalone = helper.make_model(piece, opset_imports=model.opset_import)
    standalone.ir_version = model.ir_version
    return standalone


def _flattened(node: onnx.NodeProto, choose: str, conditions: set[str]) -> list[onnx.NodeProto]:
    """`node` without If nodes: an If whose branches both pass on the same value (where a
    segment resumes) as that value; any other (the attention's choice between plain masking and
    the AtMan control path) as its `choose` ("then" or "else") branch, its condition noted in
    `conditions`."""
    if node.op_type != "If":
        return [node]
    branches = {a.name: a.g for a in node.attribute}
    passed = {
        g.node[0].input[0]
        for g in branches.values()
        if len(g.node) == 1 and g.node[0].op_type == "Identity"
    }
    if len(passed) == 1 and all(len(g.node) == 1 for g in branches.values()):
        return [helper.make_node("Identity", [passed.pop()], list(node.output), name=node.name)]
    if len(node.output) != 1:
        raise ValueError(f"{node.name}: an If with {len(node.output)} outputs is not flattened")
    conditions.add(node.input[0])
    branch = branches[f"{choose}_branch"]
    nodes = [flat for inner in branch.node for flat in _flattened(inner, choose, conditions)]
    nodes.append(
        helper.make_node("Identity", [branch.output[0].name], list(node.output), name=node.name)
    )
    return nodes


def _rename_inputs(graph: onnx.GraphProto) -> None:
    """Every hidden state read (the one before the block, or the first where it resumes) as
    BLOCK_INPUT."""
    for node in graph.node:
        node.input[:] = [BLOCK_INPUT if i.startswith("hidden_state_") else i for i in node.input]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_inputs(attribute.g)


def _outer_names(nodes: list[onnx.NodeProto]) -> set[str]:
    """The names `nodes` (and their subgraphs) read without making them."""
    made = {o for n in nodes for o in n.output}
    read: set[str] = set()
    for node in nodes:
        read |= {i for i in node.input if i}
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                inner = attribute.g
                local = {i.name for i in inner.initializer}
                read |= _outer_names(list(inner.node)) - local
    return read - made
