"""Qwen3 (Qwen3ForCausalLM; Qwen3-Embedding's Qwen3Model is the same stack without the LM head).

The Llama stack plus an RMSNorm over each query and key head before RoPE. Set as the released
checkpoints are: an explicit head_dim with heads x head_dim != hidden, grouped-query attention,
no q/k/v/o biases, rope_theta 1e6, tied embeddings, and the sliding-window options present but
off (use_sliding_window false), which is the only setting Lamina converts.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Qwen3Config, Qwen3ForCausalLM

from tests.families.reference import (
    FamilySpec,
    Forward,
    randomize,
    save_checkpoint,
    transformers_forward,
)
from tests.families.tiny_tokenizers import qwen_bpe


def build(folder: Path) -> Forward:
    tokenizer = qwen_bpe()
    config = Qwen3Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=44,
        intermediate_size=60,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=14,  # 4 x 14 = 56 != 44: q_proj and o_proj are not square
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=3,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.token_to_id("<|endoftext|>"),
    )
    model = Qwen3ForCausalLM(config)
    randomize(model)
    save_checkpoint(folder, model, tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return transformers_forward(model)


SPECS = [FamilySpec("qwen3", "Qwen3ForCausalLM", build)]
