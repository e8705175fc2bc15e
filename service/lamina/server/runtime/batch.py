"""Padding several prompts into the tensors of one graph run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lamina.server.convert import signature
from lamina.server.prompt import EncodedPrompt


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # int64 [rows, padded]
    attention_mask: np.ndarray  # int64 [rows, padded]
    control_factors: np.ndarray  # float32 [rows, padded]
    control_log_additive: np.ndarray  # bool [rows]
    lengths: tuple[int, ...]  # each row's real length

    @staticmethod
    def pad(
        prompts: Sequence[EncodedPrompt], log_additive: Sequence[bool], pad_token_id: int
    ) -> Batch:
        rows, width = len(prompts), max(p.length for p in prompts)
        input_ids = np.full((rows, width), pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((rows, width), dtype=np.int64)
        factors = np.ones((rows, width), dtype=np.float32)
        for row, prompt in enumerate(prompts):
            input_ids[row, : prompt.length] = prompt.ids
            attention_mask[row, : prompt.length] = 1
            factors[row, : prompt.length] = prompt.control_factors
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            control_factors=factors,
            control_log_additive=np.asarray(log_additive, dtype=bool),
            lengths=tuple(p.length for p in prompts),
        )

    def feeds(self) -> dict[str, np.ndarray]:
        return {
            signature.INPUT_IDS: self.input_ids,
            signature.ATTENTION_MASK: self.attention_mask,
            signature.CONTROL_FACTORS: self.control_factors,
            signature.CONTROL_LOG_ADDITIVE: self.control_log_additive,
        }

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)
