"""Hugging Face-style folders: config.json + safetensors + tokenizer.json."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lamina.server.convert import (
    bert,
    gemma,
    gte,
    llama,
    modernbert,
    mpnet,
    nomic_bert,
    roberta,
    vlm,
)
from lamina.server.convert.checkpoint import read_config
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.sentence_transformers import read_sentence_transformers
from lamina.server.convert.vision_sources import convert_dinov2_folder

# config.json's architectures[0] -> the converter of that family's folders.
FolderConverter = Callable[[Path, Mapping[str, Any], Progress], ConvertedModel]
_CONVERTERS: dict[str, FolderConverter] = {
    **dict.fromkeys(bert.HF_ARCHITECTURES, bert.convert_bert_folder),
    **dict.fromkeys(roberta.HF_ARCHITECTURES, roberta.convert_roberta_folder),
    **dict.fromkeys(mpnet.HF_ARCHITECTURES, mpnet.convert_mpnet_folder),
    **dict.fromkeys(nomic_bert.HF_ARCHITECTURES, nomic_bert.convert_nomic_bert_folder),
    **dict.fromkeys(modernbert.HF_ARCHITECTURES, modernbert.convert_modernbert_folder),
    **dict.fromkeys(gte.HF_ARCHITECTURES, gte.convert_gte_folder),
    **dict.fromkeys(llama.HF_ARCHITECTURES, llama.convert_llama_folder),
    **dict.fromkeys(gemma.HF_ARCHITECTURES, gemma.convert_gemma_folder),
    "Dinov2Model": convert_dinov2_folder,
    **dict.fromkeys(vlm.HF_ARCHITECTURES, vlm.convert_vlm_folder),
}
SUPPORTED_ARCHITECTURES = tuple(_CONVERTERS)


def convert_hf_folder(folder: Path, progress: Progress) -> ConvertedModel:
    converted = _convert(folder, progress)
    modules = read_sentence_transformers(folder, progress)
    if modules is None:
        return dataclasses.replace(converted, semantic=None)
    return dataclasses.replace(converted, semantic=modules.semantic, semantic_files=modules.files)


def _convert(folder: Path, progress: Progress) -> ConvertedModel:
    config = read_config(folder)
    architecture = str((config.get("architectures") or [config.get("model_type", "?")])[0])
    if architecture not in _CONVERTERS:
        raise ValueError(
            f"architecture {architecture!r} is not supported; "
            f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    return _CONVERTERS[architecture](folder, config, progress)
