"""Hugging Face-style folders: config.json + safetensors + tokenizer.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lamina.server.convert import bert, llama, vlm
from lamina.server.convert.checkpoint import SafetensorsWeights, read_config
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.sentence_transformers import read_semantic
from lamina.server.convert.vision_sources import convert_dinov2_folder
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

SUPPORTED_ARCHITECTURES = (
    "BertModel",
    "Dinov2Model",
    *llama.HF_ARCHITECTURES,
    *vlm.HF_ARCHITECTURES,
)


def convert_hf_folder(folder: Path, progress: Progress) -> ConvertedModel:
    converted = _convert(folder, progress)
    return dataclasses.replace(converted, semantic=read_semantic(folder, progress))


def _convert(folder: Path, progress: Progress) -> ConvertedModel:
    config = read_config(folder)
    architecture = str((config.get("architectures") or [config.get("model_type", "?")])[0])
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"architecture {architecture!r} is not supported; "
            f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    if architecture == "Dinov2Model":
        return convert_dinov2_folder(folder, config, progress)
    if architecture in vlm.HF_ARCHITECTURES:
        return vlm.convert_vlm_folder(folder, config, progress)
    tokenizer = load_plain_tokenizer(folder / "tokenizer.json")
    pad_token_id = int(config.get("pad_token_id") or 0)
    what = f"{folder} ({architecture})"
    if architecture == "BertModel":
        bert_config = bert.BertConfig.from_hf(config)
        weights = SafetensorsWeights.open(folder, prefixes=("bert.",))
        weights.require(bert.expected_tensors(bert_config), what)
        progress(
            f"building the BERT graph: {bert_config.num_layers} blocks, "
            f"hidden {bert_config.hidden_size}"
        )
        return ConvertedModel(
            graph=bert.build_bert_graph(bert_config, weights),
            tokenizer=tokenizer,
            family="bert",
            num_layers=bert_config.num_layers,
            hidden_size=bert_config.hidden_size,
            max_context_size=bert_config.max_positions,
            vocab_size=bert_config.vocab_size,
            pad_token_id=pad_token_id,
            token_embeddings=weights("embeddings.word_embeddings.weight"),
        )
    family = llama.HF_ARCHITECTURES[architecture]
    llama_config = llama.LlamaConfig.from_hf(config, family)
    weights = SafetensorsWeights.open(folder, prefixes=("model.",))
    weights.require(llama.expected_tensors(llama_config), what)
    progress(
        f"building the {family} graph: {llama_config.num_layers} blocks, "
        f"hidden {llama_config.hidden_size}"
    )
    return llama.convert_llama(llama_config, weights, tokenizer, pad_token_id)
