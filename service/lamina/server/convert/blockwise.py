"""The converted text graph cut into one graph per block, for a provider that cannot run its If
nodes (runtime/blockwise.py chains the pieces; docs/precision.md says why).

Piece 0 is the embedding (hidden state 0 from the inputs); piece i is block i, reading
BLOCK_INPUT (the state before it) where the whole graph reads the hidden state before it, and
the main-graph nodes its attention controls read, back to the inputs. No If is left: where a
segment resumes, the block reads BLOCK_INPUT either way; the attention's choice between plain
masking and the AtMan control path becomes both branches and a Where on the condition, which
computes the control path for every batch: a plain 32 x 128 batch of MiniLM in bf16 takes 13%
longer than through the If (measured), the price of a result that is right at every length.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx
from onnx import helper

from lamina.server.repository import signature
from lamina.server.runtime.blockwise import BLOCK_INPUT


def block_file(index: int) -> str:
    return f"model.block{index}.onnx"


def write_blocks(version: Path, graph: str) -> tuple[str, ...]:
    """The pieces of `graph` as files beside it (written once; the same graph cuts the same
    way), embedding first."""
    model = onnx.load(str(version / graph))
    names = []
    for index, piece in enumerate(split_blocks(model)):
        name = block_file(index)
        target = version / name
        if not target.exists():
            partial = target.with_suffix(".partial")
            onnx.save(piece, str(partial))
            partial.replace(target)
        names.append(name)
    return tuple(names)


def split_blocks(model: onnx.ModelProto) -> list[onnx.ModelProto]:
    """[embedding graph, block 1, ..., block N] of a converted text graph."""
    graph = model.graph
    if any(i.name == signature.PIXEL_VALUES for i in graph.input):
        raise ValueError("a graph that takes images is not cut into blocks")
    producers = {out: node for node in graph.node for out in node.output}
    num_layers = sum(o.name.startswith("hidden_state_") for o in graph.output) - 1
    pieces = []
    for layer in range(num_layers + 1):
        name = signature.hidden_state_output(layer)
        gate = producers.get(name)
        if gate is None or gate.op_type != "If":
            raise ValueError(f"{name} is not the output of an If node: not a converted text graph")
        branch = next(a.g for a in gate.attribute if a.name == "then_branch")
        pieces.append(_standalone(model, branch, name, producers, takes_state=layer > 0))
    return pieces


def _standalone(
    model: onnx.ModelProto,
    branch: onnx.GraphProto,
    output: str,
    producers: Mapping[str, onnx.NodeProto],
    takes_state: bool,
) -> onnx.ModelProto:
    body = onnx.GraphProto()
    body.CopyFrom(branch)
    if takes_state:  # the state it reads, whichever hidden state the whole graph names
        _rename_inputs(body)
    nodes = [flat for node in body.node for flat in _flattened(node)]
    result = body.output[0].name
    for node in nodes:
        node.output[:] = [output if o == result else o for o in node.output]
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    outer: list[onnx.NodeProto] = []
    pending, seen = list(_outer_names(nodes)), set()
    while pending:  # the main-graph nodes the block reads, back to the inputs
        value = pending.pop()
        if value in seen or value in initializers or value in inputs or value == BLOCK_INPUT:
            continue
        seen.add(value)
        maker = producers.get(value)
        if maker is None or maker.op_type == "If":
            raise ValueError(f"{output} reads {value!r}, which no plain node of the graph makes")
        outer.append(maker)
        pending += [i for i in maker.input if i]
    every = [n for n in graph.node if any(n is o for o in outer)] + nodes
    used = _outer_names(every)
    declared = [inputs[n] for n in inputs if n in used]
    width = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if takes_state:
        declared.append(
            helper.make_tensor_value_info(
                BLOCK_INPUT, onnx.TensorProto.FLOAT, ["batch", "sequence", width]
            )
        )
    out = helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [None, None, width])
    piece = helper.make_graph(
        every, output, declared, [out], [initializers[n] for n in initializers if n in used]
    )
    standalone = helper.make_model(piece, opset_imports=model.opset_import)
    standalone.ir_version = model.ir_version
    return standalone


def _flattened(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """`node` without If nodes: an If whose branches both pass on the same value (where a
    segment resumes) as that value; any other as both branches and a Where on its condition."""
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
    nodes: list[onnx.NodeProto] = []
    results = []
    for key in ("then_branch", "else_branch"):
        branch = branches[key]
        for inner in branch.node:
            nodes += _flattened(inner)
        results.append(branch.output[0].name)
    nodes.append(
        helper.make_node("Where", [node.input[0], *results], list(node.output), name=node.name)
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
