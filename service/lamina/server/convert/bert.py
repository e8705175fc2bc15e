"""BERT-family encoders (BertModel, MiniLM) from Hugging Face weights to an ONNX graph.

The embeddings and the post-norm block are shared with the encoders built like BERT (roberta.py,
mpnet.py), which differ only in where positions start, token types, a relative position bias and
the names of their tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lamina.server.convert.attention import KeyControls, multi_head_attention
from lamina.server.convert.checkpoint import SafetensorsWeights, pad_token_id
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.graph import GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.repository import signature
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

HF_ARCHITECTURES = ("BertModel",)

# The two activations BERT checkpoints use; "gelu" is the exact (erf) form in transformers.
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")

Weights = Callable[[str], np.ndarray]
# Position ids [batch or 1, sequence] (or [sequence]) for the position embedding table.
PositionIds = Callable[[GraphBuilder], str]

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
POSITION_EMBEDDINGS = "embeddings.position_embeddings.weight"
TOKEN_TYPE_EMBEDDINGS = "embeddings.token_type_embeddings.weight"
EMBEDDINGS_NORM = ("embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias")


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
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"position_embedding_type {position_type!r} is not supported; only 'absolute' is"
            )
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


@dataclass(frozen=True)
class BlockNames:
    """Where one block's tensors sit, below `encoder.layer.<i>.`: BERT's names by default."""

    query: str = "attention.self.query"
    key: str = "attention.self.key"
    value: str = "attention.self.value"
    attention_output: str = "attention.output.dense"
    attention_norm: str = "attention.output.LayerNorm"
    up: str = "intermediate.dense"
    down: str = "output.dense"
    ffn_norm: str = "output.LayerNorm"

    def tensors(self, index: int) -> list[str]:
        p = f"encoder.layer.{index}"
        names: list[str] = []
        linears = (self.query, self.key, self.value, self.attention_output, self.up, self.down)
        for part in linears:
            names += [f"{p}.{part}.weight", f"{p}.{part}.bias"]
        for norm in (self.attention_norm, self.ffn_norm):
            names += [f"{p}.{norm}.weight", f"{p}.{norm}.bias"]
        return names


BERT_BLOCK = BlockNames()


def expected_tensors(config: BertConfig) -> list[str]:
    names = [WORD_EMBEDDINGS, POSITION_EMBEDDINGS, TOKEN_TYPE_EMBEDDINGS, *EMBEDDINGS_NORM]
    return names + block_tensors(config.num_layers)


def block_tensors(num_layers: int, names: BlockNames = BERT_BLOCK) -> list[str]:
    return [tensor for index in range(num_layers) for tensor in names.tensors(index)]


def convert_bert_folder(
    folder: Path, config: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    bert_config = BertConfig.from_hf(config)
    weights = SafetensorsWeights.open(folder, prefixes=("bert.",))
    weights.require(expected_tensors(bert_config), f"{folder} (BertModel)")
    progress(
        f"building the BERT graph: {bert_config.num_layers} blocks, "
        f"hidden {bert_config.hidden_size}"
    )
    return ConvertedModel.of_text(
        bert_config,
        graph=build_bert_graph(bert_config, weights),
        tokenizer=load_plain_tokenizer(folder / "tokenizer.json"),
        family="bert",
        pad_token_id=pad_token_id(config),
        token_embeddings=weights(WORD_EMBEDDINGS),
    )


def build_bert_graph(config: BertConfig, weights: Weights) -> onnx.ModelProto:
    """The encoder with hidden_state_0 (embedding output) .. hidden_state_N as outputs.

    `weights(name)` returns a tensor by its Hugging Face name (without a "bert." prefix).
    """

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        return encoder_block(g, config, weights, index, hidden, controls)

    return layered_graph(
        "bert",
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        causal=False,
        embed=lambda g: embeddings(g, config, weights),
        block=block,
    )


def encoder_block(
    g: GraphBuilder,
    config: BertConfig,
    weights: Weights,
    index: int,
    hidden: str,
    controls: KeyControls,
    *,
    names: BlockNames = BERT_BLOCK,
    score_bias: str | None = None,
) -> str:
    """One post-norm block: LN(x + attention(x)), then LN(x + down(act(up(x)))).

    `score_bias` (broadcastable to [batch, heads, query, key]) is added to every head's scaled
    scores (MPNet's relative position bias)."""
    head_dim = config.hidden_size // config.num_heads

    def w(part: str, kind: str) -> np.ndarray:
        return weights(f"encoder.layer.{index}.{part}.{kind}")

    q = g.linear(hidden, w(names.query, "weight"), w(names.query, "bias"), "q")
    k = g.linear(hidden, w(names.key, "weight"), w(names.key, "bias"), "k")
    v = g.linear(hidden, w(names.value, "weight"), w(names.value, "bias"), "v")
    context = multi_head_attention(
        g,
        q,
        k,
        v,
        controls,
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        head_dim=head_dim,
        score_bias=score_bias,
    )
    attn = g.linear(
        context, w(names.attention_output, "weight"), w(names.attention_output, "bias"), "o"
    )
    hidden = g.layer_norm(
        g.op("Add", [attn, hidden]),
        w(names.attention_norm, "weight"),
        w(names.attention_norm, "bias"),
        config.layer_norm_eps,
        "ln_attn",
    )
    up = g.linear(hidden, w(names.up, "weight"), w(names.up, "bias"), "up")
    down = g.linear(
        g.activation(up, config.hidden_act),
        w(names.down, "weight"),
        w(names.down, "bias"),
        "down",
    )
    return g.layer_norm(
        g.op("Add", [down, hidden]),
        w(names.ffn_norm, "weight"),
        w(names.ffn_norm, "bias"),
        config.layer_norm_eps,
        "ln_ffn",
    )


def sequential_positions(g: GraphBuilder) -> str:
    """BERT's position ids: 0 .. sequence - 1."""
    return g.positions(signature.INPUT_IDS)


def embeddings(
    g: GraphBuilder,
    config: BertConfig,
    weights: Weights,
    *,
    position_ids: PositionIds = sequential_positions,
    token_types: bool = True,
) -> str:
    """LN(word + token type 0 + position): `token_types=False` for checkpoints without them."""
    words = words_of_one_segment(g, weights, token_types=token_types)
    positions = position_ids(g)
    position_table = g.const("position_embeddings", weights(POSITION_EMBEDDINGS))
    position_vectors = g.op("Gather", [position_table, positions], axis=0)
    summed = g.op("Add", [words, position_vectors])
    return g.layer_norm(
        summed,
        weights(EMBEDDINGS_NORM[0]),
        weights(EMBEDDINGS_NORM[1]),
        config.layer_norm_eps,
        "ln_embeddings",
    )


def words_of_one_segment(g: GraphBuilder, weights: Weights, *, token_types: bool) -> str:
    """Word embeddings, plus token type 0 where the checkpoint has token types: every Lamina
    prompt is one segment."""
    words = g.op(
        "Gather",
        [g.const("word_embeddings", weights(WORD_EMBEDDINGS)), signature.INPUT_IDS],
        axis=0,
    )
    if not token_types:
        return words
    token_type = weights(TOKEN_TYPE_EMBEDDINGS)[0]
    return g.op("Add", [words, g.const("token_type_0", token_type.astype(np.float32))])
