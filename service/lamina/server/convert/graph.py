"""A thin, typed layer over `onnx.helper` so architecture builders read like the maths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 has LayerNormalization; ONNX Runtime 1.20+ runs it on CPU and CUDA.
OPSET = 17


@dataclass
class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs; names are made unique on the way."""

    name: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    _counter: int = 0

    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def input(self, name: str, elem_type: int, shape: Sequence[str | int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, source: str, elem_type: int, shape: Sequence[str | int]) -> None:
        self.op("Identity", [source], name=name)
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def const(self, hint: str, value: np.ndarray | np.generic | float | int | Sequence[int]) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, **attrs: Any) -> str:
        output = name or self.fresh(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=self.fresh(op_type), **attrs)
        )
        return output

    # Composite operations used by every transformer family.

    def positions(self, ids: str) -> str:
        """0 .. sequence-1 as int64 [sequence], sized from `ids` [batch, sequence] at run time."""
        length = self.op("Shape", [ids], start=1, end=2)
        ones = self.op(
            "ConstantOfShape", [length], value=numpy_helper.from_array(np.array([1], np.int64))
        )
        counted = self.op("CumSum", [ones, self.const("axis_0", np.int64(0))])
        return self.op("Sub", [counted, self.const("one_i", np.int64(1))])

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, hint: str) -> str:
        """x @ weight.T + bias, with `weight` in the [out, in] layout of PyTorch checkpoints."""
        w = self.const(f"{hint}.weight_t", np.ascontiguousarray(weight.T.astype(np.float32)))
        y = self.op("MatMul", [x, w])
        if bias is None:
            return y
        return self.op("Add", [y, self.const(f"{hint}.bias", bias.astype(np.float32))])

    def layer_norm(
        self, x: str, weight: np.ndarray, bias: np.ndarray, eps: float, hint: str
    ) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.const(f"{hint}.weight", weight), self.const(f"{hint}.bias", bias)],
            axis=-1,
            epsilon=float(eps),
        )

    def build(self, producer: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer
        )
        # ONNX Runtime 1.20 reads IR version 10 at most.
        model.ir_version = 10
        return model


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL
