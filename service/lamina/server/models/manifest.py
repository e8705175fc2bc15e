"""The manifest that describes one model version in the repository (`manifest.json`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamina.server.domain import Pooling, Representation

MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
TOKEN_EMBEDDINGS_FILE = "token_embeddings.npy"
# 2: graphs take a `depth` input and skip the blocks past it.
# 3: controls never see padding or future keys; fully masked queries fall back to plain attention.
FORMAT_VERSION = 3
# Bumped when the converter writes better versions of the same format: `lamina prepare` rebuilds.
# 4: manifests carry the semantic section (read from sentence-transformers configs).
CONVERTER_REVISION = 4


@dataclass(frozen=True)
class ImageInput:
    """How the vision encoder takes an image (only in manifests of models with image support)."""

    size: int  # square input side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patches_per_side: int  # the encoder's patch grid; AtMan factors reach each patch key
    cells: str  # how the 12 x 12 prompt positions of an image come from the patches


@dataclass(frozen=True)
class SemanticConfig:
    """How SemanticEmbed embeds with this model: one Embed of `layer` with `pooling`, the
    representation's instruction tokenized as its own item before the caller's prompt."""

    layer: int  # as in Embed: 0..num_layers, or negative counting from the last block
    pooling: Pooling
    normalize: bool  # the default when a request leaves normalize unset
    # Representation -> instruction ("" = none); a symmetric model has none at all.
    representations: dict[Representation, str] = field(
        default_factory=lambda: dict.fromkeys(Representation, "")
    )

    def instruction(self, representation: Representation) -> str:
        return self.representations.get(representation, "")

    @staticmethod
    def from_json(data: Any) -> SemanticConfig:
        """Strict: every problem is a ValueError naming the field under `semantic`."""
        if not isinstance(data, Mapping):
            raise ValueError("manifest semantic: expected an object or null")
        known = {"layer", "pooling", "normalize", "representations"}
        if set(data) - known:
            raise ValueError(f"manifest semantic: unknown fields {sorted(set(data) - known)}")
        for name in ("layer", "pooling", "normalize"):
            if name not in data:
                raise ValueError(f"manifest semantic.{name}: required")
        layer = data["layer"]
        if type(layer) is not int:
            raise ValueError(f"manifest semantic.layer: expected an integer, got {layer!r}")
        try:
            pooling = Pooling(data["pooling"])
        except ValueError:
            expected = ", ".join(p.value for p in Pooling)
            raise ValueError(
                f"manifest semantic.pooling: {data['pooling']!r} is none of {expected}"
            ) from None
        if not isinstance(data["normalize"], bool):
            raise ValueError("manifest semantic.normalize: expected true or false")
        return SemanticConfig(
            layer, pooling, data["normalize"], _representations(data.get("representations", {}))
        )


def _representations(data: Any) -> dict[Representation, str]:
    if not isinstance(data, Mapping):
        raise ValueError("manifest semantic.representations: expected an object")
    instructions = dict.fromkeys(Representation, "")
    for name, instruction in data.items():
        try:
            representation = Representation(name)
        except ValueError:
            expected = ", ".join(r.value for r in Representation)
            raise ValueError(
                f"manifest semantic.representations: unknown {name!r}; expected {expected}"
            ) from None
        if not isinstance(instruction, str):
            raise ValueError(f"manifest semantic.representations.{name}: expected a string")
        instructions[representation] = instruction
    return instructions


@dataclass(frozen=True)
class Manifest:
    architecture: str  # "bert", "llama", "dinov2" or "vision-llama"
    num_layers: int  # transformer blocks; hidden states are 0..num_layers
    hidden_size: int
    max_context_size: int
    vocab_size: int
    pad_token_id: int
    description: str = ""
    source: str = ""  # where the weights came from, e.g. a package pin
    image: ImageInput | None = None
    # False for weights nobody trained (a vision-language model assembled with a random projector
    # or random test weights): ModelsAvailable says so.
    trained: bool = True
    # How SemanticEmbed uses the model; None: it has no semantic embedding.
    semantic: SemanticConfig | None = None
    graph: str = GRAPH_FILE
    tokenizer: str = TOKENIZER_FILE  # "" for an image encoder without text input
    token_embeddings: str = TOKEN_EMBEDDINGS_FILE
    format: int = FORMAT_VERSION
    converter_revision: int = CONVERTER_REVISION
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        data = asdict(self)
        (directory / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @staticmethod
    def read(directory: Path) -> Manifest:
        data = json.loads((directory / MANIFEST_FILE).read_text())
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"manifest format {data.get('format')!r} is not {FORMAT_VERSION}")
        data.setdefault("converter_revision", 1)  # written before revisions were recorded
        data.pop("image_support", None)  # written before the image section; derived now
        data.pop("embedding_types", None)  # written before the semantic section; derived now
        if data.get("image") is not None:
            image = dict(data["image"])
            image["mean"], image["std"] = tuple(image["mean"]), tuple(image["std"])
            data["image"] = ImageInput(**image)
        known = set(Manifest.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"manifest has unknown fields {sorted(unknown)}")
        if data.get("semantic") is not None:
            data["semantic"] = SemanticConfig.from_json(data["semantic"])
        return Manifest(**data)

    def __post_init__(self) -> None:
        """What the semantic section needs of the model, checked when written and when read."""
        if self.semantic is None:
            return
        blocks = self.num_layers
        if not -(blocks + 1) <= self.semantic.layer <= blocks:
            raise ValueError(
                f"manifest semantic.layer: {self.semantic.layer} is outside "
                f"{-(blocks + 1)}..{blocks} for {blocks} blocks"
            )
        for representation, instruction in self.semantic.representations.items():
            if instruction and not self.text_support:
                raise ValueError(
                    f"manifest semantic.representations.{representation.value}: a model without "
                    "a tokenizer takes no instruction"
                )

    @property
    def embedding_types(self) -> tuple[str, ...]:
        """What ModelsAvailable lists, named after the API's endpoints."""
        return ("embed", "semantic_embed") if self.semantic is not None else ("embed",)

    @property
    def image_support(self) -> bool:
        return self.image is not None

    @property
    def text_support(self) -> bool:
        return bool(self.tokenizer)
