"""A model version loaded for serving: its manifest, prompt encoder and ONNX Runtime session."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lamina.server.convert.tokenizer_file import load_plain_tokenizer
from lamina.server.errors import InvalidArgument
from lamina.server.images import ImageSpec
from lamina.server.models.manifest import Manifest
from lamina.server.models.store import VersionDir
from lamina.server.prompt import PromptEncoder
from lamina.server.runtime.session import HiddenStateSession, Providers


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    manifest: Manifest
    prompts: PromptEncoder
    session: HiddenStateSession

    @staticmethod
    def load(entry: VersionDir, *, threads: int, providers: Providers) -> LoadedModel:
        manifest = Manifest.read(entry.path)
        tokenizer = (
            load_plain_tokenizer(entry.path / manifest.tokenizer) if manifest.tokenizer else None
        )
        embeddings = entry.path / manifest.token_embeddings
        image = manifest.image
        prompts = PromptEncoder(
            tokenizer,
            model=entry.name,
            vocab_size=manifest.vocab_size,
            max_context=manifest.max_context_size,
            # Memory-mapped: only the rows a contextual control compares are read.
            token_embeddings=(
                np.load(embeddings, mmap_mode="r")
                if manifest.token_embeddings and embeddings.is_file()
                else None
            ),
            image=(
                ImageSpec(image.size, image.mean, image.std, image.patches_per_side)
                if image is not None
                else None
            ),
            image_token_id=manifest.pad_token_id,
        )
        session = HiddenStateSession(
            entry.path / manifest.graph,
            num_layers=manifest.num_layers,
            threads=threads,
            providers=providers,
        )
        return LoadedModel(entry.name, entry.version, manifest, prompts, session)

    @property
    def model_version(self) -> str:
        return f"{self.name}@{self.version}"

    def absolute_layer(self, layer: int, field: str) -> int:
        """0..num_layers as is; -1 is the last block, -num_layers-1 the embedding output."""
        blocks = self.manifest.num_layers
        if not -(blocks + 1) <= layer <= blocks:
            raise InvalidArgument(
                field,
                f"layer {layer} is out of range for model {self.name!r}, which has {blocks} blocks "
                f"(valid: {-(blocks + 1)}..{blocks})",
            )
        return layer if layer >= 0 else blocks + 1 + layer
