"""`lamina convert`: a Hugging Face folder or a GGUF file to the next version of a model."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from lamina.server.convert.converted import Progress
from lamina.server.convert.gguf_checkpoint import convert_gguf
from lamina.server.convert.hf_folder import convert_hf_folder
from lamina.server.models.manifest import Manifest
from lamina.server.models.store import write_version

log = logging.getLogger(__name__)


def convert_checkpoint(
    source: Path,
    repository: Path,
    name: str,
    *,
    description: str = "",
    source_label: str = "",
    progress: Progress = log.info,
) -> Path:
    """Convert a Hugging Face folder or a GGUF file into the next version of `name`."""
    if source.is_dir():
        converted = convert_hf_folder(source, progress)
    elif source.suffix == ".gguf" and source.is_file():
        converted = convert_gguf(source, progress)
    else:
        raise ValueError(f"{source} is neither a checkpoint folder nor a .gguf file")
    progress("checking the graph")
    onnx.checker.check_model(converted.graph, full_check=True)
    manifest = Manifest(
        architecture=converted.family,
        num_layers=converted.num_layers,
        hidden_size=converted.hidden_size,
        max_context_size=converted.max_context_size,
        vocab_size=converted.vocab_size,
        pad_token_id=converted.pad_token_id,
        description=description,
        source=source_label or str(source),
    )
    return write_version(
        repository,
        name,
        converted.graph,
        converted.tokenizer,
        converted.token_embeddings,
        manifest,
        progress=progress,
    )
