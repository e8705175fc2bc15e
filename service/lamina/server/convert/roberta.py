"""RoBERTa and XLM-RoBERTa encoders (roberta-base, e5, bge-m3) to an ONNX graph.

BERT's embeddings and blocks (bert.py); what differs is where positions start: past the padding
index, as fairseq counted them (transformers' create_position_ids_from_input_ids).
"""

from __future__ import annotations

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
from lamina.server.convert.graph import INT64, GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.repository import signature
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

# The *ForMaskedLM checkpoints keep the encoder under `roberta.`; the LM head is no hidden state.
HF_ARCHITECTURES = (
    "RobertaModel",
    "RobertaForMaskedLM",
    "XLMRobertaModel",
    "XLMRobertaForMaskedLM",
)
WEIGHT_PREFIXES = ("roberta.",)
_DEFAULT_PADDING_IDX = 1  # RobertaConfig's pad_token_id when config.json leaves it out


@dataclass(frozen=True)
class RobertaConfig:
    encoder: bert.BertConfig
    padding_idx: int  # pad_token_id: positions start at padding_idx + 1

    @property
    def max_context(self) -> int:
        """The longest prompt whose last position still has a row in the position table."""
        return self.encoder.max_positions - self.padding_idx - 1

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> RobertaConfig:
        for option in ("is_decoder", "add_cross_attention"):
            if config.get(option):
                raise ValueError(
                    f"{option} {config[option]!r} is not supported; only the bidirectional "
                    f"encoder ({option} false) is"
                )
        padding_idx = config.get("pad_token_id", _DEFAULT_PADDING_IDX)
        if padding_idx is None:
            raise ValueError(
                "pad_token_id None is not supported: RoBERTa's positions are counted from it"
            )
        converted = RobertaConfig(bert.BertConfig.from_hf(config), int(padding_idx))
        if converted.max_context < 1:
            raise ValueError(
                f"max_position_embeddings {converted.encoder.max_positions} leaves no position "
                f"past pad_token_id {converted.padding_idx}"
            )
        return converted


def expected_tensors(config: RobertaConfig, *, token_types: bool) -> list[str]:
    names = [bert.WORD_EMBEDDINGS, bert.POSITION_EMBEDDINGS, *bert.EMBEDDINGS_NORM]
    if token_types:
        names.append(bert.TOKEN_TYPE_EMBEDDINGS)
    return names + bert.block_tensors(config.encoder.num_layers)


def positions_past_padding(padding_idx: int) -> bert.PositionIds:
    """transformers' create_position_ids_from_input_ids: each token that is not padding_idx gets
    padding_idx + its count among such tokens so far, a padding token padding_idx itself. With
    Lamina's right padding that is padding_idx + 1 + position for every prompt token; counting
    keeps a pad token inside a prompt where transformers puts it too."""

    def build(g: GraphBuilder) -> str:
        pad = g.const("padding_idx", np.int64(padding_idx))
        not_pad = g.op("Not", [g.op("Equal", [signature.INPUT_IDS, pad])])
        counted_ones = g.op("Cast", [not_pad], to=INT64)
        counts = g.op("CumSum", [counted_ones, g.const("axis_1", np.int64(1))])
        return g.op("Add", [g.op("Mul", [counts, counted_ones]), pad])

    return build


def build_roberta_graph(
    config: RobertaConfig, weights: bert.Weights, *, token_types: bool
) -> onnx.ModelProto:
    """hidden_state_0 (embedding output) .. hidden_state_N, as transformers' RobertaModel
    reports them. `weights(name)` takes names without the `roberta.` prefix."""
    encoder = config.encoder

    def embed(g: GraphBuilder) -> str:
        positions = positions_past_padding(config.padding_idx)
        return bert.embeddings(g, encoder, weights, position_ids=positions, token_types=token_types)

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        return bert.encoder_block(g, encoder, weights, index, hidden, controls)

    return layered_graph(
        "roberta",
        num_layers=encoder.num_layers,
        hidden_size=encoder.hidden_size,
        causal=False,
        embed=embed,
        block=block,
    )


def convert_roberta_folder(
    folder: Path, config_dict: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    architecture = str(config_dict.get("architectures", ["RobertaModel"])[0])
    config = RobertaConfig.from_hf(config_dict)
    weights = SafetensorsWeights.open(folder, prefixes=WEIGHT_PREFIXES)
    # transformers always has token types (one row in XLM-R); a checkpoint without them adds none.
    token_types = bert.TOKEN_TYPE_EMBEDDINGS in weights.files
    weights.require(expected_tensors(config, token_types=token_types), f"{folder} ({architecture})")
    encoder = config.encoder
    progress(
        f"building the RoBERTa graph: {encoder.num_layers} blocks, hidden {encoder.hidden_size}"
    )
    return ConvertedModel(
        graph=build_roberta_graph(config, weights, token_types=token_types),
        tokenizer=load_plain_tokenizer(folder / "tokenizer.json"),
        # The manifest's architecture is the graph's kind: a BERT-style encoder (int8 included).
        family="bert",
        num_layers=encoder.num_layers,
        hidden_size=encoder.hidden_size,
        max_context_size=config.max_context,
        vocab_size=encoder.vocab_size,
        pad_token_id=config.padding_idx,
        token_embeddings=weights(bert.WORD_EMBEDDINGS),
    )
