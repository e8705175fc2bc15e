"""The image pipeline: decoding, crops, resizing, normalisation, control rectangles, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lamina.server.domain import ImageControl, ImageCrop, ImageItem, Rect, TokenOverlap
from lamina.server.errors import InvalidArgument, dotted
from lamina.server.images import GRID, ImageSpec, image_size, prepare_image
from tests.fuzz.images import valid_images

SPEC = ImageSpec(size=24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def quadrants(size: int = 96) -> Image.Image:
    """Red top-left quadrant, blue elsewhere."""
    image = Image.new("RGB", (size, size), BLUE)
    image.paste(Image.new("RGB", (size // 2, size // 2), RED), (0, 0))
    return image


def channel_means(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(3, -1).mean(axis=1) * 0.25 + 0.5  # undo the normalisation


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_format_decodes_to_normalised_channels_first(fmt: str) -> None:
    prepared = prepare_image(
        ImageItem(encoded(Image.new("RGB", (40, 40), WHITE), fmt)), SPEC, ("x",)
    )
    assert prepared.pixels.shape == (3, 24, 24) and prepared.pixels.dtype == np.float32
    np.testing.assert_allclose(prepared.pixels, (1 - 0.5) / 0.25, atol=0.05)
    assert prepared.patch_factors.tolist() == [1.0] * GRID * GRID


def test_a_gif_contributes_its_first_frame() -> None:
    frames = [Image.new("RGB", (30, 30), RED), Image.new("RGB", (30, 30), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    means = channel_means(prepare_image(ImageItem(buffer.getvalue()), SPEC, ("x",)).pixels)
    assert means[0] > 0.9 and means[2] < 0.1


def test_an_explicit_crop_takes_that_square() -> None:
    item = ImageItem(encoded(quadrants()), crop=ImageCrop(0, 0, 48))
    means = channel_means(prepare_image(item, SPEC, ("x",)).pixels)
    np.testing.assert_allclose(means, [1, 0, 0], atol=0.02)


def test_without_a_crop_the_centre_square_is_taken() -> None:
    wide = Image.new("RGB", (300, 100), RED)
    wide.paste(Image.new("RGB", (100, 100), BLUE), (100, 0))  # only the middle is blue
    means = channel_means(prepare_image(ImageItem(encoded(wide)), SPEC, ("x",)).pixels)
    np.testing.assert_allclose(means, [0, 0, 1], atol=0.02)


def control(
    left: float,
    top: float,
    width: float,
    height: float,
    factor: float,
    overlap: TokenOverlap = TokenOverlap.PARTIAL,
) -> ImageControl:
    return ImageControl(Rect(left, top, width, height), factor, overlap)


def factors_of(item: ImageItem) -> np.ndarray:
    return prepare_image(item, SPEC, ("x",)).patch_factors.reshape(GRID, GRID)


def test_a_rectangle_over_the_left_half_controls_the_left_six_patch_columns() -> None:
    grid = factors_of(ImageItem(encoded(quadrants()), controls=(control(0, 0, 0.5, 1, 0.0),)))
    assert (grid[:, :6] == 0).all() and (grid[:, 6:] == 1).all()


def test_partial_and_complete_coverage_of_one_patch() -> None:
    half_patch = control(0, 0, 0.5 / GRID, 1 / GRID, 3.0)
    partial = factors_of(ImageItem(encoded(quadrants()), controls=(half_patch,)))
    assert partial[0, 0] == pytest.approx(2.0) and partial[0, 1] == 1 and partial[1, 0] == 1
    complete = control(0, 0, 0.5 / GRID, 1 / GRID, 3.0, TokenOverlap.COMPLETE)
    assert factors_of(ImageItem(encoded(quadrants()), controls=(complete,)))[0, 0] == pytest.approx(
        3.0
    )


def test_controls_on_one_patch_multiply() -> None:
    both = (control(0, 0, 1, 1, 2.0), control(0, 0, 1, 1, 0.25))
    assert np.allclose(factors_of(ImageItem(encoded(quadrants()), controls=both)), 0.5)


def test_rectangles_are_relative_to_the_uncropped_image() -> None:
    wide = encoded(Image.new("RGB", (200, 100), WHITE))  # centre crop: x 50..150
    outside = factors_of(ImageItem(wide, controls=(control(0, 0, 0.25, 1, 0.0),)))
    assert (outside == 1).all()
    first_column = factors_of(ImageItem(wide, controls=(control(0.25, 0, 0.5 / GRID, 1, 0.0),)))
    assert (first_column[:, 0] == 0).all() and (first_column[:, 1:] == 1).all()
    cropped = ImageItem(wide, crop=ImageCrop(0, 0, 100), controls=(control(0, 0, 0.25, 1, 0.0),))
    assert (factors_of(cropped)[:, :6] == 0).all()


def misaligned_png() -> bytes:
    """A byte slipped into a chunk, which the fuzz found: Pillow's PNG reader raises SyntaxError
    ("broken PNG file"), where other damage raises OSError."""
    data = valid_images()["png-rgb-16x12"]
    return data[:72] + b"\x00" + data[72:]


def truncated_png() -> bytes:
    data = encoded(Image.new("RGB", (64, 64), RED))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("item", "field", "says"),
    [
        (ImageItem(b""), "p.data", "empty"),
        (ImageItem(b"not an image at all"), "p.data", "cannot decode"),
        (ImageItem(truncated_png()), "p.data", "cannot decode"),
        (ImageItem(misaligned_png()), "p.data", "cannot decode"),
        (ImageItem(encoded(Image.new("RGB", (8, 8)), "BMP")), "p.data", "PNG, JPEG, WEBP, GIF"),
        (
            ImageItem(encoded(quadrants(), "PNG"), crop=ImageCrop(60, 0, 48)),
            "p.crop",
            "leaves the 96 x 96",
        ),
        (
            ImageItem(encoded(quadrants(), "PNG"), crop=ImageCrop(0, 0, 0)),
            "p.crop.size",
            "at least 1",
        ),
        (
            ImageItem(encoded(quadrants()), controls=(control(0.5, 0, 0.6, 1, 0.5),)),
            "p.controls[0].rect",
            "within 0..1",
        ),
        (
            ImageItem(encoded(quadrants()), controls=(control(0, 0, 0, 1, 0.5),)),
            "p.controls[0].rect",
            "greater than 0",
        ),
    ],
)
def test_bad_images_name_the_field(item: ImageItem, field: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        prepare_image(item, SPEC, ("p",))
    assert dotted(error.value.field) == field and says in error.value.message


def test_image_size_reads_the_header_only() -> None:
    assert image_size(encoded(Image.new("RGB", (400, 300), WHITE))) == (400, 300)
    assert image_size(b"not an image") is None
