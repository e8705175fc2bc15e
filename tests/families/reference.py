"""What a family's reference script provides (reference environment only: torch, transformers).

A `FamilySpec` writes a tiny checkpoint of its architecture into a folder, the way a user's
checkpoint would arrive (config.json, model.safetensors, tokenizer.json and its config), and
returns the forward pass that is the reference: `transformers`' own implementation wherever it
has the architecture. make_fixtures.py runs it and commits checkpoint and hidden states.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast

# (ids [batch, sequence], attention mask [batch, sequence]) -> [layers + 1, batch, sequence, hidden]
Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FamilySpec:
    name: str  # the fixture folder: tests/families/fixtures/<name>
    architecture: str  # config.json `architectures[0]`, as Lamina dispatches on it
    build: Callable[[Path], Forward]  # writes the checkpoint into the folder
    notes: dict[str, Any] = field(default_factory=dict)  # recorded in reference.json


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Every parameter drawn afresh (norm weights around 1), so no layer is the identity an
    untrained init can make it (zero biases, unit norms hide a wrong bias or norm)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * scale
            is_norm = "norm" in name.lower() and name.endswith("weight")
            parameter.copy_(1 + noise if is_norm else noise)


def transformers_forward(model: PreTrainedModel) -> Forward:
    model = model.eval()

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            output = model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                output_hidden_states=True,
            )
        return torch.stack(output.hidden_states).numpy().astype(np.float32)

    return forward


def save_checkpoint(
    folder: Path,
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    **tokenizer_config: Any,
) -> None:
    """config.json and model.safetensors as `save_pretrained` writes them, and the tokenizer as
    a fast tokenizer's folder (tokenizer.json, tokenizer_config.json) with its special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **tokenizer_config).save_pretrained(folder)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
