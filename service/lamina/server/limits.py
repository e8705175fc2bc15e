"""Per-request ceilings an operator sets, checked before any work is queued, so that one caller
cannot make the server decode, tokenize or hold more than it allows. Each check is cheap (counts,
lengths, image headers) and runs before the work it guards."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

from lamina.server.domain import EmbedRequest, ImageItem
from lamina.server.errors import FieldPath, InvalidArgument
from lamina.server.images import image_size


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_items: int = 256
    max_layers: int = 64
    max_poolings: int = 5
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    # Attention controls of all items of one prompt: each costs a pass over the item's tokens.
    max_controls: int = 1024
    # All images of one prompt together: decoding costs CPU time and memory by the pixel.
    max_request_pixels: int = 100_000_000
    # Tokenize and Detokenize are not bounded by a model's context (a caller may count the tokens
    # of a long document), so by these.
    max_tokenize_chars: int = 1_000_000
    max_detokenize_ids: int = 1_000_000

    def check(self, request: EmbedRequest) -> None:
        """Counts and sizes: InvalidArgument naming the field and the limit; nothing is ever cut
        to fit."""
        _at_most(("prompt", "items"), len(request.prompt), self.max_prompt_items, "prompt items")
        _at_most(("layers",), len(request.layers), self.max_layers, "layers")
        _at_most(("pooling",), len(request.pooling), self.max_poolings, "poolings")
        controls = sum(len(item.controls) for item in request.prompt)
        _at_most(("prompt",), controls, self.max_controls, "attention controls")
        for index, item in enumerate(request.prompt):
            if isinstance(item, ImageItem):
                field: FieldPath = ("prompt", index, "image", "data")
                _at_most(field, len(item.data), self.max_image_bytes, "bytes")

    def check_pixels(self, request: EmbedRequest) -> int:
        """Each image's pixels and their sum, from the headers alone (call it once the image
        count is known to fit the model); returns the sum."""
        total = 0
        for index, item in enumerate(request.prompt):
            if not isinstance(item, ImageItem):
                continue
            field = ("prompt", index, "image", "data")
            size = image_size(item.data)  # None: undecodable, which decoding reports in detail
            if size is None:
                continue
            pixels = size[0] * size[1]
            if pixels > self.max_image_pixels:
                raise InvalidArgument(
                    field,
                    f"the image has {size[0]} x {size[1]} pixels, more than the limit of "
                    f"{self.max_image_pixels}",
                )
            total += pixels
            if total > self.max_request_pixels:
                raise InvalidArgument(
                    ("prompt",),
                    f"the images up to item {index} have {total} pixels together, more than the "
                    f"limit of {self.max_request_pixels} per prompt",
                )
        return total

    def check_tokenize(self, text: str) -> None:
        _at_most(("prompt",), len(text), self.max_tokenize_chars, "characters")

    def check_detokenize(self, ids: Sized) -> None:
        _at_most(("token_ids",), len(ids), self.max_detokenize_ids, "token ids")


def _at_most(field: FieldPath, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise InvalidArgument(field, f"{count} {what}, more than the limit of {limit}")
