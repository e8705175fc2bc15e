"""Prompt items, as the API names them.

A prompt is one sequence: a plain `str` (one `Text` item), one item, or a sequence of items that
the server concatenates in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextControl:
    start: int  # Unicode code points into the item's text
    length: int
    factor: float
    token_overlap: str | None = None  # "partial" (default) or "complete"


@dataclass(frozen=True)
class TokenControl:
    index: int
    factor: float


@dataclass(frozen=True)
class Rect:
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class ImageControl:
    rect: Rect  # 0..1 coordinates of the whole, uncropped image
    factor: float
    token_overlap: str | None = None


@dataclass(frozen=True)
class ImageCrop:
    x: int
    y: int
    size: int


@dataclass(frozen=True)
class Text:
    data: str
    controls: Sequence[TextControl] = field(default_factory=tuple)


@dataclass(frozen=True)
class TokenIds:
    data: Sequence[int]
    controls: Sequence[TokenControl] = field(default_factory=tuple)


@dataclass(frozen=True)
class Image:
    data: bytes
    crop: ImageCrop | None = None
    controls: Sequence[ImageControl] = field(default_factory=tuple)


PromptItem = Text | TokenIds | Image
Prompt = str | PromptItem | Sequence[PromptItem]
