"""Image bytes for the fuzz: small valid images of every format and mode Pillow writes, formats
the server does not take, forged headers, and (in strategies.py) truncations and bit flips."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 37) % 256, (y * 59) % 256, (x * y) % 256], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def forged_png(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with `body` as its only image data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


@functools.cache
def valid_images() -> dict[str, bytes]:
    """Images the server must take (PNG, JPEG, WebP, GIF), in many sizes and modes."""
    small = _gradient(16, 12)
    images = {
        "png-rgb-16x12": _encode(small, "PNG"),
        "png-1x1": _encode(_gradient(1, 1), "PNG"),
        "png-2x300": _encode(_gradient(2, 300), "PNG"),
        "png-300x2": _encode(_gradient(300, 2), "PNG"),
        "png-rgba": _encode(_gradient(20, 20, "RGBA"), "PNG"),
        "png-l": _encode(_gradient(20, 20, "L"), "PNG"),
        "png-la": _encode(_gradient(9, 9, "LA"), "PNG"),
        "png-1bit": _encode(_gradient(17, 17, "1"), "PNG"),
        "png-palette": _encode(_gradient(20, 20, "P"), "PNG", transparency=0),
        "png-16bit": _encode(Image.new("I;16", (8, 8), 40000), "PNG"),
        "png-interlaced": _encode(small, "PNG", interlace=1),
        "jpeg-rgb": _encode(_gradient(32, 24), "JPEG", quality=80),
        "jpeg-l": _encode(_gradient(24, 24, "L"), "JPEG"),
        "jpeg-cmyk": _encode(_gradient(24, 24, "CMYK"), "JPEG"),
        "jpeg-progressive": _encode(_gradient(40, 30), "JPEG", progressive=True),
        "gif": _encode(_gradient(10, 10, "P"), "GIF"),
        "gif-2-frames": _encode(
            _gradient(12, 12, "P"),
            "GIF",
            save_all=True,
            append_images=[_gradient(12, 12, "P").rotate(90)],
        ),
        "webp-lossy": _encode(_gradient(20, 16), "WEBP"),
        "webp-lossless-rgba": _encode(_gradient(16, 16, "RGBA"), "WEBP", lossless=True),
        "png-448x448": _encode(_gradient(448, 448), "PNG"),
    }
    return images


@functools.cache
def large_images() -> dict[str, bytes]:
    """Few bytes, many pixels: one just under the 50-megapixel limit, one over it (solid colour
    compresses ~1000:1)."""
    return {
        "png-7000x7000": _encode(Image.new("RGB", (7000, 7000), (200, 10, 10)), "PNG"),
        "png-8000x8000": _encode(Image.new("L", (8000, 8000), 3), "PNG"),
    }


@functools.cache
def other_formats() -> dict[str, bytes]:
    """Images Pillow reads that the server does not take, and things that are no image."""
    small = _gradient(8, 8)
    return {
        "bmp": _encode(small, "BMP"),
        "tiff": _encode(small, "TIFF"),
        "tiff-float": _encode(Image.new("F", (8, 8), 0.5), "TIFF"),
        "ico": _encode(small, "ICO"),
        "ppm": _encode(small, "PPM"),
        "tga": _encode(small, "TGA"),
        "pdf": _encode(small, "PDF"),
        "empty": b"",
        "png-signature-only": b"\x89PNG\r\n\x1a\n",
        "text": b"hello world",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "forged-100000x100000": forged_png(100_000, 100_000),
        "forged-7000x7000-no-data": forged_png(7000, 7000),
        "forged-0x0": forged_png(0, 0),
        "forged-garbage-idat": forged_png(64, 64, b"\x78\x9c" + b"\xff" * 64),
        "forged-bomb-idat": forged_png(4000, 4000, zlib.compress(b"\x00" * 4_000_000)),
    }


def image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return width, height
    except Exception:
        return None
