"""Hugging Face-style folder (config.json + safetensors + tokenizer.json) to a repository entry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import onnx
from tokenizers import Tokenizer

from lamina.server.convert import bert
from lamina.server.convert.checkpoint import SafetensorsWeights, read_config
from lamina.server.models.manifest import Manifest
from lamina.server.models.store import write_version

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

SUPPORTED_ARCHITECTURES = {"BertModel": "bert"}


def convert_hf_folder(
    folder: Path,
    repository: Path,
    name: str,
    *,
    description: str = "",
    source: str = "",
    progress: Progress = log.info,
) -> Path:
    """Convert and write a new version of `name`; returns the version directory."""
    config = read_config(folder)
    architectures = config.get("architectures") or [config.get("model_type", "?")]
    family = SUPPORTED_ARCHITECTURES.get(str(architectures[0]))
    if family is None:
        raise ValueError(
            f"architecture {architectures[0]!r} is not supported; "
            f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    tokenizer = load_plain_tokenizer(folder / "tokenizer.json")

    progress(f"reading {family} weights from {folder}")
    bert_config = bert.BertConfig.from_hf(config)
    weights = SafetensorsWeights.open(folder, prefixes=("bert.",))
    weights.require(bert.expected_tensors(bert_config), f"{folder} ({architectures[0]})")
    progress(
        f"building the ONNX graph: {bert_config.num_layers} blocks, "
        f"hidden {bert_config.hidden_size}"
    )
    graph = bert.build_bert_graph(bert_config, weights)
    onnx.checker.check_model(graph, full_check=True)

    manifest = Manifest(
        architecture=family,
        num_layers=bert_config.num_layers,
        hidden_size=bert_config.hidden_size,
        max_context_size=bert_config.max_positions,
        vocab_size=bert_config.vocab_size,
        pad_token_id=int(config.get("pad_token_id", 0) or 0),
        description=description,
        source=source,
    )
    return write_version(repository, name, graph, tokenizer, manifest, progress=progress)


def load_plain_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer with padding and truncation off: Lamina never pads or truncates a prompt
    inside the tokenizer (batching pads, and an over-long prompt is an error, not a cut)."""
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    tokenizer = Tokenizer.from_str(path.read_text())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
