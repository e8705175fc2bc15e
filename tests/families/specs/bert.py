"""BERT (BertModel): the family the others are told apart from."""

from __future__ import annotations

from pathlib import Path

from transformers import BertConfig, BertModel

from tests.families.reference import (
    FamilySpec,
    Forward,
    randomize,
    save_checkpoint,
    transformers_forward,
)
from tests.families.tiny_tokenizers import wordpiece


def build(folder: Path) -> Forward:
    tokenizer = wordpiece()
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=36,
        num_hidden_layers=3,
        num_attention_heads=6,
        intermediate_size=50,
        max_position_embeddings=160,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
    )
    model = BertModel(config, add_pooling_layer=False)
    randomize(model)
    save_checkpoint(
        folder,
        model,
        tokenizer,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )
    return transformers_forward(model)


SPECS = [FamilySpec("bert", "BertModel", build)]
