"""Per-request ceilings an operator sets, checked before any work is queued, so that one caller
cannot make the server decode, tokenize or hold more than it allows."""

from __future__ import annotations

from dataclasses import dataclass

from lamina.server.domain import EmbedRequest, ImageItem
from lamina.server.errors import InvalidArgument
from lamina.server.images import image_size


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_items: int = 256
    max_layers: int = 64
    max_poolings: int = 5
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000

    def check(self, request: EmbedRequest) -> None:
        """InvalidArgument naming the field and the limit; nothing is ever cut to fit."""
        _at_most("prompt.items", len(request.prompt), self.max_prompt_items, "prompt items")
        _at_most("layers", len(request.layers), self.max_layers, "layers")
        _at_most("pooling", len(request.pooling), self.max_poolings, "poolings")
        for index, item in enumerate(request.prompt):
            if isinstance(item, ImageItem):
                self._check_image(item.data, f"prompt.items[{index}].image.data")

    def _check_image(self, data: bytes, field: str) -> None:
        _at_most(field, len(data), self.max_image_bytes, "bytes")
        size = image_size(data)  # None: undecodable, which decoding reports in detail
        if size is not None and size[0] * size[1] > self.max_image_pixels:
            raise InvalidArgument(
                field,
                f"the image has {size[0]} x {size[1]} pixels, more than the limit of "
                f"{self.max_image_pixels}",
            )


def _at_most(field: str, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise InvalidArgument(field, f"{count} {what}, more than the limit of {limit}")
