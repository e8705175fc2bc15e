"""Alibaba's GTE "new" encoders (NewModel: gte-base/large-en-v1.5, gte-multilingual-base) to ONNX.

Remote code only (Alibaba-NLP/new-impl, modeling.py and configuration.py; transformers has no
such model): BERT-style post-norm blocks with rotary positions (fixed or mixed NTK scaling), a
packed qkv projection with biases, a GLU MLP (up and gate in one projection, a bias on the down
projection only) and LayerNorm or RMSNorm. Its unpadding (xformers) computes what the padded
path does, so the padding mask of every Lamina graph stands in for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lamina.server.convert import bert
from lamina.server.convert.attention import KeyControls, Rotary, multi_head_attention
from lamina.server.convert.checkpoint import SafetensorsWeights, pad_token_id
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.graph import GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

# NewForMaskedLM and the other heads keep the encoder under "new."; NewModel has no prefix.
HF_ARCHITECTURES = ("NewModel",)

# transformers' ACT2FN names the remote code's GLU may use; "gelu" is the exact (erf) form.
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
_NORMS = ("layer_norm", "rms_norm")


@dataclass(frozen=True)
class RopeScaling:
    """rope_scaling {"type": "ntk", "factor": f, "mixed_b": b or absent}."""

    factor: float
    mixed_b: float | None


@dataclass(frozen=True)
class GteConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    max_positions: int
    vocab_size: int
    type_vocab_size: int
    layer_norm_eps: float
    layer_norm_type: str  # of the blocks' attn_ln and mlp_ln; the embeddings' is a LayerNorm
    hidden_act: str
    rope_theta: float
    rope_scaling: RopeScaling | None
    pack_qkv: bool

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; "
                f"supported: {', '.join(_ACTIVATIONS)}"
            )
        if self.layer_norm_type not in _NORMS:
            raise ValueError(
                f"layer_norm_type {self.layer_norm_type!r} is not supported; "
                f"supported: {', '.join(_NORMS)}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> GteConfig:
        """Defaults as the remote code's NewConfig."""
        position_type = config.get("position_embedding_type", "rope")
        if position_type != "rope":
            raise ValueError(
                f"position_embedding_type {position_type!r} is not supported; only 'rope'"
            )
        if config.get("logn_attention_scale"):
            raise ValueError(
                f"logn_attention_scale {config['logn_attention_scale']!r} is not supported; "
                "only false (as every published GTE checkpoint)"
            )
        return GteConfig(
            num_layers=int(config.get("num_hidden_layers", 12)),
            hidden_size=int(config.get("hidden_size", 768)),
            num_heads=int(config.get("num_attention_heads", 12)),
            max_positions=int(config.get("max_position_embeddings", 2048)),
            vocab_size=int(config.get("vocab_size", 30528)),
            type_vocab_size=int(config.get("type_vocab_size", 1)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            layer_norm_type=str(config.get("layer_norm_type", "layer_norm")),
            hidden_act=str(config.get("hidden_act", "gelu")),
            rope_theta=float(config.get("rope_theta", 10_000.0)),
            rope_scaling=_rope_scaling(config.get("rope_scaling")),
            pack_qkv=_flag(config.get("pack_qkv", True)),
        )


def _flag(value: Any) -> bool:
    # Some published configs write flags as strings ("unpad_inputs": "true").
    return value.lower() == "true" if isinstance(value, str) else bool(value)


def _rope_scaling(scaling: Mapping[str, Any] | None) -> RopeScaling | None:
    if scaling is None:
        return None
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind != "ntk":
        raise ValueError(f"rope_scaling type {kind!r} is not supported; only 'ntk' (or none)")
    mixed_b = scaling.get("mixed_b")
    return RopeScaling(float(scaling["factor"]), None if mixed_b is None else float(mixed_b))


def rope_frequencies(config: GteConfig) -> np.ndarray:
    """The inverse frequencies [head_dim / 2] the remote code's tables use, in float32 as it
    computes them. Its NTK class builds its table for max_position_embeddings * factor
    positions, which rescales the frequencies of every position whenever factor > 1."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    scaling = config.rope_scaling
    if scaling is None or scaling.factor <= 1:
        return _inverse_powers(config.rope_theta, exponents)
    if scaling.mixed_b is None:  # fixed NTK: base * factor, then / factor^(2 / dim)
        scaled = _inverse_powers(config.rope_theta * scaling.factor, exponents)
        divisor = np.full_like(scaled, scaling.factor ** (2 / dim))
    else:  # mixed NTK: / exp(a m^b), a = ln(factor) / (dim / 2)^b, m = 1 .. dim / 2
        scaled = _inverse_powers(config.rope_theta, exponents)
        a = np.float32(np.log(np.float32(scaling.factor))) / np.float32(
            (dim / 2) ** scaling.mixed_b
        )
        steps = np.arange(1, dim // 2 + 1, dtype=np.float32)
        divisor = np.exp(a * np.power(steps, np.float32(scaling.mixed_b))).astype(np.float32)
    result: np.ndarray = (scaled / divisor).astype(np.float32)
    return result


def _inverse_powers(base: float, exponents: np.ndarray) -> np.ndarray:
    result: np.ndarray = (np.float32(1.0) / np.power(np.float32(base), exponents)).astype(
        np.float32
    )
    return result


def expected_tensors(config: GteConfig) -> list[str]:
    names = [
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    ]
    if config.type_vocab_size > 0:
        names.append("embeddings.token_type_embeddings.weight")
    norm_parts = ("weight", "bias") if config.layer_norm_type == "layer_norm" else ("weight",)
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        projections = ("qkv_proj",) if config.pack_qkv else ("q_proj", "k_proj", "v_proj")
        for proj in (*projections, "o_proj"):
            names += [f"{p}.attention.{proj}.weight", f"{p}.attention.{proj}.bias"]
        names += [
            f"{p}.mlp.up_gate_proj.weight",
            f"{p}.mlp.down_proj.weight",
            f"{p}.mlp.down_proj.bias",
        ]
        names += [f"{p}.{norm}.{part}" for norm in ("attn_ln", "mlp_ln") for part in norm_parts]
    return names


def convert_gte_folder(
    folder: Path, config: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    parsed = GteConfig.from_hf(config)
    weights = SafetensorsWeights.open(folder, prefixes=("new.",))
    weights.require(expected_tensors(parsed), f"{folder} (GTE NewModel)")
    progress(f"building the GTE graph: {parsed.num_layers} blocks, hidden {parsed.hidden_size}")
    return ConvertedModel.of_text(
        parsed,
        graph=build_gte_graph(parsed, weights),
        tokenizer=load_plain_tokenizer(folder / "tokenizer.json"),
        family="gte",
        pad_token_id=pad_token_id(config),
        token_embeddings=weights("embeddings.word_embeddings.weight"),
    )


def build_gte_graph(config: GteConfig, weights: Callable[[str], np.ndarray]) -> onnx.ModelProto:
    """hidden_state_0 (the embeddings' LayerNorm) .. hidden_state_N (each block's output, as the
    remote code's output_hidden_states: post-norm, no final norm)."""
    frequencies = rope_frequencies(config)
    rotary: Rotary | None = None

    def prepare(g: GraphBuilder) -> None:
        nonlocal rotary
        rotary = Rotary.from_frequencies(g, frequencies, config.max_positions)

    def embed(g: GraphBuilder) -> str:
        x = bert.words_of_one_segment(g, weights, token_types=config.type_vocab_size > 0)
        return g.layer_norm(
            x,
            weights("embeddings.LayerNorm.weight"),
            weights("embeddings.LayerNorm.bias"),
            config.layer_norm_eps,
            "ln_embeddings",
        )

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        p = f"encoder.layer.{index}"

        def w(name: str) -> np.ndarray:
            return weights(f"{p}.{name}")

        q, k, v = _qkv(g, hidden, config, w)
        context = multi_head_attention(
            g,
            q,
            k,
            v,
            controls,
            num_heads=config.num_heads,
            num_kv_heads=config.num_heads,
            head_dim=config.head_dim,
            rotary=rotary,
        )
        attn = g.linear(context, w("attention.o_proj.weight"), w("attention.o_proj.bias"), "o_proj")
        hidden = _norm(g, g.op("Add", [hidden, attn]), config, w, "attn_ln")
        # up_gate_proj rows: the up half, then the gate half; no bias.
        up_gate = w("mlp.up_gate_proj.weight")
        inner = up_gate.shape[0] // 2
        up = g.linear(hidden, up_gate[:inner], None, "up")
        gate = g.activation(g.linear(hidden, up_gate[inner:], None, "gate"), config.hidden_act)
        down = g.linear(
            g.op("Mul", [gate, up]), w("mlp.down_proj.weight"), w("mlp.down_proj.bias"), "down"
        )
        return _norm(g, g.op("Add", [hidden, down]), config, w, "mlp_ln")

    return layered_graph(
        "gte",
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        causal=False,
        embed=embed,
        block=block,
        prepare=prepare,
    )


def _qkv(
    g: GraphBuilder, x: str, config: GteConfig, w: Callable[[str], np.ndarray]
) -> tuple[str, str, str]:
    if not config.pack_qkv:
        q, k, v = (
            g.linear(x, w(f"attention.{n}_proj.weight"), w(f"attention.{n}_proj.bias"), n)
            for n in "qkv"
        )
        return q, k, v
    # qkv_proj rows: q, k, v one after the other (split by all_head_size).
    weight, bias = w("attention.qkv_proj.weight"), w("attention.qkv_proj.bias")
    width = config.hidden_size
    q, k, v = (
        g.linear(x, weight[i * width : (i + 1) * width], bias[i * width : (i + 1) * width], n)
        for i, n in enumerate("qkv")
    )
    return q, k, v


def _norm(
    g: GraphBuilder, x: str, config: GteConfig, w: Callable[[str], np.ndarray], name: str
) -> str:
    if config.layer_norm_type == "rms_norm":
        return g.rms_norm(x, w(f"{name}.weight"), config.layer_norm_eps, name)
    return g.layer_norm(x, w(f"{name}.weight"), w(f"{name}.bias"), config.layer_norm_eps, name)
