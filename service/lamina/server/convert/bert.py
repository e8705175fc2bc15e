"""BERT-family encoders (BertModel, MiniLM) from Hugging Face weights to an ONNX graph."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lamina.server.convert.attention import KeyControls, multi_head_attention
from lamina.server.convert.graph import GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.repository import signature

# The two activations BERT checkpoints use; "gelu" is the exact (erf) form in transformers.
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclass(frozen=True)
class BertConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    vocab_size: int
    layer_norm_eps: float
    hidden_act: str

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> BertConfig:
        hidden_act = str(config.get("hidden_act", "gelu"))
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {hidden_act!r} is not supported; expected one of {_ACTIVATIONS}"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported for BERT")
        return BertConfig(
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=int(config["hidden_size"]),
            num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            max_positions=int(config["max_position_embeddings"]),
            vocab_size=int(config["vocab_size"]),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            hidden_act=hidden_act,
        )


def expected_tensors(config: BertConfig) -> list[str]:
    names = [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    ]
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        for part in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ):
            names += [f"{p}.{part}.weight", f"{p}.{part}.bias"]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            names += [f"{p}.{norm}.weight", f"{p}.{norm}.bias"]
    return names


def build_bert_graph(config: BertConfig, weights: Callable[[str], np.ndarray]) -> onnx.ModelProto:
    """The encoder with hidden_state_0 (embedding output) .. hidden_state_N as outputs.

    `weights(name)` returns a tensor by its Hugging Face name (without a "bert." prefix).
    """
    head_dim = config.hidden_size // config.num_heads

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        def w(suffix: str) -> np.ndarray:
            return weights(f"encoder.layer.{index}.{suffix}")

        q = g.linear(hidden, w("attention.self.query.weight"), w("attention.self.query.bias"), "q")
        k = g.linear(hidden, w("attention.self.key.weight"), w("attention.self.key.bias"), "k")
        v = g.linear(hidden, w("attention.self.value.weight"), w("attention.self.value.bias"), "v")
        context = multi_head_attention(
            g,
            q,
            k,
            v,
            controls,
            num_heads=config.num_heads,
            num_kv_heads=config.num_heads,
            head_dim=head_dim,
        )
        attn = g.linear(
            context, w("attention.output.dense.weight"), w("attention.output.dense.bias"), "o"
        )
        hidden = g.layer_norm(
            g.op("Add", [attn, hidden]),
            w("attention.output.LayerNorm.weight"),
            w("attention.output.LayerNorm.bias"),
            config.layer_norm_eps,
            "ln_attn",
        )
        up = g.linear(hidden, w("intermediate.dense.weight"), w("intermediate.dense.bias"), "up")
        down = g.linear(
            _activation(g, up, config.hidden_act),
            w("output.dense.weight"),
            w("output.dense.bias"),
            "down",
        )
        return g.layer_norm(
            g.op("Add", [down, hidden]),
            w("output.LayerNorm.weight"),
            w("output.LayerNorm.bias"),
            config.layer_norm_eps,
            "ln_ffn",
        )

    return layered_graph(
        "bert",
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        causal=False,
        embed=lambda g: _embeddings(g, config, weights),
        block=block,
    )


def _embeddings(g: GraphBuilder, config: BertConfig, weights: Callable[[str], np.ndarray]) -> str:
    words = g.op(
        "Gather",
        [
            g.const("word_embeddings", weights("embeddings.word_embeddings.weight")),
            signature.INPUT_IDS,
        ],
        axis=0,
    )
    # Every Lamina prompt is one segment, so token type 0 is added to every position.
    token_type = weights("embeddings.token_type_embeddings.weight")[0]
    with_type = g.op("Add", [words, g.const("token_type_0", token_type.astype(np.float32))])
    positions = g.positions(signature.INPUT_IDS)
    position_table = g.const(
        "position_embeddings", weights("embeddings.position_embeddings.weight")
    )
    position_vectors = g.op("Gather", [position_table, positions], axis=0)
    summed = g.op("Add", [with_type, position_vectors])
    return g.layer_norm(
        summed,
        weights("embeddings.LayerNorm.weight"),
        weights("embeddings.LayerNorm.bias"),
        config.layer_norm_eps,
        "ln_embeddings",
    )


def _activation(g: GraphBuilder, x: str, kind: str) -> str:
    if kind == "relu":
        return g.op("Relu", [x])
    if kind == "gelu":
        return g.gelu(x)
    # tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    cube = g.op("Mul", [g.op("Mul", [x, x]), x])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.const("c", np.float32(0.044715))])])
    tanh = g.op("Tanh", [g.op("Mul", [inner, g.const("k", np.float32(np.sqrt(2.0 / np.pi)))])])
    gate = g.op("Add", [tanh, g.const("one", np.float32(1.0))])
    return g.op("Mul", [g.op("Mul", [x, gate]), g.const("half", np.float32(0.5))])
