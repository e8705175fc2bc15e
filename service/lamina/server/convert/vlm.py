"""Vision-language models assembled from a DINOv2 vision encoder, a projector and a Llama-family
language model, in the layout of Hugging Face LLaVA checkpoints.

Each image's cells (the vision hidden state `vision_feature_layer`, pooled onto 12 x 12) go
through the projector (linear, GELU, linear) into the language model's hidden size and replace
the input embeddings at the image's 144 prompt positions. Hidden states are the language
model's. AtMan factors reach the encoder's patch keys and the language model's image positions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lamina.server.convert import dinov2, llama
from lamina.server.convert.checkpoint import SafetensorsWeights
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.graph import GraphBuilder
from lamina.server.convert.vision import (
    declare_image_inputs,
    image_cells,
    is_image_position,
    place_cells,
)
from lamina.server.convert.vision_sources import DEFAULT_IMAGE_SIZE, image_input, read_preprocessor
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

HF_ARCHITECTURES = ("LlavaForConditionalGeneration",)
Weights = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class VlmConfig:
    vision: dinov2.Dinov2Config
    text: llama.LlamaConfig
    vision_blocks: int  # blocks of the encoder that feed the projector
    image_size: int

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> VlmConfig:
        vision_dict, text_dict = config["vision_config"], config["text_config"]
        if vision_dict.get("model_type") != "dinov2":
            raise ValueError(
                f"vision_config.model_type {vision_dict.get('model_type')!r} is not supported; "
                "the vision encoder must be DINOv2"
            )
        family = str(text_dict.get("model_type", "llama"))
        if family not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"text_config.model_type {family!r} is not a Llama-family model")
        if config.get("projector_hidden_act", "gelu") != "gelu":
            raise ValueError("only a GELU projector (LLaVA's) is supported")
        if config.get("vision_feature_select_strategy", "default") != "default":
            raise ValueError("only vision_feature_select_strategy 'default' is supported")
        vision = dinov2.Dinov2Config.from_hf(vision_dict)
        layer = int(config.get("vision_feature_layer", -1))
        if not -(vision.num_layers + 1) <= layer <= vision.num_layers:
            raise ValueError(f"vision_feature_layer {layer} is outside the vision encoder")
        return VlmConfig(
            vision=vision,
            text=llama.LlamaConfig.from_hf(text_dict, family),
            vision_blocks=layer if layer >= 0 else vision.num_layers + 1 + layer,
            image_size=int(config.get("image_size", DEFAULT_IMAGE_SIZE)),
        )


def expected_tensors(config: VlmConfig) -> list[str]:
    return [
        *(f"vision_tower.{n}" for n in dinov2.expected_tensors(config.vision)),
        *(f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")),
        *(f"language_model.{n}" for n in llama.expected_tensors(config.text)),
    ]


def build_vlm_graph(config: VlmConfig, weights: Weights) -> onnx.ModelProto:
    tower = dinov2.VisionTower(
        config.vision, lambda name: weights(f"vision_tower.{name}"), config.image_size
    )
    lm_hidden = config.text.hidden_size

    def projector(g: GraphBuilder, cells: str) -> str:
        def w(name: str) -> np.ndarray:
            return weights(f"multi_modal_projector.{name}")

        up = g.linear(cells, w("linear_1.weight"), w("linear_1.bias"), "projector_1")
        return g.linear(g.gelu(up), w("linear_2.weight"), w("linear_2.bias"), "projector_2")

    def splice(g: GraphBuilder, tokens: str) -> str:
        inputs = declare_image_inputs(g, config.image_size, tower.side * tower.side)
        count = g.op("Shape", [inputs.pixels], start=0, end=1)
        has_images = g.op(
            "Greater", [g.op("ReduceMax", [count], keepdims=0), g.const("zero_i", np.int64(0))]
        )

        def encode(b: GraphBuilder) -> str:
            hidden = tower.embed(b, inputs)
            controls = tower.controls(b, inputs)
            for index in range(config.vision_blocks):
                hidden = tower.block(b, index, hidden, controls)
            return projector(b, image_cells(b, tower, hidden))

        def nothing(b: GraphBuilder) -> str:
            return b.const("no_cells", np.zeros((0, lm_hidden), np.float32))

        # A batch without images skips the encoder (an empty Conv is not something to rely on).
        projected = g.branch(has_images, encode, nothing, ["cells", lm_hidden])
        placed = place_cells(g, projected, lm_hidden)
        return g.op("Where", [is_image_position(g), placed, tokens])

    return llama.build_llama_graph(
        config.text,
        lambda name: weights(f"language_model.{name}"),
        splice=splice,
        name="vision_llama",
    )


def convert_vlm_folder(
    folder: Path, config_dict: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    config = VlmConfig.from_hf(config_dict)
    weights = _LlavaWeights(SafetensorsWeights.open(folder, prefixes=("model.",)))
    weights.source.require(
        [weights.stored_name(n) for n in expected_tensors(config)], f"{folder} (LLaVA)"
    )
    progress(
        f"building the vision-language graph: DINOv2 {config.vision.num_layers} blocks "
        f"({config.vision_blocks} used) -> projector -> {config.text.num_layers}-block decoder"
    )
    text = config_dict["text_config"]
    return ConvertedModel(
        graph=build_vlm_graph(config, weights),
        tokenizer=load_plain_tokenizer(folder / "tokenizer.json"),
        family="vision-llama",
        num_layers=config.text.num_layers,
        hidden_size=config.text.hidden_size,
        max_context_size=config.text.max_positions,
        vocab_size=config.text.vocab_size,
        pad_token_id=int(text.get("pad_token_id") or config_dict.get("pad_token_id") or 0),
        token_embeddings=weights("language_model.embed_tokens.weight"),
        image=image_input(config.vision, config.image_size, read_preprocessor(folder)),
        causal=True,  # the language model is a Llama-family decoder
    )


@dataclass(frozen=True)
class _LlavaWeights:
    """LLaVA checkpoints name the language model `language_model.model.*` (transformers 4) or
    `language_model.*` under `model.` (transformers 5); builders ask for `language_model.*`."""

    source: SafetensorsWeights

    def stored_name(self, name: str) -> str:
        nested = name.replace("language_model.", "language_model.model.", 1)
        if name.startswith("language_model.") and nested in self.source.files:
            return nested
        return name

    def __call__(self, name: str) -> np.ndarray:
        return self.source(self.stored_name(name))
