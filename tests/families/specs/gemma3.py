"""Gemma 3 text models: Gemma3ForCausalLM (causal) and EmbeddingGemma (Gemma3TextModel with
bidirectional attention).

Both mix sliding and global layers with a window shorter than the long prompt, grouped-query
attention, head_dim apart from hidden / heads and query_pre_attn_scalar apart from head_dim (so a
wrong score scale shows), and different RoPE bases per layer type; the causal one scales its
global layers' RoPE linearly (factor 8, as Gemma 3 4B-27B do).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Gemma3TextModel, PreTrainedModel

from tests.families.reference import (
    FamilySpec,
    Forward,
    randomize,
    save_checkpoint,
    transformers_forward,
    write_json,
)
from tests.families.tiny_tokenizers import gemma_bpe

SLIDING, FULL = "sliding_attention", "full_attention"
# Gemma's special tokens and their ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3; <bos> starts a prompt.
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")
GEMMA3_WINDOW = 16
EMBEDDINGGEMMA_WINDOW = 24  # transformers masks |query - key| < 24 // 2 + 1 = 13


def _build(folder: Path, model_class: type[PreTrainedModel], **options: Any) -> Forward:
    tokenizer = gemma_bpe(specials=SPECIALS, bos="<bos>", eos=None, unk="<unk>")
    config = Gemma3TextConfig(
        vocab_size=tokenizer.get_vocab_size(),
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        **options,
    )
    model = model_class(config)
    randomize(model)
    save_checkpoint(
        folder,
        model,
        tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    # With use_bidirectional_attention, Gemma3TextConfig replaces sliding_window by its
    # half-window and save_pretrained writes that one, which the next load halves again
    # (transformers PR 47940). Released checkpoints declare the window itself, as does this one.
    config_file = folder / "config.json"
    written = json.loads(config_file.read_text())
    written["sliding_window"] = options["sliding_window"]
    write_json(config_file, written)
    # The reference is the model as a user loads it from the folder.
    loaded = model_class.from_pretrained(folder)
    assert loaded.config.sliding_window == model.config.sliding_window
    return transformers_forward(loaded)


def build_gemma3(folder: Path) -> Forward:
    return _build(
        folder,
        Gemma3ForCausalLM,
        hidden_size=36,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        query_pre_attn_scalar=20,
        sliding_window=GEMMA3_WINDOW,
        layer_types=[SLIDING, FULL, SLIDING],
        rope_parameters={
            FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )


def build_embeddinggemma(folder: Path) -> Forward:
    return _build(
        folder,
        Gemma3TextModel,
        hidden_size=36,
        intermediate_size=52,
        num_hidden_layers=3,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=EMBEDDINGGEMMA_WINDOW,
        use_bidirectional_attention=True,
        layer_types=[SLIDING, SLIDING, FULL],
        rope_parameters={
            FULL: {"rope_type": "default", "rope_theta": 1_000_000.0},
            SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )


SPECS = [
    FamilySpec(
        "gemma3",
        "Gemma3ForCausalLM",
        build_gemma3,
        notes={"sliding_window": GEMMA3_WINDOW, "layer_types": [SLIDING, FULL, SLIDING]},
    ),
    FamilySpec(
        "embeddinggemma",
        "Gemma3TextModel",
        build_embeddinggemma,
        notes={
            "sliding_window": EMBEDDINGGEMMA_WINDOW,
            "use_bidirectional_attention": True,
            "layer_types": [SLIDING, SLIDING, FULL],
        },
    ),
]
