"""Attention-control factors per prompt position (docs/api.md, Attention controls)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lamina.server.api.status import protobuf_field
from lamina.server.domain import TextControl, TextItem, TokenControl, TokenIdsItem, TokenOverlap
from lamina.server.errors import InvalidArgument
from lamina.server.models.loaded import LoadedModel

COMPLETE = TokenOverlap.COMPLETE


def factors(
    model: LoadedModel, *items: TextItem | TokenIdsItem, threshold: float | None = None
) -> list[float]:
    encoded = model.encoder.encode(items, threshold)
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
    assert factors(minilm, item) == [1.0, 2.0, 1.0]  # token ids alone: no template


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
    encoded = smollm2.encoder.encode((item,))
    pieces = smollm2.encoder.token_strings(encoded)
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
        minilm.encoder.encode((item,))
    assert protobuf_field(error.value.field) == field and says in error.value.message


def test_a_product_of_overlapping_controls_beyond_float32_is_refused(minilm: LoadedModel) -> None:
    # Each 1e20 is accepted alone; on one position they multiply to 1e40, past float32's range.
    controls = (TextControl(0, 5, 1e20), TextControl(0, 5, 1e20))
    with pytest.raises(InvalidArgument) as error:
        factors(minilm, TextItem("hello world", controls))
    assert error.value.field == ("prompt", 0, "text", "controls")
    assert "1e+40" in error.value.message and "1e+30" in error.value.message


def test_products_up_to_the_largest_factor_are_accepted(minilm: LoadedModel) -> None:
    controls = (TextControl(0, 5, 1e15, COMPLETE), TextControl(0, 5, 1e15, COMPLETE))
    assert factors(minilm, TextItem("hello world", controls))[1] == pytest.approx(1e30)


def test_token_id_controls_are_bounded_as_a_product(minilm: LoadedModel) -> None:
    item = TokenIdsItem((7592, 2088), (TokenControl(1, 1e16), TokenControl(1, 1e16)))
    with pytest.raises(InvalidArgument, match=r"multiply to 1e\+32"):
        factors(minilm, TextItem("a"), item)


def test_spreading_onto_a_controlled_position_is_bounded(minilm: LoadedModel) -> None:
    # "cat" at 0 and at 8 each get 1e20 of their own and 1e20 spread from the other: 1e40.
    item = TextItem("cat dog cat", (TextControl(0, 3, 1e20), TextControl(8, 3, 1e20)))
    assert factors(minilm, item)[1] == pytest.approx(1e20)
    with pytest.raises(InvalidArgument) as error:
        factors(minilm, item, threshold=0.99)
    assert "contextual_control_threshold" in error.value.message


def test_a_spread_multiplies_a_position_s_own_factor(minilm: LoadedModel) -> None:
    # Each "cat" keeps its own factor and takes the other's by similarity: 0.5 * 0.1 on both.
    item = TextItem("cat cat dog", (TextControl(0, 3, 0.5), TextControl(4, 3, 0.1)))
    result = factors(minilm, item, threshold=0.99)
    assert result[1] == pytest.approx(0.05) and result[2] == pytest.approx(0.05)


def _naive_factors(model: LoadedModel, item: TextItem, threshold: float | None) -> list[float]:
    """The rules of docs/api.md written out position by position, for comparison."""
    tokenizer = model.encoder.tokenizer
    encoding = tokenizer.encode(item.data, add_special_tokens=False)
    factors = [1.0] * len(encoding.ids)
    touched: list[tuple[list[int], float]] = []
    for control in item.controls:
        end, hit = control.start + control.length, []
        for token, (first, last) in enumerate(encoding.offsets):
            covered = min(last, end) - max(first, control.start)
            if covered > 0 and last > first:
                share = 1.0 if control.token_overlap is COMPLETE else covered / (last - first)
                factors[token] *= 1 + (control.factor - 1) * share
                hit.append(token)
        touched.append((hit, control.factor))
    if threshold is not None:
        table = np.asarray(model.encoder.token_embeddings, dtype=np.float32)[encoding.ids]
        unit = table / np.linalg.norm(table, axis=1, keepdims=True)
        for hit, factor in touched:
            for token in range(len(factors)):
                if token not in hit and any(unit[token] @ unit[k] >= threshold for k in hit):
                    factors[token] *= factor
    return [1.0, *factors, 1.0]


@pytest.mark.parametrize("seed", range(6))
def test_factors_follow_the_rules_position_by_position(minilm: LoadedModel, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ["cat", "dog", "cats", "the", "a", "house", "mouse", "running", "ran", ","]
    data = " ".join(rng.choice(words, size=40))
    controls = []
    for _ in range(int(rng.integers(1, 8))):
        start = int(rng.integers(0, len(data) - 1))
        length = int(rng.integers(1, len(data) - start + 1))
        overlap = COMPLETE if rng.random() < 0.5 else TokenOverlap.PARTIAL
        factor = float(rng.choice([0.0, 0.1, 0.5, 2.0, 7.0]))
        controls.append(TextControl(start, length, factor, overlap))
    item = TextItem(data, tuple(controls))
    for threshold in (None, 0.9, 0.5):
        assert factors(minilm, item, threshold=threshold) == pytest.approx(
            _naive_factors(minilm, item, threshold), rel=1e-6, abs=1e-6
        )


def test_many_controls_over_a_long_prompt_cost_little(minilm: LoadedModel) -> None:
    # The limit's worth of controls, each over the whole 510-token text, spreading: vectorised.
    data = " ".join(f"w{i % 97}" for i in range(170))
    controls = tuple(TextControl(0, len(data), 1.0001) for _ in range(1024))
    encoded = minilm.encoder.encode((TextItem(data, controls),), 0.5)
    assert encoded.length <= 512
    assert np.isfinite(encoded.control_factors).all()


def test_a_threshold_of_one_reaches_the_same_token(minilm: LoadedModel) -> None:
    # Cosine of a token with itself is 1, even where float32 rounds the dot product below it.
    for word in ("cat", "house", "running", "the", "paris"):
        item = TextItem(f"{word} {word}", (TextControl(0, len(word), 0.5, COMPLETE),))
        assert factors(minilm, item, threshold=1.0) == [1.0, 0.5, 0.5, 1.0]


@pytest.mark.parametrize("threshold", [1e300, -1e300, 1.5])
def test_thresholds_outside_the_cosine_range_spread_all_or_nothing(
    minilm: LoadedModel, threshold: float
) -> None:
    item = TextItem("cat dog cat", (TextControl(0, 3, 0.1, COMPLETE),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no float32 overflow on the way
        result = factors(minilm, item, threshold=threshold)
    spread = [1.0, 0.1, 0.1, 0.1, 1.0] if threshold < 0 else [1.0, 0.1, 1.0, 1.0, 1.0]
    assert result == spread
