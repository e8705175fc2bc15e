"""Reading a Hugging Face-style checkpoint folder: config.json, safetensors, tokenizer.json."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from lamina.server.convert.converted import require_tensors


@dataclass
class SafetensorsWeights:
    """Lazy access to the tensors of one or more safetensors files, by Hugging Face name.

    A model-class prefix (`bert.`, `model.`) is accepted and stripped so builders use bare names.
    """

    files: dict[str, Path]  # bare tensor name -> file holding it
    original_names: dict[str, str]

    @staticmethod
    def open(folder: Path, prefixes: Iterable[str] = ()) -> SafetensorsWeights:
        paths = sorted(folder.glob("*.safetensors"))
        if not paths:
            raise FileNotFoundError(f"no *.safetensors file in {folder}")
        files: dict[str, Path] = {}
        original: dict[str, str] = {}
        for path in paths:
            with safe_open(str(path), framework="np") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    bare = _legacy_renamed(_strip_prefix(name, prefixes))
                    files[bare] = path
                    original[bare] = name
        return SafetensorsWeights(files, original)

    def require(self, expected: Iterable[str], what: str) -> None:
        require_tensors(self.files.keys(), expected, what)

    def __call__(self, name: str) -> np.ndarray:
        with safe_open(str(self.files[name]), framework="np") as handle:
            tensor: np.ndarray = handle.get_tensor(self.original_names[name])
        return tensor.astype(np.float32) if tensor.dtype != np.float32 else tensor


# Older BERT-style checkpoints (TensorFlow-era names), renamed on load as transformers does.
_LEGACY_NAMES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))


def _legacy_renamed(name: str) -> str:
    for old, new in _LEGACY_NAMES:
        name = name.replace(old, new)
    return name


def _strip_prefix(name: str, prefixes: Iterable[str]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def pad_token_id(config: Mapping[str, Any]) -> int:
    """config.json's pad_token_id; 0 where it names none (padding is masked out either way)."""
    return int(config.get("pad_token_id") or 0)
