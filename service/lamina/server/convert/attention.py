"""Scaled dot-product attention with padding masks and AtMan controls, as ONNX nodes.

The per-key control tensors are derived once per graph (`KeyControls.build`) and applied to the
scores of every layer and head, so the cost is a few element-wise passes per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lamina.server.convert import signature
from lamina.server.convert.graph import FLOAT, GraphBuilder

_FLOAT_MIN = float(np.finfo(np.float32).min)
_FLOAT_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class KeyControls:
    """Tensors broadcastable to scores [batch, heads, query, key]."""

    padding_bias: str  # 0 for prompt positions, float32 min for padding: [batch, 1, 1, key]
    padding_lift: str  # 0 for prompt positions, float32 max for padding: excludes them from min
    factors: str  # f per key [batch, 1, 1, key]
    log_factors: str  # ln f per key
    log_additive: str  # bool [batch, 1, 1, 1]
    causal_bias: str | None  # [1, 1, query, key], decoders only

    @staticmethod
    def build(g: GraphBuilder, *, causal: bool) -> KeyControls:
        mask = g.op("Cast", [signature.ATTENTION_MASK], to=FLOAT)
        mask4 = g.op("Unsqueeze", [mask, g.const("axes_1_2", [1, 2])])
        padding = g.op("Sub", [g.const("one", np.float32(1.0)), mask4])
        factors = g.op("Unsqueeze", [signature.CONTROL_FACTORS, g.const("axes_1_2", [1, 2])])
        log_additive = g.op(
            "Unsqueeze", [signature.CONTROL_LOG_ADDITIVE, g.const("axes_1_2_3", [1, 2, 3])]
        )
        causal_bias = _causal_bias(g) if causal else None
        return KeyControls(
            padding_bias=g.op("Mul", [padding, g.const("float_min", np.float32(_FLOAT_MIN))]),
            padding_lift=g.op("Mul", [padding, g.const("float_max", np.float32(_FLOAT_MAX))]),
            factors=factors,
            log_factors=g.op("Log", [factors]),
            log_additive=log_additive,
            causal_bias=causal_bias,
        )

    def apply(self, g: GraphBuilder, scores: str) -> str:
        """Controlled, masked scores, ready for softmax."""
        if self.causal_bias is not None:
            scores = g.op("Add", [scores, self.causal_bias])
        additive = g.op("Add", [scores, self.log_factors])
        # min over the keys a query may attend to: padding (and future positions) are lifted out.
        row_min = g.op("ReduceMin", [g.op("Add", [scores, self.padding_lift])], axes=[-1])
        scaled = g.op("Mul", [g.op("Sub", [scores, row_min]), self.factors])
        controlled = g.op("Where", [self.log_additive, additive, scaled])
        return g.op("Add", [controlled, self.padding_bias])


def _causal_bias(g: GraphBuilder) -> str:
    """float32-min above the diagonal, 0 elsewhere, sized to the sequence at run time."""
    positions = g.positions(signature.INPUT_IDS)
    query = g.op("Unsqueeze", [positions, g.const("axis_1", [1])])
    key = g.op("Unsqueeze", [positions, g.const("axis_0", [0])])
    future = g.op("Greater", [key, query])
    bias = g.op(
        "Where",
        [future, g.const("float_min", np.float32(_FLOAT_MIN)), g.const("zero", np.float32(0))],
    )
    return g.op("Unsqueeze", [bias, g.const("axes_0_1", [0, 1])])


@dataclass(frozen=True)
class Rotary:
    """Rotary position embedding tables for the run's positions: cos, sin [1, 1, sequence, d]."""

    cos: str
    sin: str
    half: int

    @staticmethod
    def build(g: GraphBuilder, *, head_dim: int, theta: float, max_positions: int) -> Rotary:
        # float32 throughout, as Hugging Face computes them, so long positions round alike.
        exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(
            head_dim
        )
        inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)
        angles = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
        table = np.concatenate([angles, angles], axis=-1)
        positions = g.positions(signature.INPUT_IDS)

        def lookup(values: np.ndarray, hint: str) -> str:
            rows = g.op("Gather", [g.const(hint, values.astype(np.float32)), positions], axis=0)
            return g.op("Unsqueeze", [rows, g.const("axes_0_1", [0, 1])])

        return Rotary(
            lookup(np.cos(table), "rope_cos"), lookup(np.sin(table), "rope_sin"), head_dim // 2
        )

    def apply(self, g: GraphBuilder, x: str) -> str:
        """x cos + rotate_half(x) sin, with rotate_half([a, b]) = [-b, a] over the head dim."""
        first = g.op(
            "Slice",
            [x, g.const("zero_l", [0]), g.const("half", [self.half]), g.const("last_axis", [-1])],
        )
        second = g.op(
            "Slice",
            [x, g.const("half", [self.half]), g.const("end", [2**62]), g.const("last_axis", [-1])],
        )
        rotated = g.op("Concat", [g.op("Neg", [second]), first], axis=-1)
        return g.op("Add", [g.op("Mul", [x, self.cos]), g.op("Mul", [rotated, self.sin])])


def multi_head_attention(
    g: GraphBuilder,
    query: str,
    key: str,
    value: str,
    controls: KeyControls,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    rotary: Rotary | None = None,
) -> str:
    """softmax(Q K^T / sqrt(d) + controls) V over [batch, sequence, heads * head_dim] projections.

    Grouped-query attention repeats each key/value head num_heads / num_kv_heads times.
    """
    q = _split_heads(g, query, num_heads, head_dim)  # [b, h, s, d]
    k = _split_heads(g, key, num_kv_heads, head_dim)
    v = _split_heads(g, value, num_kv_heads, head_dim)
    if rotary is not None:
        q, k = rotary.apply(g, q), rotary.apply(g, k)
    if num_kv_heads != num_heads:
        k = _repeat_kv(g, k, num_heads // num_kv_heads, num_kv_heads, head_dim)
        v = _repeat_kv(g, v, num_heads // num_kv_heads, num_kv_heads, head_dim)
    k_t = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    scores = g.op("MatMul", [q, k_t])
    scores = g.op("Div", [scores, g.const("sqrt_head_dim", np.float32(np.sqrt(head_dim)))])
    probs = g.op("Softmax", [controls.apply(g, scores)], axis=-1)
    context = g.op("MatMul", [probs, v])  # [b, h, s, d]
    context = g.op("Transpose", [context], perm=[0, 2, 1, 3])
    return g.op("Reshape", [context, g.const("shape_merge", [0, 0, num_heads * head_dim])])


def _split_heads(g: GraphBuilder, x: str, heads: int, head_dim: int) -> str:
    split = g.op("Reshape", [x, g.const("shape_split", [0, 0, heads, head_dim])])
    return g.op("Transpose", [split], perm=[0, 2, 1, 3])


def _repeat_kv(g: GraphBuilder, x: str, repeats: int, kv_heads: int, head_dim: int) -> str:
    # [b, kv, s, d] -> [b, kv, 1, s, d] -> [b, kv, r, s, d] -> [b, kv * r, s, d]
    expanded = g.op("Unsqueeze", [x, g.const("axis_2", [2])])
    tiled = g.op("Tile", [expanded, g.const("tile_repeats", [1, 1, repeats, 1, 1])])
    return g.op("Reshape", [tiled, g.const("shape_heads", [0, kv_heads * repeats, -1, head_dim])])
