"""`lamina convert`: a Hugging Face folder or a GGUF file to the next version of a model."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from lamina.server.convert.converted import Progress
from lamina.server.convert.gguf_checkpoint import convert_gguf
from lamina.server.convert.hf_folder import convert_hf_folder
from lamina.server.convert.instructable import describe, instructable_section
from lamina.server.convert.vision_sources import convert_dinov2_export
from lamina.server.convert.write import write_version
from lamina.server.repository.manifest import (
    TOKEN_EMBEDDINGS_FILE,
    TOKENIZER_FILE,
    Manifest,
    SemanticConfig,
)

log = logging.getLogger(__name__)


def convert_checkpoint(
    source: Path,
    repository: Path,
    name: str,
    *,
    description: str = "",
    source_label: str = "",
    trained: bool = True,
    semantic: SemanticConfig | None = None,
    progress: Progress = log.info,
) -> Path:
    """Convert a Hugging Face folder, a GGUF file or an exported DINOv2 ONNX graph into the next
    version of `name`. `trained=False` marks random weights: ModelsAvailable says so. `semantic`
    is used where the checkpoint declares no semantic embedding of its own."""
    if source.is_dir():
        converted = convert_hf_folder(source, progress)
    elif source.suffix == ".gguf" and source.is_file():
        converted = convert_gguf(source, progress)
    elif source.suffix == ".onnx" and source.is_file():
        converted = convert_dinov2_export(source, progress)
    else:
        raise ValueError(
            f"{source} is neither a checkpoint folder, a .gguf file nor an exported .onnx graph"
        )
    progress("checking the graph")
    onnx.checker.check_model(converted.graph, full_check=True)
    trained = trained and converted.trained
    if not trained:
        description = f"UNTRAINED (random weights, for tests only). {description}".strip()
    # From the checkpoint's own configuration only, never the `semantic` a caller supplies.
    instructable = instructable_section(
        causal=converted.causal,
        text_support=converted.tokenizer is not None,
        semantic=converted.semantic,
    )
    progress(describe(instructable))
    manifest = Manifest(
        architecture=converted.family,
        num_layers=converted.num_layers,
        hidden_size=converted.hidden_size,
        max_context_size=converted.max_context_size,
        vocab_size=converted.vocab_size,
        pad_token_id=converted.pad_token_id,
        description=description,
        source=source_label or str(source),
        image=converted.image,
        trained=trained,
        semantic=converted.semantic or semantic,
        instructable=instructable,
        tokenizer=TOKENIZER_FILE if converted.tokenizer is not None else "",
        token_embeddings=TOKEN_EMBEDDINGS_FILE if converted.token_embeddings is not None else "",
    )
    return write_version(
        repository,
        name,
        converted.graph,
        manifest,
        converted.tokenizer,
        converted.token_embeddings,
        progress=progress,
        files=converted.semantic_files if converted.semantic is not None else None,
    )
