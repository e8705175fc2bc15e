"""A thin, typed layer over `onnx.helper` so architecture builders read like the maths."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 has LayerNormalization; ONNX Runtime 1.20+ runs it on CPU and CUDA.
OPSET = 17

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL

# transformers' activation names GraphBuilder.activation builds; each family accepts those its
# own modeling code does.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")

Shape = Sequence[str | int | None]  # None: a dimension of no fixed size or name


@dataclass
class _Model:
    """What every (sub)graph of one model shares: unique names, the weights and the inputs."""

    names: Iterator[int] = field(default_factory=itertools.count)
    # A graph input declared while building a branch is still an input of the top graph.
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    small_constants: dict[tuple[str, tuple[int, ...], bytes], str] = field(default_factory=dict)


@dataclass
class GraphBuilder:
    """Accumulates nodes, inputs and outputs of one graph; `child` makes an If branch.

    Weights and inputs always live in the top graph, so a branch reads them from the outer scope.
    """

    name: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    model: _Model = field(default_factory=_Model)

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self.model.names)}"

    def child(self, name: str) -> GraphBuilder:
        return GraphBuilder(self.fresh(name), model=self.model)

    def input(self, name: str, elem_type: int, shape: Shape) -> str:
        self.model.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, source: str, elem_type: int, shape: Shape) -> None:
        """`source` as graph output `name` (a copy on every run: see `expose`)."""
        self.op("Identity", [source], name=name)
        self.expose(name, elem_type, shape)

    def expose(self, value: str, elem_type: int, shape: Shape) -> None:
        """The value a node already writes under an output's name, as that graph output. ONNX
        Runtime computes every output on every run, requested or not, so an Identity per
        hidden state costs a copy of it each run: for 30 blocks about 8 ms of every 4 x 128
        segment of SmolLM2."""
        self.outputs.append(helper.make_tensor_value_info(value, elem_type, list(shape)))

    def const(self, hint: str, value: np.ndarray | np.generic | float | int | Sequence[int]) -> str:
        array = np.ascontiguousarray(np.asarray(value))
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        small = array.size <= 16
        key = (str(array.dtype), array.shape, array.tobytes())
        if small and key in self.model.small_constants:
            return self.model.small_constants[key]
        name = self.fresh(hint)
        self.model.initializers.append(numpy_helper.from_array(array, name))
        if small:
            self.model.small_constants[key] = name
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, **attrs: Any) -> str:
        output = name or self.fresh(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=self.fresh(op_type), **attrs)
        )
        return output

    # Composite operations used by every transformer family.

    def gated(
        self,
        condition: str,
        x: str,
        block: Callable[[GraphBuilder, str], str],
        shape: Shape,
        name: str | None = None,
    ) -> str:
        """block(x) when `condition` (a bool scalar) holds, else x untouched: the skipped block
        costs nothing, which is how a request pays only for the layers it reads."""
        return self.branch(condition, lambda b: block(b, x), lambda b: x, shape, name)

    def branch(
        self,
        condition: str,
        then: Callable[[GraphBuilder], str],
        otherwise: Callable[[GraphBuilder], str],
        shape: Shape,
        name: str | None = None,
    ) -> str:
        """An If node (its output named `name` if given): only the branch `condition` (a bool
        scalar) picks runs."""
        run = self.child("then")
        ran = run.op("Identity", [then(run)])
        skip = self.child("else")
        skipped = skip.op("Identity", [otherwise(skip)])
        return self.op(
            "If",
            [condition],
            name=name,
            then_branch=run._branch(ran, shape),
            else_branch=skip._branch(skipped, shape),
        )

    def _branch(self, output: str, shape: Shape) -> onnx.GraphProto:
        value = helper.make_tensor_value_info(output, FLOAT, list(shape))
        return helper.make_graph(self.nodes, self.name, [], [value])

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

    def gelu(self, x: str) -> str:
        """0.5 x (1 + erf(x / sqrt 2)), the exact form: ONNX Runtime fuses it into one kernel."""
        scaled = self.op("Div", [x, self.const("sqrt2", np.float32(np.sqrt(2.0)))])
        gate = self.op("Add", [self.op("Erf", [scaled]), self.const("one", np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, gate]), self.const("half", np.float32(0.5))])

    def activation(self, x: str, kind: str) -> str:
        """transformers' activation of that name (ACT2FN): `gelu` exact, `gelu_new` and
        `gelu_pytorch_tanh` the tanh approximation, `relu`, `silu` (= `swish`)."""
        if kind == "gelu":
            return self.gelu(x)
        if kind == "relu":
            return self.op("Relu", [x])
        if kind in ("silu", "swish"):
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        if kind not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation {kind!r} is not supported; supported: {ACTIVATIONS}")
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = self.op("Mul", [self.op("Mul", [x, x]), x])
        inner = self.op("Add", [x, self.op("Mul", [cube, self.const("c", np.float32(0.044715))])])
        scale = self.const("k", np.float32(np.sqrt(2.0 / np.pi)))
        tanh = self.op("Tanh", [self.op("Mul", [inner, scale])])
        gate = self.op("Add", [tanh, self.const("one", np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, gate]), self.const("half", np.float32(0.5))])

    def rms_norm(self, x: str, weight: np.ndarray, eps: float, hint: str) -> str:
        """x / sqrt(mean(x^2) + eps) * weight: the pattern ONNX Runtime fuses into
        SimplifiedLayerNormalization."""
        square = self.op("Pow", [x, self.const("two", np.float32(2.0))])
        mean = self.op("ReduceMean", [square], axes=[-1])
        root = self.op("Sqrt", [self.op("Add", [mean, self.const("eps", np.float32(eps))])])
        normed = self.op("Div", [x, root])
        return self.op("Mul", [normed, self.const(f"{hint}.weight", weight.astype(np.float32))])

    def build(self, producer: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            self.name,
            self.model.inputs,
            self.outputs,
            initializer=self.model.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer
        )
        # ONNX Runtime 1.20 reads IR version 10 at most.
        model.ir_version = 10
        return model
