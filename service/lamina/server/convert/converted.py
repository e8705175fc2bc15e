"""What every source format converts to."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
from tokenizers import Tokenizer

from lamina.server.repository.manifest import ImageInput, SemanticConfig

Progress = Callable[[str], None]


class TextShape(Protocol):
    """What every text family's parsed config says of its shape."""

    @property
    def num_layers(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def max_positions(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...


@dataclass(frozen=True)
class ConvertedModel:
    graph: onnx.ModelProto
    tokenizer: Tokenizer | None  # None: an image encoder without text input
    family: str  # the manifest's architecture
    num_layers: int
    hidden_size: int
    max_context_size: int
    vocab_size: int
    pad_token_id: int
    # The input token embedding table [vocab, hidden]: contextual controls compare its rows.
    token_embeddings: np.ndarray | None
    image: ImageInput | None = None
    trained: bool = True
    semantic: SemanticConfig | None = None  # as the checkpoint's own configuration declares
    # Files of the version folder the semantic section names (its Dense weights): name -> bytes.
    semantic_files: Mapping[str, bytes] = field(default_factory=dict)
    # A decoder's graph: each position sees only those before it (convert/instructable.py gives
    # such models their instructable section).
    causal: bool = False

    @staticmethod
    def of_text(
        shape: TextShape,
        *,
        graph: onnx.ModelProto,
        tokenizer: Tokenizer,
        family: str,
        pad_token_id: int,
        token_embeddings: np.ndarray,
    ) -> ConvertedModel:
        """A text model, its sizes as its parsed config gives them."""
        return ConvertedModel(
            graph=graph,
            tokenizer=tokenizer,
            family=family,
            num_layers=shape.num_layers,
            hidden_size=shape.hidden_size,
            max_context_size=shape.max_positions,
            vocab_size=shape.vocab_size,
            pad_token_id=pad_token_id,
            token_embeddings=token_embeddings,
        )


def require_tensors(available: Collection[str], expected: Iterable[str], what: str) -> None:
    """Fail with the list of what is missing, so a wrong checkpoint is diagnosed at once."""
    missing = [name for name in expected if name not in available]
    if missing:
        shown = ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else "")
        raise ValueError(f"{what}: {len(missing)} expected tensors are missing: {shown}")
