"""Attention-control rules of prompt.py as units, on a word-level vocabulary with chosen token
embeddings (no model): spreading by contextual_control_threshold (its boundary, zero embeddings,
controls that touch nothing, prompts past one similarity block), the bound on combined factors
and the errors that name the control."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lamina.server import prompt as prompt_module
from lamina.server.domain import (
    MAX_CONTROL_FACTOR,
    ImageControl,
    ImageItem,
    PromptItem,
    Rect,
    TextControl,
    TextItem,
    TokenControl,
    TokenIdsItem,
    TokenOverlap,
)
from lamina.server.errors import InvalidArgument
from lamina.server.images import ImageSpec
from lamina.server.prompt import PromptEncoder
from tests.tiny_models import word_level_tokenizer

COMPLETE = TokenOverlap.COMPLETE


def encoder(
    embeddings: np.ndarray | None, *, words: int | None = None, image: bool = False
) -> PromptEncoder:
    """Words `w0` .. `w<n-1>` (one token each, ids in order, no special tokens), with the rows
    of `embeddings` as their input token embeddings."""
    count = words if words is not None else len(embeddings) if embeddings is not None else 4
    vocab = {f"w{i}": i for i in range(count)} | {"[UNK]": count}
    return PromptEncoder(
        word_level_tokenizer(vocab),
        model="words",
        vocab_size=len(vocab),
        max_context=4096,
        token_embeddings=embeddings,
        image=ImageSpec(28, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), patches_per_side=2)
        if image
        else None,
    )


def factors(
    encoder: PromptEncoder, *items: PromptItem, threshold: float | None = None
) -> list[float]:
    encoded = encoder.encode(items, threshold)
    return [round(float(f), 6) for f in encoded.control_factors]


def axis(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# --- spreading ----------------------------------------------------------------------------------


def test_a_similarity_equal_to_the_threshold_spreads() -> None:
    # w0 and w1 are the same direction: cosine exactly 1.0, the highest threshold there is.
    words = encoder(axis((1, 0), (2, 0), (0, 1)))
    item = TokenIdsItem((0, 1, 2), (TokenControl(0, 0.5),))
    assert factors(words, item, threshold=1.0) == [0.5, 0.5, 1.0]


def test_similarity_is_computed_in_float32_from_half_precision_embeddings() -> None:
    # Stored as float16 (as converted models store them): cosine 0.99995 in float32, but 1.0 if
    # the normalisation ran in float16, where 1 + 0.0001 rounds to 1.
    half = np.array([[1, 0], [1, 0.01]], dtype=np.float16)
    item = TokenIdsItem((0, 1), (TokenControl(0, 0.5),))
    assert factors(encoder(half), item, threshold=0.99999) == [0.5, 1.0]
    assert factors(encoder(half), item, threshold=0.9999) == [0.5, 0.5]


def test_a_zero_embedding_has_cosine_zero_with_everything() -> None:
    # No direction, no NaN: it is reached exactly when the threshold is at or below zero.
    words = encoder(axis((1, 0), (0, 0), (-1, 0)))
    item = TokenIdsItem((0, 1, 2), (TokenControl(0, 0.5),))
    assert factors(words, item, threshold=0.5) == [0.5, 1.0, 1.0]
    assert factors(words, item, threshold=-0.5) == [0.5, 0.5, 1.0]
    assert factors(words, TokenIdsItem((1, 0), (TokenControl(0, 0.5),)), threshold=0.0) == [
        0.5,
        0.5,
    ]


def test_a_control_that_touches_no_token_does_not_stop_the_next_from_spreading() -> None:
    words = encoder(axis((1, 0), (0, 1), (1, 0)))
    # "w0  w1 w2": code points 2..3 are the two spaces between w0 and w1, no token's.
    item = TextItem("w0  w1 w2", (TextControl(2, 2, 0.1), TextControl(0, 2, 0.5, COMPLETE)))
    assert factors(words, item) == [0.5, 1.0, 1.0]
    assert factors(words, item, threshold=0.9) == [0.5, 1.0, 0.5]


def test_spread_covers_controlled_tokens_past_one_similarity_block() -> None:
    # More distinct controlled tokens than one block compares at once: a token similar only to
    # one in the first block is still reached.
    block = prompt_module._SIMILARITY_BLOCK
    n = block + 10
    embeddings = np.eye(n + 1, dtype=np.float32)
    embeddings[n] = embeddings[0]  # the last word is the first word's twin
    words = encoder(embeddings)
    text = " ".join(f"w{i}" for i in range(n))
    controlled = TextItem(text, (TextControl(0, len(text), 0.5, COMPLETE),))
    spread = factors(words, controlled, TextItem(f"w{n}"), threshold=0.9)
    assert spread[:n] == [0.5] * n and spread[n] == 0.5


def test_spreading_needs_token_embeddings() -> None:
    item = TokenIdsItem((0, 1), (TokenControl(0, 0.5),))
    with pytest.raises(InvalidArgument) as error:
        encoder(None).encode((item,), 0.5)
    assert error.value.field == ("contextual_control_threshold",)
    assert error.value.problem == (
        "model 'words' has no token embeddings; convert it again to use it"
    )
    assert factors(encoder(None), item) == [0.5, 1.0]  # without spreading they are not needed


# --- combined factors ---------------------------------------------------------------------------


def test_controls_multiplying_past_the_largest_factor_name_their_item() -> None:
    words = encoder(axis((1, 0), (0, 1)))
    big = TokenIdsItem((0, 1), (TokenControl(1, 1e15), TokenControl(1, 1.5e15)))  # 1.5e30
    with pytest.raises(InvalidArgument) as error:
        words.encode((TextItem("w0"), big))
    assert error.value.field == ("prompt", 1, "token_ids", "controls")
    assert error.value.problem == (
        "the controls on one position multiply to 1.5e+30, more than the largest control "
        f"factor {MAX_CONTROL_FACTOR:.0e}"
    )
    at_the_bound = TokenIdsItem((0,), (TokenControl(0, 1e15), TokenControl(0, 1e15)))
    assert words.encode((at_the_bound,)).control_factors[0] == np.float32(1e30)


def test_a_text_item_over_the_bound_and_the_spread_that_takes_it_there() -> None:
    words = encoder(axis((1, 0), (1, 0)))
    over = TextItem("w0", (TextControl(0, 2, 1e20, COMPLETE), TextControl(0, 2, 1e20, COMPLETE)))
    with pytest.raises(InvalidArgument) as error:
        words.encode((over,))
    assert error.value.field == ("prompt", 0, "text", "controls")
    assert "multiply to 1e+40, more than" in error.value.problem
    # Each position alone is fine; the spread of one control onto the other's position is not.
    spread = TokenIdsItem((0, 1), (TokenControl(0, 1e20), TokenControl(1, 1e20)))
    assert list(words.encode((spread,)).control_factors) == [np.float32(1e20)] * 2
    with pytest.raises(InvalidArgument) as error:
        words.encode((spread,), 0.5)
    assert error.value.field == ("prompt", 0, "token_ids", "controls")
    assert error.value.problem.startswith(
        "the controls on one position multiply to 1e+40, with contextual_control_threshold "
        "spreading them, more than"
    )


def png(side: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_image_controls_multiplying_past_the_largest_factor_name_the_image() -> None:
    whole = Rect(0, 0, 1, 1)
    item = ImageItem(png(), controls=(ImageControl(whole, 1e20), ImageControl(whole, 1e20)))
    with pytest.raises(InvalidArgument) as error:
        encoder(None, image=True).encode((TextItem("w0"), item))
    assert error.value.field == ("prompt", 1, "image", "controls")
    assert "multiply to 1e+40" in error.value.problem


# --- errors naming the control ------------------------------------------------------------------


def test_a_text_control_of_no_length_names_its_field() -> None:
    item = TextItem("w0 w1", (TextControl(0, 1, 0.5), TextControl(1, 0, 0.5)))
    with pytest.raises(InvalidArgument) as error:
        encoder(None).encode((item,))
    assert error.value.field == ("prompt", 0, "text", "controls", 1, "length")
    assert error.value.problem == "must be at least 1"


def test_a_text_control_past_the_item_says_by_how_much() -> None:
    item = TextItem("w0 w1", (TextControl(3, 3, 0.5),))
    with pytest.raises(InvalidArgument) as error:
        encoder(None).encode((TextItem("w2"), item))
    assert error.value.field == ("prompt", 1, "text", "controls", 0)
    assert error.value.problem == "start 3 + length 3 goes past the item's 5 code points"
    # Ending exactly at the last code point is inside.
    assert factors(encoder(None), TextItem("w0 w1", (TextControl(3, 2, 0.5),))) == [1.0, 0.5]


def test_a_token_control_past_the_ids_names_its_index() -> None:
    item = TokenIdsItem((0, 1), (TokenControl(1, 0.5), TokenControl(2, 0.5)))
    with pytest.raises(InvalidArgument) as error:
        encoder(None).encode((item,))
    assert error.value.field == ("prompt", 0, "token_ids", "controls", 1, "index")
    assert error.value.problem == "index 2 is past the item's 2 token ids"
