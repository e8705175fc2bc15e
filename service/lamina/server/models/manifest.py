"""The manifest that describes one model version in the repository (`manifest.json`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
TOKEN_EMBEDDINGS_FILE = "token_embeddings.npy"
# 2: graphs take a `depth` input and skip the blocks past it.
# 3: controls never see padding or future keys; fully masked queries fall back to plain attention.
FORMAT_VERSION = 3
# Bumped when the converter writes better graphs of the same format: `lamina prepare` rebuilds.
CONVERTER_REVISION = 3


@dataclass(frozen=True)
class ImageInput:
    """How the vision encoder takes an image (only in manifests of models with image support)."""

    size: int  # square input side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patches_per_side: int  # the encoder's patch grid; AtMan factors reach each patch key
    cells: str  # how the 12 x 12 prompt positions of an image come from the patches


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
    embedding_types: tuple[str, ...] = ("embed",)
    graph: str = GRAPH_FILE
    tokenizer: str = TOKENIZER_FILE  # "" for an image encoder without text input
    token_embeddings: str = TOKEN_EMBEDDINGS_FILE
    format: int = FORMAT_VERSION
    converter_revision: int = CONVERTER_REVISION
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        data = asdict(self)
        data["embedding_types"] = list(self.embedding_types)
        (directory / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @staticmethod
    def read(directory: Path) -> Manifest:
        data = json.loads((directory / MANIFEST_FILE).read_text())
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"manifest format {data.get('format')!r} is not {FORMAT_VERSION}")
        data["embedding_types"] = tuple(data.get("embedding_types", ("embed",)))
        data.setdefault("converter_revision", 1)  # written before revisions were recorded
        data.pop("image_support", None)  # written before the image section; derived now
        if data.get("image") is not None:
            image = dict(data["image"])
            image["mean"], image["std"] = tuple(image["mean"]), tuple(image["std"])
            data["image"] = ImageInput(**image)
        known = set(Manifest.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"manifest has unknown fields {sorted(unknown)}")
        return Manifest(**data)

    @property
    def image_support(self) -> bool:
        return self.image is not None

    @property
    def text_support(self) -> bool:
        return bool(self.tokenizer)
