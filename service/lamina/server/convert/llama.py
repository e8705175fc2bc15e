"""Llama-family decoders (Llama, Mistral, Qwen2, Qwen3, SmolLM2) to an ONNX graph.

RoPE, grouped-query attention, RMSNorm and a SwiGLU MLP; causal and padding masks. Tied or untied
embeddings make no difference here: the LM head is not part of any hidden state. Qwen3 adds an
RMSNorm over each query and key head before RoPE (`LlamaConfig.qk_norm`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tokenizers import Tokenizer

from lamina.server.convert.attention import HeadNorm, KeyControls, Rotary, multi_head_attention
from lamina.server.convert.checkpoint import SafetensorsWeights, pad_token_id
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.graph import GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.repository import signature
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "LlamaModel": "llama",
    "MistralForCausalLM": "mistral",
    "MistralModel": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2Model": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3Model": "qwen3",  # Qwen3-Embedding
}

# transformers' names for SiLU, the only gate activation the SwiGLU block builds.
SILU_NAMES = ("silu", "swish")


@dataclass(frozen=True)
class LlamaConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    max_positions: int
    vocab_size: int
    attention_bias: bool  # bias on q, k, v (Qwen2 always; Llama when configured)
    output_bias: bool  # bias on o_proj (Llama's attention_bias covers it too)
    mlp_bias: bool
    qk_norm: bool = False  # RMSNorm over each query and key head before RoPE (Qwen3)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_heads} is not a multiple of "
                f"num_key_value_heads {self.num_kv_heads}"
            )

    @staticmethod
    def from_hf(config: Mapping[str, Any], family: str) -> LlamaConfig:
        theta = read_rope_theta(config)
        activation = config.get("hidden_act", "silu")
        if activation not in SILU_NAMES:
            raise ValueError(
                f"hidden_act {activation!r} is not supported; supported: {', '.join(SILU_NAMES)}"
            )
        qwen3 = family == "qwen3"
        if qwen3:
            refuse_sliding_layers(config)
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        positions = int(config.get("max_position_embeddings", 2048))
        window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
        if family == "mistral" and window:
            # Beyond the window full attention would differ from the model's: cap the context.
            positions = min(positions, int(window))
        qwen = family == "qwen2"
        llama_bias = bool(config.get("attention_bias", False))
        return LlamaConfig(
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            max_positions=positions,
            vocab_size=int(config["vocab_size"]),
            attention_bias=qwen or llama_bias,
            output_bias=llama_bias,
            # Qwen3's MLP never has biases, whatever `mlp_bias` a config carries.
            mlp_bias=not qwen3 and bool(config.get("mlp_bias", False)),
            qk_norm=qwen3,
        )


def read_rope_theta(config: Mapping[str, Any]) -> float:
    """RoPE's base, from either spelling: transformers 5 writes `rope_parameters`, earlier
    versions `rope_theta` and `rope_scaling`. Only plain RoPE over the whole head is built, so
    any scaling, a partial rotary factor or per-layer-type parameters are refused."""
    for key in ("rope_scaling", "rope_parameters"):
        scaling = config.get(key)
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ValueError(f"{key} {scaling!r} is not supported; only plain RoPE is")
    parameters: Mapping[str, Any] = config.get("rope_parameters") or {}
    if any(isinstance(value, Mapping) for value in parameters.values()):
        raise ValueError(
            f"rope_parameters {dict(parameters)!r} differ per layer type; not supported: "
            "only one plain RoPE for every layer is"
        )
    partial = parameters.get("partial_rotary_factor", config.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise ValueError(
            f"partial_rotary_factor {partial!r} is not supported; only RoPE over the whole "
            "head (1.0) is"
        )
    return float(parameters.get("rope_theta", config.get("rope_theta", 10000.0)))


def refuse_sliding_layers(config: Mapping[str, Any]) -> None:
    """Qwen3 configs carry sliding-window options, off in every released checkpoint. Where they
    would put a layer behind a window (as transformers derives `layer_types`), refuse: full
    attention there would differ from the model's."""
    layers = int(config["num_hidden_layers"])
    on = bool(config.get("use_sliding_window", False))
    window = config.get("sliding_window") if on else None
    first_windowed = int(config.get("max_window_layers") or 0)
    types = config.get("layer_types") or [
        "sliding_attention" if window is not None and i >= first_windowed else "full_attention"
        for i in range(layers)
    ]
    windowed = [i for i, kind in enumerate(types) if kind != "full_attention"]
    if windowed:
        raise ValueError(
            f"sliding-window attention (use_sliding_window {on}, sliding_window "
            f"{config.get('sliding_window')!r}, max_window_layers "
            f"{config.get('max_window_layers')!r}, layer_types of layers {windowed}: "
            f"{sorted(set(types[i] for i in windowed))}) is not supported; "
            "only full attention in every layer (use_sliding_window false) is"
        )


def expected_tensors(config: LlamaConfig) -> list[str]:
    names = ["embed_tokens.weight", "norm.weight"]
    for i in range(config.num_layers):
        p = f"layers.{i}"
        names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
        for proj in ("q_proj", "k_proj", "v_proj"):
            names.append(f"{p}.self_attn.{proj}.weight")
            if config.attention_bias:
                names.append(f"{p}.self_attn.{proj}.bias")
        if config.qk_norm:
            names += [f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"]
        names.append(f"{p}.self_attn.o_proj.weight")
        if config.output_bias:
            names.append(f"{p}.self_attn.o_proj.bias")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.append(f"{p}.mlp.{proj}.weight")
            if config.mlp_bias:
                names.append(f"{p}.mlp.{proj}.bias")
    return names


def convert_llama_folder(
    folder: Path, config: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    architecture = str(config["architectures"][0])
    family = HF_ARCHITECTURES[architecture]
    llama_config = LlamaConfig.from_hf(config, family)
    weights = SafetensorsWeights.open(folder, prefixes=("model.",))
    weights.require(expected_tensors(llama_config), f"{folder} ({architecture})")
    progress(
        f"building the {family} graph: {llama_config.num_layers} blocks, "
        f"hidden {llama_config.hidden_size}"
    )
    tokenizer = load_plain_tokenizer(folder / "tokenizer.json")
    return convert_llama(llama_config, weights, tokenizer, pad_token_id(config))


def convert_llama(
    config: LlamaConfig,
    weights: Callable[[str], np.ndarray],
    tokenizer: Tokenizer,
    pad_token_id: int,
) -> ConvertedModel:
    """The graph and what the manifest records, for any source of Llama-family weights."""
    return ConvertedModel(
        graph=build_llama_graph(config, weights),
        tokenizer=tokenizer,
        family="llama",
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        max_context_size=config.max_positions,
        vocab_size=config.vocab_size,
        pad_token_id=pad_token_id,
        token_embeddings=weights("embed_tokens.weight"),
        causal=True,
    )


def build_llama_graph(
    config: LlamaConfig,
    weights: Callable[[str], np.ndarray],
    splice: Callable[[GraphBuilder, str], str] | None = None,
    name: str = "llama",
) -> onnx.ModelProto:
    """hidden_state_0 (token embeddings) .. hidden_state_N (final norm applied), as transformers'
    output_hidden_states. `weights(name)` takes bare names (`layers.0.mlp.up_proj.weight`).
    `splice(g, token_embeddings)` may replace positions of the input embeddings (images)."""
    rotary: Rotary | None = None

    def prepare(g: GraphBuilder) -> None:
        nonlocal rotary
        rotary = Rotary.build(
            g, head_dim=config.head_dim, theta=config.rope_theta, max_positions=config.max_positions
        )

    def embed(g: GraphBuilder) -> str:
        table = g.const("embed_tokens", weights("embed_tokens.weight"))
        tokens = g.op("Gather", [table, signature.INPUT_IDS], axis=0)
        return tokens if splice is None else splice(g, tokens)

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        p = f"layers.{index}"

        def w(suffix: str) -> np.ndarray:
            return weights(f"{p}.{suffix}")

        def b(suffix: str, present: bool) -> np.ndarray | None:
            return weights(f"{p}.{suffix}") if present else None

        eps = config.rms_norm_eps
        x = g.rms_norm(hidden, w("input_layernorm.weight"), eps, "attn_norm")
        bias = config.attention_bias
        q = g.linear(x, w("self_attn.q_proj.weight"), b("self_attn.q_proj.bias", bias), "q")
        k = g.linear(x, w("self_attn.k_proj.weight"), b("self_attn.k_proj.bias", bias), "k")
        v = g.linear(x, w("self_attn.v_proj.weight"), b("self_attn.v_proj.bias", bias), "v")
        head_norms = None
        if config.qk_norm:
            head_norms = (
                head_rms_norm(w("self_attn.q_norm.weight"), eps, "q_norm"),
                head_rms_norm(w("self_attn.k_norm.weight"), eps, "k_norm"),
            )
        context = multi_head_attention(
            g,
            q,
            k,
            v,
            controls,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            rotary=rotary,
            head_norms=head_norms,
        )
        attn = g.linear(
            context,
            w("self_attn.o_proj.weight"),
            b("self_attn.o_proj.bias", config.output_bias),
            "o",
        )
        hidden = g.op("Add", [hidden, attn])
        x = g.rms_norm(hidden, w("post_attention_layernorm.weight"), eps, "ffn_norm")
        mlp_bias = config.mlp_bias
        gate = g.linear(x, w("mlp.gate_proj.weight"), b("mlp.gate_proj.bias", mlp_bias), "gate")
        up = g.linear(x, w("mlp.up_proj.weight"), b("mlp.up_proj.bias", mlp_bias), "up")
        swish = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        down = g.linear(
            g.op("Mul", [swish, up]),
            w("mlp.down_proj.weight"),
            b("mlp.down_proj.bias", mlp_bias),
            "down",
        )
        return g.op("Add", [hidden, down])

    def final(g: GraphBuilder, hidden: str) -> str:
        return g.rms_norm(hidden, weights("norm.weight"), config.rms_norm_eps, "final_norm")

    return layered_graph(
        name,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        causal=True,
        embed=embed,
        block=block,
        final=final,
        prepare=prepare,
    )


def head_rms_norm(weight: np.ndarray, eps: float, hint: str) -> HeadNorm:
    """RMSNorm over the head dimension of [batch, heads, sequence, head_dim] (Qwen3's q_norm and
    k_norm: one weight of head_dim shared by every head)."""
    return lambda g, x: g.rms_norm(x, weight, eps, hint)
