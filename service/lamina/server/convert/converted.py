"""What every source format converts to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from tokenizers import Tokenizer

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConvertedModel:
    graph: onnx.ModelProto
    tokenizer: Tokenizer
    family: str  # "bert" or "llama"
    num_layers: int
    hidden_size: int
    max_context_size: int
    vocab_size: int
    pad_token_id: int
