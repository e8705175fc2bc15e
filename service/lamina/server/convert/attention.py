"""Scaled dot-product attention with padding and causal masks and AtMan controls, as ONNX nodes.

The per-key control tensors are derived once per graph (`KeyControls.build`) and applied to the
scores of every layer and head: a few element-wise passes per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from lamina.server.convert.graph import BOOL, FLOAT, GraphBuilder
from lamina.server.repository import signature

_INF = float(np.inf)


@dataclass(frozen=True)
class KeyControls:
    """Tensors broadcastable to scores [batch, heads, query, key], built once per graph.

    Semantics (docs/api.md, AtMan), for every query q and key k it may see (not padding, not
    in the future for decoders):
    - log-additive: s'(q, k) = s(q, k) + ln f(k); f = 0 masks k (-inf), f = 1 changes nothing;
    - otherwise:   s'(q, k) = (s(q, k) - min_j s(q, j)) * f(k), the min over the keys q sees.
    If the controls mask every key a query sees, that query attends as if uncontrolled: a
    defined answer instead of NaN.
    """

    visible: str  # bool [batch, 1, query or 1, key]
    factors: str  # f per key [batch, 1, 1, key]
    log_factors: str  # ln f per key
    log_additive: str  # bool [batch, 1, 1, 1]
    uncontrolled: str  # bool scalar: no row of the batch has a control
    score_shape: tuple[str, ...]  # symbolic dims of the scores, for the If branches

    @staticmethod
    def build(g: GraphBuilder, *, causal: bool) -> KeyControls:
        """The controls of the token sequence, from the graph's signature inputs."""
        mask = g.op("Cast", [signature.ATTENTION_MASK], to=BOOL)
        visible = g.op("Unsqueeze", [mask, g.const("axes_1_2", [1, 2])])
        if causal:
            visible = g.op("And", [visible, _not_future(g)])
        return KeyControls.over(
            g, visible, signature.CONTROL_FACTORS, signature.CONTROL_LOG_ADDITIVE
        )

    @staticmethod
    def over(
        g: GraphBuilder,
        visible: str,
        key_factors: str,
        log_additive_rows: str,
        score_shape: Sequence[str] = ("batch", "heads", "sequence", "sequence"),
    ) -> KeyControls:
        """Controls from f per key [rows, key] and the mode per row [rows]; `visible` is
        broadcastable to the scores (an image encoder sees every key: a constant true)."""
        factors = g.op("Unsqueeze", [key_factors, g.const("axes_1_2", [1, 2])])
        log_additive = g.op("Unsqueeze", [log_additive_rows, g.const("axes_1_2_3", [1, 2, 3])])
        # Every factor 1 in log-additive mode changes nothing: such batches skip the control path.
        deviation = g.op(
            "ReduceMax",
            [g.op("Abs", [g.op("Sub", [factors, g.const("one", np.float32(1))])])],
            keepdims=0,
        )
        all_ones = g.op("Equal", [deviation, g.const("zero", np.float32(0))])
        modes = g.op("Cast", [log_additive_rows], to=FLOAT)
        all_log = g.op(
            "Equal", [g.op("ReduceMin", [modes], keepdims=0), g.const("one", np.float32(1))]
        )
        uncontrolled = g.op("And", [all_ones, all_log])
        return KeyControls(
            visible,
            factors,
            g.op("Log", [factors]),
            log_additive,
            uncontrolled,
            tuple(score_shape),
        )

    def restricted(self, g: GraphBuilder, allowed: str) -> KeyControls:
        """The same controls over fewer keys: `allowed` (bool, broadcastable to the scores, e.g.
        a `key_window` [1, 1, query, key]) is and-ed into what each real query sees.

        A padding query (right padding) may lie a window past the prompt's last token, where it
        would see no key at all: its softmax row would be NaN, and the next layer's attention
        would spread it into the prompt's own rows (a probability of 0 times NaN is NaN).
        Padding queries keep the unrestricted keys: what they hold is never read."""
        real = g.op("Cast", [signature.ATTENTION_MASK], to=BOOL)
        padding_query = g.op("Unsqueeze", [g.op("Not", [real]), g.const("axes_1_3", [1, 3])])
        seen = g.op("Or", [allowed, padding_query])
        return replace(self, visible=g.op("And", [self.visible, seen]))

    def apply(self, g: GraphBuilder, scores: str) -> str:
        """Controlled scores with -inf where a key is not seen, ready for softmax."""
        return g.branch(
            self.uncontrolled,
            lambda b: b.op(
                "Where", [self.visible, scores, b.const("minus_inf", np.float32(-_INF))]
            ),
            lambda b: self._controlled(b, scores),
            self.score_shape,
        )

    def _controlled(self, g: GraphBuilder, scores: str) -> str:
        hidden = g.const("minus_inf", np.float32(-_INF))
        plain = g.op("Where", [self.visible, scores, hidden])
        seen_min = g.op(
            "ReduceMin",
            [g.op("Where", [self.visible, scores, g.const("plus_inf", np.float32(_INF))])],
            axes=[-1],
        )
        additive = g.op("Add", [scores, self.log_factors])
        scaled = g.op("Mul", [g.op("Sub", [scores, seen_min]), self.factors])
        controlled = g.op(
            "Where", [self.visible, g.op("Where", [self.log_additive, additive, scaled]), hidden]
        )
        all_masked = g.op("Equal", [g.op("ReduceMax", [controlled], axes=[-1]), hidden])
        return g.op("Where", [all_masked, plain, controlled])


def key_window(g: GraphBuilder, bound: int, *, bidirectional: bool) -> str:
    """bool [1, 1, query, key], sized to the sequence at run time: query - key < bound (a
    causal model's sliding window, future keys being masked already), or |query - key| < bound
    on either side."""
    positions = g.positions(signature.INPUT_IDS)
    query = g.op("Unsqueeze", [positions, g.const("axis_1", [1])])
    key = g.op("Unsqueeze", [positions, g.const("axis_0", [0])])
    distance = g.op("Sub", [query, key])
    if bidirectional:
        distance = g.op("Abs", [distance])
    allowed = g.op("Less", [distance, g.const("window_bound", np.int64(bound))])
    return g.op("Unsqueeze", [allowed, g.const("axes_0_1", [0, 1])])


def _not_future(g: GraphBuilder) -> str:
    """key <= query as bool [1, 1, query, key], sized to the sequence at run time."""
    positions = g.positions(signature.INPUT_IDS)
    query = g.op("Unsqueeze", [positions, g.const("axis_1", [1])])
    key = g.op("Unsqueeze", [positions, g.const("axis_0", [0])])
    allowed = g.op("LessOrEqual", [key, query])
    return g.op("Unsqueeze", [allowed, g.const("axes_0_1", [0, 1])])


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

    @staticmethod
    def from_frequencies(g: GraphBuilder, inv_freq: np.ndarray, max_positions: int) -> Rotary:
        """Tables from given inverse frequencies [head_dim / 2], for scaled RoPE variants (NTK);
        a frequency of 0 leaves its pair of dimensions as it is (cos 1, sin 0)."""
        frequencies = np.asarray(inv_freq, dtype=np.float32)
        angles = np.arange(max_positions, dtype=np.float32)[:, None] * frequencies[None, :]
        table = np.concatenate([angles, angles], axis=-1)
        positions = g.positions(signature.INPUT_IDS)

        def lookup(values: np.ndarray, hint: str) -> str:
            rows = g.op("Gather", [g.const(hint, values.astype(np.float32)), positions], axis=0)
            return g.op("Unsqueeze", [rows, g.const("axes_0_1", [0, 1])])

        return Rotary(
            lookup(np.cos(table), "rope_cos"), lookup(np.sin(table), "rope_sin"), len(frequencies)
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


HeadNorm = Callable[[GraphBuilder, str], str]


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
    scale: float | None = None,
    score_bias: str | None = None,
    head_norms: tuple[HeadNorm, HeadNorm] | None = None,
) -> str:
    """softmax(Q K^T scale + score_bias + controls) V over [batch, sequence, heads * head_dim]
    projections; scale defaults to 1 / sqrt(head_dim).

    Grouped-query attention repeats each key/value head num_heads / num_kv_heads times.
    `score_bias` (broadcastable to [batch, heads, query, key]) is a relative position bias;
    `head_norms` (query's, key's) normalise each head [b, h, s, d] before rotary positions.
    """
    q = _split_heads(g, query, num_heads, head_dim)  # [b, h, s, d]
    k = _split_heads(g, key, num_kv_heads, head_dim)
    v = _split_heads(g, value, num_kv_heads, head_dim)
    if head_norms is not None:
        q, k = head_norms[0](g, q), head_norms[1](g, k)
    if rotary is not None:
        q, k = rotary.apply(g, q), rotary.apply(g, k)
    if num_kv_heads != num_heads:
        k = _repeat_kv(g, k, num_heads // num_kv_heads, num_kv_heads, head_dim)
        v = _repeat_kv(g, v, num_heads // num_kv_heads, num_kv_heads, head_dim)
    k_t = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    scores = g.op("MatMul", [q, k_t])
    if scale is None:
        scores = g.op("Div", [scores, g.const("sqrt_head_dim", np.float32(np.sqrt(head_dim)))])
    else:
        scores = g.op("Mul", [scores, g.const("score_scale", np.float32(scale))])
    if score_bias is not None:
        scores = g.op("Add", [scores, score_bias])
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
