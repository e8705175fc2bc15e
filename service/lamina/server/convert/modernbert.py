"""ModernBERT encoders (ModernBertModel, ModernBertForMaskedLM) to an ONNX graph.

Pre-norm blocks with rotary positions, a theta per attention kind, global attention every n-th
layer and a bidirectional sliding window in the others, a GeGLU MLP, LayerNorms whose bias is
optional, and a final norm that transformers' output_hidden_states applies to the last hidden
state only. The masked-LM head is no hidden state: only the encoder is converted.
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
from lamina.server.convert.graph import GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.repository import signature
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

# The masked-LM checkpoints keep the encoder under "model."; ModernBertModel has no prefix.
HF_ARCHITECTURES = ("ModernBertModel", "ModernBertForMaskedLM")

GLOBAL = "full_attention"
LOCAL = "sliding_attention"
_LAYER_TYPES = (GLOBAL, LOCAL)
# Activations of the GeGLU's input half; "gelu" is the exact (erf) form in transformers.
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
# transformers' defaults when a config names neither rope_parameters nor the old theta keys.
_DEFAULT_THETA = {GLOBAL: 160_000.0, LOCAL: 10_000.0}
_OLD_THETA_KEYS = {GLOBAL: "global_rope_theta", LOCAL: "local_rope_theta"}


@dataclass(frozen=True)
class ModernBertConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    vocab_size: int
    norm_eps: float
    hidden_act: str
    attention_bias: bool  # on Wqkv and attn.Wo
    mlp_bias: bool  # on Wi and mlp.Wo
    norm_bias: bool  # on every LayerNorm
    local_attention: int  # the whole window: a query sees keys up to half of it on each side
    layer_types: tuple[str, ...]  # GLOBAL or LOCAL per layer
    rope_theta: Mapping[str, float]  # per layer type

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head size {self.head_dim} is odd; rotary positions need it even")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def half_window(self) -> int:
        """transformers' sliding_window: |query - key| <= local_attention // 2 is seen."""
        return self.local_attention // 2

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> ModernBertConfig:
        hidden_act = str(config.get("hidden_activation", "gelu"))
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_activation {hidden_act!r} is not supported; expected one of {_ACTIVATIONS}"
            )
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        head_dim = config.get("head_dim")
        if head_dim is not None and int(head_dim) != hidden // heads:
            # transformers' attention always splits hidden_size evenly: another head_dim would
            # only reach its rotary tables.
            raise ValueError(
                f"head_dim {head_dim} is not supported; ModernBERT heads are "
                f"hidden_size / num_attention_heads = {hidden // heads}"
            )
        num_layers = int(config["num_hidden_layers"])
        return ModernBertConfig(
            num_layers=num_layers,
            hidden_size=hidden,
            num_heads=heads,
            intermediate_size=int(config["intermediate_size"]),
            max_positions=int(config.get("max_position_embeddings", 8192)),
            vocab_size=int(config["vocab_size"]),
            norm_eps=float(config.get("norm_eps", 1e-5)),
            hidden_act=hidden_act,
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            norm_bias=bool(config.get("norm_bias", False)),
            local_attention=int(config.get("local_attention", 128)),
            layer_types=layer_types(config, num_layers),
            rope_theta=rope_thetas(config),
        )


def layer_types(config: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    """`layer_types` as transformers 5 writes it, else the older `global_attn_every_n_layers`
    (layer i is global when i % n == 0, so layer 0 always is)."""
    listed = config.get("layer_types")
    if listed is not None:
        types = tuple(str(kind) for kind in listed)
        unknown = sorted(set(types) - set(_LAYER_TYPES))
        if unknown:
            raise ValueError(
                f"layer_types {unknown} are not supported; expected each of {_LAYER_TYPES}"
            )
        if len(types) != num_layers:
            raise ValueError(
                f"layer_types names {len(types)} layers but num_hidden_layers is {num_layers}"
            )
        return types
    every = int(config.get("global_attn_every_n_layers", 3))
    if every < 1:
        raise ValueError(f"global_attn_every_n_layers {every} is not supported; it must be >= 1")
    return tuple(LOCAL if i % every else GLOBAL for i in range(num_layers))


def rope_thetas(config: Mapping[str, Any]) -> dict[str, float]:
    """The rotary base per layer type: `rope_parameters` (transformers 5), else
    `global_rope_theta` / `local_rope_theta`; only plain (default) RoPE is supported."""
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ValueError(f"rope_scaling {scaling!r} is not supported; only plain RoPE is")
    parameters = config.get("rope_parameters") or {}
    if not set(parameters) <= set(_LAYER_TYPES):
        raise ValueError(
            f"rope_parameters {parameters!r} is not supported; ModernBERT's names "
            f"{' and '.join(_LAYER_TYPES)}"
        )
    thetas: dict[str, float] = {}
    for kind in _LAYER_TYPES:
        own = parameters.get(kind) or {}
        rope_type = own.get("rope_type", own.get("type", "default"))
        if rope_type != "default":
            raise ValueError(
                f"rope_parameters[{kind!r}] rope_type {rope_type!r} is not supported; "
                "only 'default' (plain RoPE) is"
            )
        theta = own.get("rope_theta", config.get(_OLD_THETA_KEYS[kind]))
        if theta is not None:
            thetas[kind] = float(theta)
    thetas.setdefault(GLOBAL, _DEFAULT_THETA[GLOBAL])
    if LOCAL not in thetas:
        # An explicit null local_rope_theta meant "the global one" in the original ModernBERT.
        explicit_null = "local_rope_theta" in config
        thetas[LOCAL] = thetas[GLOBAL] if explicit_null else _DEFAULT_THETA[LOCAL]
    return thetas


def expected_tensors(config: ModernBertConfig) -> list[str]:
    def norm(name: str) -> list[str]:
        return [f"{name}.weight"] + ([f"{name}.bias"] if config.norm_bias else [])

    def linear(name: str, bias: bool) -> list[str]:
        return [f"{name}.weight"] + ([f"{name}.bias"] if bias else [])

    names = ["embeddings.tok_embeddings.weight", *norm("embeddings.norm"), *norm("final_norm")]
    for i in range(config.num_layers):
        p = f"layers.{i}"
        if i > 0:  # block 0 reads the normed embeddings as they are (attn_norm is the identity)
            names += norm(f"{p}.attn_norm")
        names += norm(f"{p}.mlp_norm")
        names += linear(f"{p}.attn.Wqkv", config.attention_bias)
        names += linear(f"{p}.attn.Wo", config.attention_bias)
        names += linear(f"{p}.mlp.Wi", config.mlp_bias)
        names += linear(f"{p}.mlp.Wo", config.mlp_bias)
    return names


def convert_modernbert_folder(
    folder: Path, config: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    """A Hugging Face folder of either architecture, as a ConvertedModel."""
    parsed = ModernBertConfig.from_hf(config)
    weights = SafetensorsWeights.open(folder, prefixes=("model.",))
    weights.require(expected_tensors(parsed), f"{folder} (ModernBERT)")
    local = sum(kind == LOCAL for kind in parsed.layer_types)
    progress(
        f"building the ModernBERT graph: {parsed.num_layers} blocks ({local} local), "
        f"hidden {parsed.hidden_size}"
    )
    return ConvertedModel.of_text(
        parsed,
        graph=build_modernbert_graph(parsed, weights),
        tokenizer=load_plain_tokenizer(folder / "tokenizer.json"),
        family="modernbert",
        pad_token_id=pad_token_id(config),
        token_embeddings=weights("embeddings.tok_embeddings.weight"),
    )


def build_modernbert_graph(
    config: ModernBertConfig, weights: Callable[[str], np.ndarray]
) -> onnx.ModelProto:
    """hidden_state_0 (normed embeddings) .. hidden_state_N (final norm applied), as
    transformers' output_hidden_states. `weights(name)` takes bare names
    (`layers.0.mlp.Wi.weight`)."""
    rotaries: dict[str, Rotary] = {}
    windows: list[str] = []
    hidden_size, inner = config.hidden_size, config.intermediate_size

    def prepare(g: GraphBuilder) -> None:
        for kind in sorted(set(config.layer_types)):
            rotaries[kind] = Rotary.build(
                g,
                head_dim=config.head_dim,
                theta=config.rope_theta[kind],
                max_positions=config.max_positions,
            )
        if LOCAL in config.layer_types:
            windows.append(key_window(g, config.half_window + 1, bidirectional=True))

    def norm(g: GraphBuilder, name: str, x: str, hint: str) -> str:
        bias = weights(f"{name}.bias") if config.norm_bias else np.zeros(hidden_size, np.float32)
        return g.layer_norm(x, weights(f"{name}.weight"), bias, config.norm_eps, hint)

    def embed(g: GraphBuilder) -> str:
        table = g.const("tok_embeddings", weights("embeddings.tok_embeddings.weight"))
        tokens = g.op("Gather", [table, signature.INPUT_IDS], axis=0)
        return norm(g, "embeddings.norm", tokens, "ln_embeddings")

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        p = f"layers.{index}"

        def row_blocks(
            name: str, bias: bool, sizes: tuple[int, ...]
        ) -> list[tuple[np.ndarray, np.ndarray | None]]:
            """A fused projection's row blocks (Wqkv: q, k, v; Wi: input, gate), in order."""
            weight = weights(f"{p}.{name}.weight")
            if weight.shape[0] != sum(sizes):
                raise ValueError(
                    f"{p}.{name}.weight has {weight.shape[0]} rows, expected {sum(sizes)}"
                )
            cuts = np.cumsum(sizes)[:-1]
            biases = np.split(weights(f"{p}.{name}.bias"), cuts) if bias else [None] * len(sizes)
            return list(zip(np.split(weight, cuts, axis=0), biases, strict=True))

        def b(name: str, bias: bool) -> np.ndarray | None:
            return weights(f"{p}.{name}.bias") if bias else None

        x = hidden if index == 0 else norm(g, f"{p}.attn_norm", hidden, "attn_norm")
        (wq, bq), (wk, bk), (wv, bv) = row_blocks(
            "attn.Wqkv", config.attention_bias, (hidden_size,) * 3
        )
        q, k, v = g.linear(x, wq, bq, "q"), g.linear(x, wk, bk, "k"), g.linear(x, wv, bv, "v")
        kind = config.layer_types[index]
        # The window is and-ed into the controls per local block: the controls are built by
        # layered_graph after `prepare`, and an [b, 1, s, s] And is small next to attention.
        seen = controls.restricted(g, windows[0]) if kind == LOCAL else controls
        context = multi_head_attention(
            g,
            q,
            k,
            v,
            seen,
            num_heads=config.num_heads,
            num_kv_heads=config.num_heads,
            head_dim=config.head_dim,
            rotary=rotaries[kind],
        )
        attn = g.linear(
            context, weights(f"{p}.attn.Wo.weight"), b("attn.Wo", config.attention_bias), "o"
        )
        hidden = g.op("Add", [hidden, attn])
        x = norm(g, f"{p}.mlp_norm", hidden, "mlp_norm")
        (w_in, b_in), (w_gate, b_gate) = row_blocks("mlp.Wi", config.mlp_bias, (inner, inner))
        gated = g.op(
            "Mul",
            [
                g.activation(g.linear(x, w_in, b_in, "up"), config.hidden_act),
                g.linear(x, w_gate, b_gate, "gate"),
            ],
        )
        down = g.linear(gated, weights(f"{p}.mlp.Wo.weight"), b("mlp.Wo", config.mlp_bias), "down")
        return g.op("Add", [hidden, down])

    def final(g: GraphBuilder, hidden: str) -> str:
        return norm(g, "final_norm", hidden, "final_norm")

    return layered_graph(
        "modernbert",
        num_layers=config.num_layers,
        hidden_size=hidden_size,
        causal=False,
        embed=embed,
        block=block,
        final=final,
        prepare=prepare,
    )
