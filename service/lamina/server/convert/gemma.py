"""Gemma 3 text models (Gemma3ForCausalLM, Gemma3TextModel, EmbeddingGemma) to an ONNX graph.

What sets Gemma 3 apart from the Llama family: every RMSNorm scales by (1 + weight); the token
embeddings are multiplied by sqrt(hidden_size); each block norms its attention and MLP outputs as
well as their inputs (four norms); queries and keys are RMS-normed per head; scores are scaled by
query_pre_attn_scalar ** -0.5; sliding-window layers, with their own RoPE base, alternate with
global ones; the MLP is a GELU (tanh) gate. EmbeddingGemma is the same model with
`use_bidirectional_attention`: full layers see every token, sliding layers a window reaching as far
to both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lamina.server.convert.attention import KeyControls, Rotary, key_window, multi_head_attention
from lamina.server.convert.checkpoint import SafetensorsWeights, pad_token_id
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.graph import FLOAT, GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.repository import signature
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

HF_ARCHITECTURES = ("Gemma3ForCausalLM", "Gemma3TextModel")
TEXT_MODEL_TYPE = "gemma3_text"
SLIDING = "sliding_attention"
FULL = "full_attention"
LAYER_TYPES = (SLIDING, FULL)
# transformers' names: the first two are the tanh approximation, "gelu" the exact (erf) form.
ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu")
ROPE_TYPES = ("default", "linear")
# Gemma3TextConfig's defaults, for configs that leave a field out.
_DEFAULT_THETA = {FULL: 1_000_000.0, SLIDING: 10_000.0}
_DEFAULT_PATTERN = 6
# The dtypes the embedding scale is rounded to (see GemmaConfig.embed_scale).
EMBED_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    factor: float = 1.0  # linear scaling: positions divided by factor


@dataclass(frozen=True)
class GemmaConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    hidden_activation: str
    query_pre_attn_scalar: float
    layer_types: tuple[str, ...]
    # The keys a sliding layer's query sees: distance < window_bound (a past distance when
    # causal, either side when bidirectional).
    window_bound: int
    rope: Mapping[str, RopeConfig]  # per layer type
    bidirectional: bool
    attention_bias: bool
    embed_scale: float  # sqrt(hidden_size), rounded to the checkpoint's dtype
    max_positions: int
    vocab_size: int

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_heads} is not a multiple of "
                f"num_key_value_heads {self.num_kv_heads}"
            )
        if len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
            )

    @property
    def scale(self) -> float:
        return float(self.query_pre_attn_scalar**-0.5)

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> GemmaConfig:
        """Gemma3TextConfig's reading of config.json, its defaults included."""
        model_type = config.get("model_type", TEXT_MODEL_TYPE)
        if model_type != TEXT_MODEL_TYPE:
            # A multimodal Gemma3Config nests the text model's fields under text_config: read
            # at the top level, every one of them would silently take its default.
            raise ValueError(
                f"model_type {model_type!r} is not supported for Gemma 3; only "
                f"{TEXT_MODEL_TYPE!r} (text-only checkpoints)"
            )
        # final_logit_softcapping caps the LM head's logits only, which no hidden state sees.
        softcap = config.get("attn_logit_softcapping")
        if softcap is not None:
            raise ValueError(
                f"attn_logit_softcapping {softcap!r} is not supported; only null (no softcapping)"
            )
        activation = str(config.get("hidden_activation") or "gelu_pytorch_tanh")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"hidden_activation {activation!r} is not supported; supported: {ACTIVATIONS}"
            )
        partial = config.get("partial_rotary_factor")
        if partial is not None and float(partial) != 1.0:
            raise ValueError(f"partial_rotary_factor {partial!r} is not supported; only 1.0")
        num_layers = int(config.get("num_hidden_layers", 26))
        layer_types = _layer_types(config, num_layers)
        bidirectional = bool(config.get("use_bidirectional_attention") or False)
        window = config.get("sliding_window", 4096)
        if window is None and SLIDING in layer_types:
            raise ValueError("sliding_window is null but layer_types has sliding_attention layers")
        window_bound = int(window or 0)
        if bidirectional:
            # transformers halves the window (Gemma3TextConfig.__post_init__) and lets a token see
            # the keys at distance < window // 2 + 1 on either side.
            window_bound = window_bound // 2 + 1
        heads = int(config.get("num_attention_heads", 8))
        hidden = int(config.get("hidden_size", 2304))
        return GemmaConfig(
            num_layers=num_layers,
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or 4),
            head_dim=int(config.get("head_dim") or 256),
            intermediate_size=int(config.get("intermediate_size", 9216)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            hidden_activation=activation,
            query_pre_attn_scalar=float(config.get("query_pre_attn_scalar", 256)),
            layer_types=layer_types,
            window_bound=window_bound,
            rope=_rope(config),
            bidirectional=bidirectional,
            attention_bias=bool(config.get("attention_bias", False)),
            embed_scale=embed_scale(hidden, _dtype(config)),
            max_positions=int(config.get("max_position_embeddings", 131_072)),
            vocab_size=int(config.get("vocab_size", 262_208)),
        )


def _layer_types(config: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    listed = config.get("layer_types")
    if listed is None:
        # Older configs give the pattern: every pattern-th layer is global, the rest sliding.
        pattern = int(config.get("sliding_window_pattern") or _DEFAULT_PATTERN)
        return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(num_layers))
    unknown = sorted({str(t) for t in listed} - set(LAYER_TYPES))
    if unknown:
        raise ValueError(f"layer_types {unknown} are not supported; supported: {LAYER_TYPES}")
    return tuple(str(t) for t in listed)


def _rope(config: Mapping[str, Any]) -> dict[str, RopeConfig]:
    """Per layer type, as Gemma3TextConfig.convert_rope_params_to_dict reads both layouts:
    `rope_parameters` keyed by layer type (transformers 5), or `rope_theta` (global layers),
    `rope_local_base_freq` (sliding layers) and `rope_scaling` (global layers only)."""
    given = config.get("rope_parameters") or {}
    unknown = sorted(set(given) - set(LAYER_TYPES))
    if unknown:
        raise ValueError(
            f"rope_parameters keys {unknown} are not supported; expected one entry per layer "
            f"type {LAYER_TYPES}"
        )
    params = {kind: dict(given.get(kind) or {}) for kind in LAYER_TYPES}
    if config.get("rope_scaling"):
        params[FULL].update(config["rope_scaling"])
    params[FULL].setdefault("rope_theta", config.get("rope_theta") or _DEFAULT_THETA[FULL])
    params[SLIDING].setdefault(
        "rope_theta", config.get("rope_local_base_freq") or _DEFAULT_THETA[SLIDING]
    )
    return {kind: _rope_of(kind, p) for kind, p in params.items()}


def _rope_of(kind: str, params: Mapping[str, Any]) -> RopeConfig:
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"rope_type {rope_type!r} ({kind} layers) is not supported; supported: {ROPE_TYPES}"
        )
    partial = params.get("partial_rotary_factor")
    if partial is not None and float(partial) != 1.0:
        raise ValueError(
            f"partial_rotary_factor {partial!r} ({kind} layers) is not supported; only 1.0"
        )
    factor = float(params["factor"]) if rope_type == "linear" else 1.0
    return RopeConfig(theta=float(params["rope_theta"]), factor=factor)


def _dtype(config: Mapping[str, Any]) -> str:
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    if dtype not in EMBED_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; supported: {EMBED_DTYPES}")
    return dtype


def embed_scale(hidden_size: int, dtype: str) -> float:
    """sqrt(hidden_size) as the model multiplies by it: in its own dtype (transformers and
    Gemma's reference code alike), so a bfloat16 checkpoint of width 3072 scales by 55.5, not
    55.4256. The graph computes in float32 either way."""
    value = np.array([np.sqrt(hidden_size)], np.float32)
    if dtype == "float16":
        return float(value.astype(np.float16)[0])
    if dtype == "bfloat16":
        bits = int(value.view(np.uint32)[0])
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # to nearest, ties to even
        return float(np.array([rounded], np.uint32).view(np.float32)[0])
    return float(value[0])


def expected_tensors(config: GemmaConfig) -> list[str]:
    names = ["embed_tokens.weight", "norm.weight"]
    for i in range(config.num_layers):
        p = f"layers.{i}"
        for norm in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "self_attn.q_norm",
            "self_attn.k_norm",
        ):
            names.append(f"{p}.{norm}.weight")
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append(f"{p}.self_attn.{proj}.weight")
            if config.attention_bias:
                names.append(f"{p}.self_attn.{proj}.bias")
        names += [f"{p}.mlp.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")]
    return names


def convert_gemma_folder(
    folder: Path, config: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    gemma_config = GemmaConfig.from_hf(config)
    # Gemma3ForCausalLM names its tensors model.*, Gemma3TextModel (EmbeddingGemma) bare.
    weights = SafetensorsWeights.open(folder, prefixes=("model.",))
    weights.require(expected_tensors(gemma_config), f"{folder} (Gemma 3)")
    sliding = gemma_config.layer_types.count(SLIDING)
    progress(
        f"building the Gemma 3 graph: {gemma_config.num_layers} blocks ({sliding} sliding), "
        f"hidden {gemma_config.hidden_size}"
        + (", bidirectional" if gemma_config.bidirectional else "")
    )
    return ConvertedModel(
        graph=build_gemma_graph(gemma_config, weights),
        tokenizer=load_plain_tokenizer(folder / "tokenizer.json"),
        family="gemma3",
        num_layers=gemma_config.num_layers,
        hidden_size=gemma_config.hidden_size,
        max_context_size=gemma_config.max_positions,
        vocab_size=gemma_config.vocab_size,
        pad_token_id=pad_token_id(config),
        token_embeddings=weights("embed_tokens.weight"),
        causal=not gemma_config.bidirectional,
    )


def build_gemma_graph(
    config: GemmaConfig, weights: Callable[[str], np.ndarray], name: str = "gemma3"
) -> onnx.ModelProto:
    """hidden_state_0 (scaled token embeddings) .. hidden_state_N (final norm applied), as
    transformers' output_hidden_states. `weights(name)` takes bare names (`layers.0...`)."""
    rotaries: dict[str, Rotary] = {}
    window: str | None = None

    def prepare(g: GraphBuilder) -> None:
        nonlocal window
        for kind in sorted(set(config.layer_types)):
            rotaries[kind] = _rotary(g, config.head_dim, config.rope[kind])
        if SLIDING in config.layer_types:
            window = key_window(g, config.window_bound, bidirectional=config.bidirectional)

    def embed(g: GraphBuilder) -> str:
        table = g.const("embed_tokens", weights("embed_tokens.weight"))
        tokens = g.op("Gather", [table, signature.INPUT_IDS], axis=0)
        return g.op("Mul", [tokens, g.const("embed_scale", np.float32(config.embed_scale))])

    def norm(g: GraphBuilder, x: str, weight: np.ndarray, hint: str) -> str:
        # Gemma's RMSNorm scales by (1 + weight), summed in float32 as transformers does.
        return g.rms_norm(x, np.float32(1.0) + weight.astype(np.float32), config.rms_norm_eps, hint)

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        p = f"layers.{index}"

        def w(suffix: str) -> np.ndarray:
            return weights(f"{p}.{suffix}")

        def linear(x: str, proj: str, hint: str) -> str:
            bias = w(f"{proj}.bias") if config.attention_bias else None
            return g.linear(x, w(f"{proj}.weight"), bias, hint)

        kind = config.layer_types[index]
        if kind == SLIDING:
            assert window is not None
            controls = controls.restricted(g, window)
        x = norm(g, hidden, w("input_layernorm.weight"), "attn_norm")
        q = linear(x, "self_attn.q_proj", "q")
        k = linear(x, "self_attn.k_proj", "k")
        v = linear(x, "self_attn.v_proj", "v")
        context = multi_head_attention(
            g,
            q,
            k,
            v,
            controls,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            rotary=rotaries[kind],
            scale=config.scale,
            head_norms=(
                lambda b, t: norm(b, t, w("self_attn.q_norm.weight"), "q_norm"),
                lambda b, t: norm(b, t, w("self_attn.k_norm.weight"), "k_norm"),
            ),
        )
        attn = linear(context, "self_attn.o_proj", "o")
        hidden = g.op(
            "Add", [hidden, norm(g, attn, w("post_attention_layernorm.weight"), "attn_post_norm")]
        )
        x = norm(g, hidden, w("pre_feedforward_layernorm.weight"), "ffn_norm")
        gate = g.linear(x, w("mlp.gate_proj.weight"), None, "gate")
        up = g.linear(x, w("mlp.up_proj.weight"), None, "up")
        down = g.linear(
            g.op("Mul", [g.activation(gate, config.hidden_activation), up]),
            w("mlp.down_proj.weight"),
            None,
            "down",
        )
        return g.op(
            "Add", [hidden, norm(g, down, w("post_feedforward_layernorm.weight"), "ffn_post_norm")]
        )

    def final(g: GraphBuilder, hidden: str) -> str:
        return norm(g, hidden, weights("norm.weight"), "final_norm")

    return layered_graph(
        name,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        causal=not config.bidirectional,
        embed=embed,
        block=block,
        final=final,
        prepare=prepare,
    )


def _rotary(g: GraphBuilder, head_dim: int, rope: RopeConfig) -> Rotary:
    """cos, sin [1, 1, sequence, head_dim] computed for the run's positions rather than looked up:
    Gemma 3 declares up to 131072 positions, and tables of that length for head_dim 256 would
    hold 128 MB per table. The angles are float32 products position * inv_freq, as in
    transformers (linear scaling divides inv_freq by its factor)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(rope.theta), exponents)).astype(np.float32)
    inv_freq = (inv_freq / np.float32(rope.factor)).astype(np.float32)
    positions = g.op("Cast", [g.positions(signature.INPUT_IDS)], to=FLOAT)
    column = g.op("Unsqueeze", [positions, g.const("axis_1", [1])])
    angles = g.op("Mul", [column, g.const("rope_inv_freq", inv_freq)])  # [sequence, d / 2]
    table = g.op("Concat", [angles, angles], axis=-1)

    def rows(op_type: str) -> str:
        return g.op("Unsqueeze", [g.op(op_type, [table]), g.const("axes_0_1", [0, 1])])

    return Rotary(rows("Cos"), rows("Sin"), head_dim // 2)
