"""MPNet encoders (MPNetModel: all-mpnet-base-v2) to an ONNX graph.

BERT's post-norm blocks under other tensor names, positions counted past the padding index as in
RoBERTa, no token types, and one relative position bias (T5's bidirectional buckets) that every
layer adds to its attention scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lamina.server.convert import bert
from lamina.server.convert.attention import KeyControls
from lamina.server.convert.checkpoint import SafetensorsWeights
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.graph import GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.convert.roberta import positions_past_padding
from lamina.server.repository import signature
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

# sentence-transformers' MPNet checkpoints name MPNetForMaskedLM with the bare encoder's weights;
# a real MaskedLM checkpoint keeps them under `mpnet.`.
HF_ARCHITECTURES = ("MPNetModel", "MPNetForMaskedLM")
WEIGHT_PREFIXES = ("mpnet.",)
# MPNetEmbeddings fixes its padding index at 1, whatever pad_token_id says.
PADDING_IDX = 1
# MPNetEncoder.compute_position_bias buckets into 32 at distances up to 128 whatever the config
# says: a table of another size would be read differently from the way the model was trained.
NUM_BUCKETS = 32
MAX_DISTANCE = 128
RELATIVE_BIAS = "encoder.relative_attention_bias.weight"

MPNET_BLOCK = bert.BlockNames(
    query="attention.attn.q",
    key="attention.attn.k",
    value="attention.attn.v",
    attention_output="attention.attn.o",
    attention_norm="attention.LayerNorm",
    up="intermediate.dense",
    down="output.dense",
    ffn_norm="output.LayerNorm",
)


@dataclass(frozen=True)
class MPNetConfig:
    encoder: bert.BertConfig

    @property
    def max_context(self) -> int:
        """The longest prompt whose last position still has a row in the position table."""
        return self.encoder.max_positions - PADDING_IDX - 1

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> MPNetConfig:
        buckets = config.get("relative_attention_num_buckets", NUM_BUCKETS)
        if buckets != NUM_BUCKETS:
            raise ValueError(
                f"relative_attention_num_buckets {buckets!r} is not supported; transformers' "
                f"MPNet buckets relative positions into {NUM_BUCKETS} whatever the config says, "
                f"so only {NUM_BUCKETS} is"
            )
        converted = MPNetConfig(bert.BertConfig.from_hf(config))
        if converted.max_context < 1:
            raise ValueError(
                f"max_position_embeddings {converted.encoder.max_positions} leaves no position "
                f"past MPNet's padding index {PADDING_IDX}"
            )
        return converted


def expected_tensors(config: MPNetConfig) -> list[str]:
    names = [bert.WORD_EMBEDDINGS, bert.POSITION_EMBEDDINGS, *bert.EMBEDDINGS_NORM, RELATIVE_BIAS]
    return names + bert.block_tensors(config.encoder.num_layers, MPNET_BLOCK)


def relative_position_buckets(relative: np.ndarray) -> np.ndarray:
    """transformers' MPNetEncoder.relative_position_bucket of key - query positions: half the
    buckets for keys after the query, exact below 8, logarithmic up to MAX_DISTANCE. In float32
    as torch computes it, so a distance on a bucket's edge (16, 32, 64) falls the same way."""
    n = -np.asarray(relative, np.int64)
    half = NUM_BUCKETS // 2
    bucket = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    # max(n, 1): the logarithm is only taken where n >= max_exact; no log(0) warnings elsewhere.
    ratio = np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
    scaled = (
        np.log(ratio)
        / np.float32(math.log(MAX_DISTANCE / max_exact))
        * np.float32(half - max_exact)
    )
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    result: np.ndarray = bucket + np.where(n < max_exact, n, large)
    return result


def relative_position_bias(g: GraphBuilder, table: np.ndarray, max_context: int) -> str:
    """The bias [1, heads, query, key] of this run's sequence, from the bucket table [buckets,
    heads]. Looked up per offset key - query from a [2 max_context - 1, heads] constant, so the
    values are the table's own."""
    offsets = np.arange(-(max_context - 1), max_context, dtype=np.int64)
    per_offset = np.ascontiguousarray(table[relative_position_buckets(offsets)], np.float32)
    positions = g.positions(signature.INPUT_IDS)
    keys = g.op("Unsqueeze", [positions, g.const("axis_0", [0])])
    queries = g.op("Unsqueeze", [positions, g.const("axis_1", [1])])
    offset = g.op("Sub", [keys, queries])  # [query, key]
    rows = g.op("Add", [offset, g.const("offset_origin", np.int64(max_context - 1))])
    values = g.op("Gather", [g.const("relative_bias", per_offset), rows], axis=0)
    by_head = g.op("Transpose", [values], perm=[2, 0, 1])  # [heads, query, key]
    return g.op("Unsqueeze", [by_head, g.const("axis_0", [0])])


def build_mpnet_graph(config: MPNetConfig, weights: bert.Weights) -> onnx.ModelProto:
    """hidden_state_0 (embedding output) .. hidden_state_N, as transformers' MPNetModel reports
    them. `weights(name)` takes names without the `mpnet.` prefix."""
    encoder = config.encoder
    table = weights(RELATIVE_BIAS)
    if table.shape != (NUM_BUCKETS, encoder.num_heads):
        raise ValueError(
            f"{RELATIVE_BIAS} has shape {table.shape}; expected "
            f"({NUM_BUCKETS}, {encoder.num_heads}): buckets by attention heads"
        )
    bias: str | None = None

    def prepare(g: GraphBuilder) -> None:
        # In the top graph: every segment's blocks read it, also those resuming mid-batch.
        nonlocal bias
        bias = relative_position_bias(g, table, config.max_context)

    def embed(g: GraphBuilder) -> str:
        positions = positions_past_padding(PADDING_IDX)
        return bert.embeddings(g, encoder, weights, position_ids=positions, token_types=False)

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        return bert.encoder_block(
            g, encoder, weights, index, hidden, controls, names=MPNET_BLOCK, score_bias=bias
        )

    return layered_graph(
        "mpnet",
        num_layers=encoder.num_layers,
        hidden_size=encoder.hidden_size,
        causal=False,
        embed=embed,
        block=block,
        prepare=prepare,
    )


def convert_mpnet_folder(
    folder: Path, config_dict: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    architecture = str(config_dict.get("architectures", ["MPNetModel"])[0])
    config = MPNetConfig.from_hf(config_dict)
    weights = SafetensorsWeights.open(folder, prefixes=WEIGHT_PREFIXES)
    weights.require(expected_tensors(config), f"{folder} ({architecture})")
    encoder = config.encoder
    pad = config_dict.get("pad_token_id")
    progress(f"building the MPNet graph: {encoder.num_layers} blocks, hidden {encoder.hidden_size}")
    return ConvertedModel(
        graph=build_mpnet_graph(config, weights),
        tokenizer=load_plain_tokenizer(folder / "tokenizer.json"),
        # The manifest's architecture is the graph's kind: a BERT-style encoder (int8 included).
        family="bert",
        num_layers=encoder.num_layers,
        hidden_size=encoder.hidden_size,
        max_context_size=config.max_context,
        vocab_size=encoder.vocab_size,
        pad_token_id=PADDING_IDX if pad is None else int(pad),
        token_embeddings=weights(bert.WORD_EMBEDDINGS),
    )
