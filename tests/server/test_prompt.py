"""Prompt assembly: one sequence, the template once, ids as given, and clear errors."""

from __future__ import annotations

import pytest

from lamina.server.domain import ImageItem, TextItem, TokenIdsItem
from lamina.server.errors import InvalidArgument
from lamina.server.models.loaded import LoadedModel

CLS, SEP = 101, 102


def test_single_text_item_is_wrapped_in_the_bert_template(minilm: LoadedModel) -> None:
    encoded = minilm.prompts.encode((TextItem("hello world"),))
    assert encoded.ids.tolist() == [CLS, 7592, 2088, SEP]
    assert encoded.control_factors.tolist() == [1.0] * 4


def test_items_are_concatenated_into_one_sequence_wrapped_once(minilm: LoadedModel) -> None:
    encoded = minilm.prompts.encode(
        (TextItem("hello"), TokenIdsItem((2088, 999)), TextItem("world"))
    )
    assert encoded.ids.tolist() == [CLS, 7592, 2088, 999, 2088, SEP]


def test_token_strings_decode_each_position_on_its_own(minilm: LoadedModel) -> None:
    encoded = minilm.prompts.encode((TextItem("hello embeddings"),))
    tokens = minilm.prompts.token_strings(encoded)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[1] == "hello"
    assert len(tokens) == encoded.length


@pytest.mark.parametrize("items", [(), (TextItem(""),), (TokenIdsItem(()),)])
def test_empty_prompt_is_invalid(minilm: LoadedModel, items: tuple[TextItem, ...]) -> None:
    with pytest.raises(InvalidArgument, match="prompt: the prompt is empty"):
        minilm.prompts.encode(items)


def test_prompt_longer_than_the_context_names_both_numbers(minilm: LoadedModel) -> None:
    with pytest.raises(InvalidArgument) as error:
        minilm.prompts.encode((TokenIdsItem(tuple([1000] * 511)),))
    assert error.value.field == "prompt"
    assert "513 tokens" in error.value.message and "512 positions" in error.value.message


def test_prompt_exactly_at_the_context_is_accepted(minilm: LoadedModel) -> None:
    assert minilm.prompts.encode((TokenIdsItem(tuple([1000] * 510)),)).length == 512


@pytest.mark.parametrize("bad_id", [30522, -1])
def test_token_id_outside_the_vocabulary_names_the_position(
    minilm: LoadedModel, bad_id: int
) -> None:
    with pytest.raises(InvalidArgument) as error:
        minilm.prompts.encode((TextItem("x"), TokenIdsItem((5, bad_id))))
    assert error.value.field == "prompt.items[1].token_ids.data[1]"
    assert "0..30521" in error.value.message


def test_images_are_rejected_by_a_text_model(minilm: LoadedModel) -> None:
    with pytest.raises(InvalidArgument, match=r"prompt.items\[0\].image"):
        minilm.prompts.encode((ImageItem(b"\x89PNG"),))


def test_tokenize_and_detokenize_round_trip(minilm: LoadedModel) -> None:
    pieces, ids = minilm.prompts.tokenize("Embeddings everywhere")
    assert pieces == ["em", "##bed", "##ding", "##s", "everywhere"]
    assert minilm.prompts.detokenize(ids) == "embeddings everywhere"
