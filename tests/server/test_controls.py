"""Attention-control factors per prompt position (api-reference.md, Attention controls)."""

from __future__ import annotations

import pytest

from lamina.server.domain import TextControl, TextItem, TokenControl, TokenIdsItem, TokenOverlap
from lamina.server.errors import InvalidArgument
from lamina.server.models.loaded import LoadedModel

COMPLETE = TokenOverlap.COMPLETE


def factors(
    model: LoadedModel, *items: TextItem | TokenIdsItem, threshold: float | None = None
) -> list[float]:
    encoded = model.prompts.encode(items, threshold)
    return [round(float(f), 6) for f in encoded.control_factors]


def test_partial_overlap_scales_by_the_covered_share(minilm: LoadedModel) -> None:
    # "word" is one token of four characters; the control covers two of them with factor 2.
    assert factors(minilm, TextItem("word", (TextControl(0, 2, 2.0),))) == [1.0, 1.5, 1.0]


def test_complete_overlap_applies_the_full_factor(minilm: LoadedModel) -> None:
    assert factors(minilm, TextItem("word", (TextControl(0, 2, 2.0, COMPLETE),))) == [1.0, 2.0, 1.0]


def test_overlapping_controls_multiply(minilm: LoadedModel) -> None:
    controls = (TextControl(0, 4, 2.0, COMPLETE), TextControl(1, 1, 3.0, COMPLETE))
    assert factors(minilm, TextItem("word", controls)) == [1.0, 6.0, 1.0]


def test_a_span_touches_every_token_it_overlaps(minilm: LoadedModel) -> None:
    # "lo wo" covers 2 of 5 characters of "hello" and 2 of 5 of "world".
    assert factors(minilm, TextItem("hello world", (TextControl(3, 5, 0.0),))) == [
        1.0,
        0.6,
        0.6,
        1.0,
    ]


def test_token_id_controls_by_index_multiply(minilm: LoadedModel) -> None:
    item = TokenIdsItem((7592, 2088, 999), (TokenControl(1, 0.5), TokenControl(1, 4.0)))
    assert factors(minilm, item) == [1.0, 1.0, 2.0, 1.0, 1.0]


def test_controls_are_per_item_in_one_sequence(minilm: LoadedModel) -> None:
    result = factors(minilm, TextItem("hello"), TextItem("world", (TextControl(0, 5, 0.1),)))
    assert result == [1.0, 1.0, 0.1, 1.0]


def test_contextual_threshold_spreads_a_factor_to_the_same_tokens(minilm: LoadedModel) -> None:
    item = TextItem("cat dog cat", (TextControl(0, 3, 0.1, COMPLETE),))
    assert factors(minilm, item) == [1.0, 0.1, 1.0, 1.0, 1.0]
    assert factors(minilm, item, threshold=0.99) == [1.0, 0.1, 1.0, 0.1, 1.0]
    # A threshold every pair passes spreads it over the whole prompt, never the template tokens.
    assert factors(minilm, item, threshold=-1.0) == [1.0, 0.1, 0.1, 0.1, 1.0]


def test_contextual_threshold_without_controls_changes_nothing(minilm: LoadedModel) -> None:
    assert factors(minilm, TextItem("cat dog cat"), threshold=0.5) == [1.0] * 5


def test_byte_level_offsets_map_non_ascii_controls(smollm2: LoadedModel) -> None:
    text = "Crème brûlée"
    item = TextItem(text, (TextControl(text.index("brûlée"), len("brûlée"), 0.0, COMPLETE),))
    encoded = smollm2.prompts.encode((item,))
    pieces = smollm2.prompts.token_strings(encoded)
    touched = "".join(p for p, f in zip(pieces, encoded.control_factors, strict=True) if f == 0)
    assert "br" in touched and "Cr" not in touched


@pytest.mark.parametrize(
    ("item", "field", "says"),
    [
        (
            TextItem("hello", (TextControl(0, 0, 0.5),)),
            "prompt.items[0].text.controls[0].length",
            "at least 1",
        ),
        (
            TextItem("hello", (TextControl(3, 3, 0.5),)),
            "prompt.items[0].text.controls[0]",
            "past the item's 5 code points",
        ),
        (
            TokenIdsItem((5, 6), (TokenControl(2, 0.5),)),
            "prompt.items[0].token_ids.controls[0].index",
            "index 2",
        ),
    ],
)
def test_bad_controls_name_the_field(
    minilm: LoadedModel, item: TextItem | TokenIdsItem, field: str, says: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        minilm.prompts.encode((item,))
    assert error.value.field == field and says in error.value.message
