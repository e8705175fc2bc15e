"""Image prompt items: decode, crop, resize and normalise, and map image controls to patches.

Every image becomes GRID x GRID = 144 prompt positions, one per cell of its square crop. A control
rectangle is given in 0..1 coordinates of the whole, uncropped image; a cell's factor is
1 + (f - 1) * c for the share c of the cell's area the rectangle covers (`partial`), or f when
they overlap at all (`complete`); factors of several controls on one cell multiply. The same
rule gives the factors of the vision encoder's own patch keys, on its own patch grid.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from lamina.server.domain import MAX_CONTROL_FACTOR, ImageCrop, ImageItem, TokenOverlap
from lamina.server.errors import FieldPath, InvalidArgument
from lamina.server.repository import signature

GRID = signature.CELLS_PER_SIDE
POSITIONS = signature.CELLS_PER_IMAGE
PLACEHOLDER = "<|image|>"  # what `tokens` shows for each image position
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


@dataclass(frozen=True)
class ImageSpec:
    """What a model's vision encoder expects (from its manifest)."""

    size: int  # square input side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patches_per_side: int = GRID  # the encoder's patch grid, where its attention keys are


@dataclass(frozen=True)
class PreparedImage:
    pixels: np.ndarray  # float32 [3, size, size], normalised
    patch_factors: np.ndarray  # float32 [144]: the image's prompt positions, row-major 12 x 12
    key_factors: np.ndarray  # float32 [patches_per_side ** 2]: the encoder's patch keys


def prepare_image(item: ImageItem, spec: ImageSpec, field: FieldPath) -> PreparedImage:
    image = _decode(item.data, (*field, "data"))
    width, height = image.size
    crop = item.crop or _centre_square(width, height)
    _check_crop(crop, width, height, (*field, "crop"))
    square = image.crop((crop.x, crop.y, crop.x + crop.size, crop.y + crop.size))
    resized = square.resize((spec.size, spec.size), Image.Resampling.BICUBIC)
    values = np.asarray(resized, dtype=np.float32) / 255.0
    normalised = (values - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return PreparedImage(
        pixels=np.ascontiguousarray(normalised.transpose(2, 0, 1)),
        patch_factors=patch_factors(item, crop, width, height, field),
        key_factors=patch_factors(item, crop, width, height, field, spec.patches_per_side),
    )


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header alone (no pixels decoded); None if unreadable."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            return width, height
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _decode(data: bytes, field: FieldPath) -> Image.Image:
    """Byte and pixel limits are the request's (limits.py), checked before this."""
    if not data:
        raise InvalidArgument(field, "the image is empty")
    try:
        # Only the accepted formats' decoders ever see the bytes.
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InvalidArgument(
            field, f"cannot decode the image: it is not one of the formats {', '.join(FORMATS)}"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InvalidArgument(field, f"cannot decode the image: {error}") from None
    try:
        image.seek(0)  # a GIF's first frame
        image.load()
    # Pillow's PNG reader reports a broken chunk as a SyntaxError.
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as error:
        raise InvalidArgument(field, f"cannot decode the image: {error}") from None
    return image.convert("RGB")


def _centre_square(width: int, height: int) -> ImageCrop:
    side = min(width, height)
    return ImageCrop((width - side) // 2, (height - side) // 2, side)


def _check_crop(crop: ImageCrop, width: int, height: int, field: FieldPath) -> None:
    if crop.size < 1:
        raise InvalidArgument((*field, "size"), "must be at least 1 pixel")
    if crop.x + crop.size > width or crop.y + crop.size > height:
        raise InvalidArgument(
            field,
            f"the square at ({crop.x}, {crop.y}) of side {crop.size} leaves the "
            f"{width} x {height} image",
        )


def patch_factors(
    item: ImageItem, crop: ImageCrop, width: int, height: int, field: FieldPath, grid: int = GRID
) -> np.ndarray:
    """Factors of the grid x grid cells of the crop, row-major."""
    factors = np.ones(grid * grid, dtype=np.float64)
    step = crop.size / grid
    edges_x = crop.x + step * np.arange(grid + 1)
    edges_y = crop.y + step * np.arange(grid + 1)
    for j, control in enumerate(item.controls):
        rect = control.rect
        where = (*field, "controls", j, "rect")
        values = (rect.left, rect.top, rect.width, rect.height)
        if not all(math.isfinite(v) for v in values):
            raise InvalidArgument(where, "left, top, width and height must be finite")
        if rect.width <= 0 or rect.height <= 0:
            raise InvalidArgument(where, "width and height must be greater than 0")
        eps = 1e-9
        if (
            rect.left < 0
            or rect.top < 0
            or rect.left + rect.width > 1 + eps
            or rect.top + rect.height > 1 + eps
        ):
            raise InvalidArgument(where, "the rectangle must lie within 0..1 of the image")
        left, right = rect.left * width, (rect.left + rect.width) * width
        top, bottom = rect.top * height, (rect.top + rect.height) * height
        cover_x = np.clip(np.minimum(edges_x[1:], right) - np.maximum(edges_x[:-1], left), 0, None)
        cover_y = np.clip(np.minimum(edges_y[1:], bottom) - np.maximum(edges_y[:-1], top), 0, None)
        # Share of each patch, rounded so edges that meet exactly give exactly 0 or 1.
        covered = np.clip(np.round(np.outer(cover_y, cover_x).ravel() / (step * step), 9), 0, 1)
        if control.token_overlap is TokenOverlap.COMPLETE:
            factors[covered > 0] *= control.factor
        else:
            factors *= 1 + (control.factor - 1) * covered
    largest = float(factors.max())
    if largest > MAX_CONTROL_FACTOR * (1 + 1e-6):  # before float32 would make it infinite
        raise InvalidArgument(
            (*field, "controls"),
            f"the controls on one cell multiply to {largest:.3g}, more than the largest "
            f"control factor {MAX_CONTROL_FACTOR:.0e}",
        )
    return factors.astype(np.float32)
