"""Prompt assembly: one sequence, the template once, ids as given, and clear errors."""

from __future__ import annotations

import pytest

from lamina.server.domain import ImageItem, TextItem, TokenIdsItem
from lamina.server.errors import InvalidArgument
from lamina.server.models.loaded import LoadedModel

CLS, SEP = 101, 102


def test_single_text_item_is_wrapped_in_the_bert_template(minilm: LoadedModel) -> None:
    encoded = minilm.encoder.encode((TextItem("hello world"),))
    assert encoded.ids.tolist() == [CLS, 7592, 2088, SEP]
    assert encoded.control_factors.tolist() == [1.0] * 4


def test_items_are_concatenated_into_one_sequence_wrapped_once(minilm: LoadedModel) -> None:
    encoded = minilm.encoder.encode(
        (TextItem("hello"), TokenIdsItem((2088, 999)), TextItem("world"))
    )
    assert encoded.ids.tolist() == [CLS, 7592, 2088, 999, 2088, SEP]


def test_token_strings_decode_each_position_on_its_own(minilm: LoadedModel) -> None:
    encoded = minilm.encoder.encode((TextItem("hello embeddings"),))
    tokens = minilm.encoder.token_strings(encoded)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[1] == "hello"
    assert len(tokens) == encoded.length


@pytest.mark.parametrize("items", [(), (TextItem(""),), (TokenIdsItem(()),)])
def test_empty_prompt_is_invalid(minilm: LoadedModel, items: tuple[TextItem, ...]) -> None:
    with pytest.raises(InvalidArgument, match="prompt: the prompt is empty"):
        minilm.encoder.encode(items)


def test_prompt_longer_than_the_context_names_both_numbers(minilm: LoadedModel) -> None:
    with pytest.raises(InvalidArgument) as error:
        minilm.encoder.encode((TextItem("a"), TokenIdsItem(tuple([1000] * 510))))
    assert error.value.field == ("prompt",)
    assert "513 tokens" in error.value.message and "512 positions" in error.value.message


def test_prompt_exactly_at_the_context_is_accepted(minilm: LoadedModel) -> None:
    assert minilm.encoder.encode((TextItem("a"), TokenIdsItem(tuple([1000] * 509)))).length == 512


def test_token_ids_alone_are_used_exactly_as_given(minilm: LoadedModel) -> None:
    # No text item: no template (docs/api.md, Prompts), the caller chose every id.
    encoded = minilm.encoder.encode((TokenIdsItem((7592, 2088)),))
    assert encoded.ids.tolist() == [7592, 2088]
    assert minilm.encoder.token_strings(encoded) == ("hello", "world")
    assert minilm.encoder.encode((TokenIdsItem(tuple([1000] * 512)),)).length == 512
    with pytest.raises(InvalidArgument, match="513 tokens"):
        minilm.encoder.encode((TokenIdsItem(tuple([1000] * 513)),))


def test_a_text_item_anywhere_brings_the_template(minilm: LoadedModel) -> None:
    encoded = minilm.encoder.encode((TokenIdsItem((7592,)), TextItem("world")))
    assert encoded.ids.tolist() == [CLS, 7592, 2088, SEP]


def test_an_instruction_counts_as_text(minilm: LoadedModel) -> None:
    encoded = minilm.encoder.encode((TokenIdsItem((2088,)),), instruction="hello")
    assert encoded.ids.tolist() == [CLS, 7592, 2088, SEP]


def test_text_that_cannot_fit_is_refused_before_tokenizing(minilm: LoadedModel) -> None:
    prompts = minilm.encoder
    # WordPiece: a word of more than 100 characters is one [UNK], so no token stands for more.
    assert prompts.chars_per_token == 100
    assert prompts.max_text_chars == 512 * 100
    with pytest.raises(InvalidArgument) as error:
        prompts.check_size((TextItem("x" * 30_000), TextItem("y" * 21_201)))
    assert error.value.field == ("prompt",)
    assert "51201 characters" in error.value.message and "51200" in error.value.message
    prompts.check_size((TextItem("x" * 30_000), TextItem("y" * 21_200)))  # may fit: not refused


def test_the_text_bound_is_the_longest_piece_for_byte_level_bpe(smollm2: LoadedModel) -> None:
    prompts = smollm2.encoder
    longest = max(len(piece) for piece in prompts.tokenizer.get_vocab())
    assert prompts.chars_per_token == longest  # a byte-level piece stands for >= its characters
    assert prompts.max_text_chars == prompts.max_context * longest


def test_token_ids_and_images_are_counted_before_any_work(dinov2: LoadedModel) -> None:
    # Corrupt bytes: the count alone refuses the prompt, so nothing is ever decoded.
    fits = dinov2.encoder.max_context // 144
    images = tuple(ImageItem(b"not an image") for _ in range(fits + 1))
    with pytest.raises(InvalidArgument) as error:
        dinov2.encoder.encode(images)
    assert error.value.field == ("prompt",)
    assert f"at least {(fits + 1) * 144} tokens" in error.value.message
    assert f"{fits + 1} images" in error.value.message


@pytest.mark.parametrize("bad_id", [30522, -1])
def test_token_id_outside_the_vocabulary_names_the_position(
    minilm: LoadedModel, bad_id: int
) -> None:
    with pytest.raises(InvalidArgument) as error:
        minilm.encoder.encode((TextItem("x"), TokenIdsItem((5, bad_id))))
    assert error.value.field == ("prompt", 1, "token_ids", "data", 1)
    assert "0..30521" in error.value.message


def test_images_are_rejected_by_a_text_model(minilm: LoadedModel) -> None:
    with pytest.raises(InvalidArgument, match=r"prompt\[0\].image"):
        minilm.encoder.encode((ImageItem(b"\x89PNG"),))


def test_tokenize_and_detokenize_round_trip(minilm: LoadedModel) -> None:
    pieces, ids = minilm.encoder.tokenize("Embeddings everywhere")
    assert pieces == ["em", "##bed", "##ding", "##s", "everywhere"]
    assert minilm.encoder.detokenize(ids) == "embeddings everywhere"
