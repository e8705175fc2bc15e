"""ModernBERT (ModernBertModel): rotary positions with a theta per attention kind, global attention
every third layer and a bidirectional sliding window in the others, GeGLU, a final norm.

`modernbert` is configured as the released checkpoints are (no biases anywhere, thetas 160k and
10k, global_attn_every_n_layers 3) but with a window of 16 (8 keys each side) so that it cuts the
~120-token prompt; 4 layers make layers 0 and 3 global, 1 and 2 local. `modernbert_biased` turns
on every bias the config can (attention_bias, mlp_bias, norm_bias) so those paths meet
transformers too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, normalizers
from transformers import ModernBertConfig, ModernBertModel

from tests.families.reference import (
    FamilySpec,
    Forward,
    randomize,
    save_checkpoint,
    transformers_forward,
)
from tests.families.tiny_tokenizers import byte_level_bpe

SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "<|endoftext|>")


def tokenizer() -> Tokenizer:
    """ModernBERT's kind (OLMo's byte-level BPE): NFC, ByteLevel, `[CLS] $A [SEP]`."""
    built = byte_level_bpe(specials=SPECIALS, bos="[CLS]", eos="[SEP]")
    built.normalizer = normalizers.NFC()
    return built


def builder(*, biased: bool) -> Callable[[Path], Forward]:
    def build(folder: Path) -> Forward:
        tokens = tokenizer()
        config = ModernBertConfig(
            vocab_size=tokens.get_vocab_size(),
            hidden_size=40,
            num_hidden_layers=4,
            num_attention_heads=4,  # head size 10: odd halves for rotate_half
            intermediate_size=52,
            max_position_embeddings=512,
            hidden_activation="gelu",
            norm_eps=1e-5,
            global_attn_every_n_layers=3,
            local_attention=16,
            global_rope_theta=160_000.0,
            local_rope_theta=10_000.0,
            attention_bias=biased,
            mlp_bias=biased,
            norm_bias=biased,
            pad_token_id=tokens.token_to_id("[PAD]"),
            bos_token_id=tokens.token_to_id("[CLS]"),
            eos_token_id=tokens.token_to_id("[SEP]"),
            cls_token_id=tokens.token_to_id("[CLS]"),
            sep_token_id=tokens.token_to_id("[SEP]"),
        )
        model = ModernBertModel(config)
        randomize(model)
        save_checkpoint(
            folder,
            model,
            tokens,
            cls_token="[CLS]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            unk_token="[UNK]",
            mask_token="[MASK]",
        )
        return transformers_forward(model)

    return build


NOTES = {
    "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    "local_attention": 16,
}
SPECS = [
    FamilySpec("modernbert", "ModernBertModel", builder(biased=False), NOTES),
    FamilySpec("modernbert_biased", "ModernBertModel", builder(biased=True), NOTES),
]
