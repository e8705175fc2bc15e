"""Padding several prompts into the tensors of one graph run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lamina.server.prompt import EncodedPrompt
from lamina.server.repository import signature


@dataclass(frozen=True)
class ImageBatch:
    """The images of every row, one after another, for graphs with image inputs."""

    pixels: tuple[np.ndarray, ...]  # float32 [3, size, size] each
    key_factors: tuple[np.ndarray, ...]  # float32 [patches] each
    log_additive: tuple[bool, ...]  # the mode of the row each image belongs to
    slots: np.ndarray  # int64 [rows, padded]: index into the batch's cells, -1 for tokens

    def feeds(self, pixel_shape: tuple[int, int, int], patches: int) -> dict[str, np.ndarray]:
        """Named inputs; an empty batch of images still has the graph's own image shape."""
        count = len(self.pixels)
        pixels = np.stack(self.pixels) if count else np.zeros((0, *pixel_shape), np.float32)
        factors = np.stack(self.key_factors) if count else np.zeros((0, patches), np.float32)
        return {
            signature.PIXEL_VALUES: pixels,
            signature.IMAGE_KEY_FACTORS: factors,
            signature.IMAGE_LOG_ADDITIVE: np.asarray(self.log_additive, dtype=bool),
            signature.IMAGE_SLOTS: self.slots,
        }


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # int64 [rows, padded]
    attention_mask: np.ndarray  # int64 [rows, padded]
    control_factors: np.ndarray  # float32 [rows, padded]
    control_log_additive: np.ndarray  # bool [rows]
    lengths: tuple[int, ...]  # each row's real length
    images: ImageBatch

    @staticmethod
    def pad(
        prompts: Sequence[EncodedPrompt], log_additive: Sequence[bool], pad_token_id: int
    ) -> Batch:
        rows, width = len(prompts), max(p.length for p in prompts)
        input_ids = np.full((rows, width), pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((rows, width), dtype=np.int64)
        factors = np.ones((rows, width), dtype=np.float32)
        slots = np.full((rows, width), -1, dtype=np.int64)
        cells_before = 0
        for row, prompt in enumerate(prompts):
            input_ids[row, : prompt.length] = prompt.ids
            attention_mask[row, : prompt.length] = 1
            factors[row, : prompt.length] = prompt.control_factors
            if prompt.image_cells is not None:
                cells = prompt.image_cells
                slots[row, : prompt.length] = np.where(cells >= 0, cells + cells_before, -1)
                cells_before += signature.CELLS_PER_IMAGE * len(prompt.images)
        images = [
            (image, mode)
            for p, mode in zip(prompts, log_additive, strict=True)
            for image in p.images
        ]
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            control_factors=factors,
            control_log_additive=np.asarray(log_additive, dtype=bool),
            lengths=tuple(p.length for p in prompts),
            images=ImageBatch(
                pixels=tuple(image.pixels for image, _ in images),
                key_factors=tuple(image.key_factors for image, _ in images),
                log_additive=tuple(mode for _, mode in images),
                slots=slots,
            ),
        )

    def feeds(self) -> dict[str, np.ndarray]:
        return {
            signature.INPUT_IDS: self.input_ids,
            signature.ATTENTION_MASK: self.attention_mask,
            signature.CONTROL_FACTORS: self.control_factors,
            signature.CONTROL_LOG_ADDITIVE: self.control_log_additive,
        }
