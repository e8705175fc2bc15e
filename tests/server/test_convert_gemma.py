"""The Gemma 3 converter's reading of config.json: what it takes over from transformers'
Gemma3TextConfig (layer types, RoPE per layer type, EmbeddingGemma's window, the embedding scale)
and the options it refuses by name. The graph itself is checked against transformers by
tests/families (fixtures gemma3 and embeddinggemma)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from lamina.server.convert.gemma import FULL, SLIDING, GemmaConfig, RopeConfig, embed_scale
from lamina.server.convert.hf_folder import SUPPORTED_ARCHITECTURES, convert_hf_folder

# google/gemma-3-1b-pt's config.json, in the layout transformers 4.5x wrote.
GEMMA3_1B: dict[str, Any] = {
    "architectures": ["Gemma3ForCausalLM"],
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "intermediate_size": 6912,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 26,
    "num_key_value_heads": 1,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16",
    "vocab_size": 262144,
}


def config(**changes: Any) -> dict[str, Any]:
    return {**GEMMA3_1B, **changes}


def test_the_pattern_makes_every_sixth_layer_global() -> None:
    parsed = GemmaConfig.from_hf(GEMMA3_1B)
    assert parsed.layer_types[:6] == (SLIDING,) * 5 + (FULL,)
    assert parsed.layer_types.count(FULL) == 4  # layers 6, 12, 18, 24 (1-based)
    assert parsed.layer_types[-1] == SLIDING
    assert parsed.window_bound == 512
    assert parsed.rope == {FULL: RopeConfig(1_000_000.0), SLIDING: RopeConfig(10_000.0)}
    assert parsed.scale == 256**-0.5
    assert not parsed.bidirectional


def test_listed_layer_types_win_over_the_pattern() -> None:
    types = [FULL, SLIDING, FULL]
    parsed = GemmaConfig.from_hf(config(num_hidden_layers=3, layer_types=types))
    assert parsed.layer_types == tuple(types)


def test_linear_rope_scaling_applies_to_global_layers_only() -> None:
    parsed = GemmaConfig.from_hf(config(rope_scaling={"factor": 8.0, "rope_type": "linear"}))
    assert parsed.rope[FULL] == RopeConfig(1_000_000.0, factor=8.0)
    assert parsed.rope[SLIDING] == RopeConfig(10_000.0)


def test_rope_parameters_per_layer_type_as_transformers_5_writes_them() -> None:
    legacy = ("rope_theta", "rope_local_base_freq", "rope_scaling")
    fields = {k: v for k, v in GEMMA3_1B.items() if k not in legacy}
    parsed = GemmaConfig.from_hf(
        {
            **fields,
            "rope_parameters": {
                FULL: {"rope_type": "linear", "factor": 4.0, "rope_theta": 500_000.0},
                SLIDING: {"rope_type": "default", "rope_theta": 5_000.0},
            },
        }
    )
    assert parsed.rope == {FULL: RopeConfig(500_000.0, 4.0), SLIDING: RopeConfig(5_000.0)}


def test_embeddinggemma_sees_half_the_window_on_either_side() -> None:
    # google/embeddinggemma-300m: sliding_window 512, bidirectional.
    parsed = GemmaConfig.from_hf(config(use_bidirectional_attention=True))
    assert parsed.bidirectional
    assert parsed.window_bound == 257  # |query - key| < 512 // 2 + 1, as transformers masks


def test_the_embedding_scale_is_rounded_to_the_checkpoints_dtype() -> None:
    assert embed_scale(3072, "bfloat16") == 55.5  # transformers' own example
    assert embed_scale(3072, "float32") == float(np.float32(np.sqrt(3072)))
    assert embed_scale(3072, "float16") == float(np.float16(np.sqrt(3072)))
    assert embed_scale(36, "bfloat16") == 6.0
    assert GemmaConfig.from_hf(config(torch_dtype=None, dtype="float32")).embed_scale == float(
        np.float32(np.sqrt(1152))
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "'yarn'"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "'dynamic'"),
        (
            {"rope_parameters": {SLIDING: {"rope_type": "llama3", "rope_theta": 1e4}}},
            "'llama3'",
        ),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, "rope_parameters"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
        ({"hidden_activation": "silu"}, "'silu'"),
        ({"layer_types": [SLIDING] * 25 + ["chunked_attention"]}, "chunked_attention"),
        ({"layer_types": [SLIDING, FULL]}, "layer_types"),
        ({"sliding_window": None}, "sliding_window"),
        ({"torch_dtype": "float64"}, "float64"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"model_type": "gemma3", "text_config": {"hidden_size": 2560}}, "'gemma3'"),
    ],
)
def test_unsupported_options_are_refused_by_name(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        GemmaConfig.from_hf(config(**changes))


def test_final_logit_softcapping_is_accepted() -> None:
    # It caps the LM head's logits only; no hidden state passes through it.
    assert GemmaConfig.from_hf(config(final_logit_softcapping=30.0)).num_layers == 26


def test_both_architectures_are_dispatched() -> None:
    assert {"Gemma3ForCausalLM", "Gemma3TextModel"} <= set(SUPPORTED_ARCHITECTURES)


def test_a_folder_with_an_unsupported_rope_fails_before_reading_weights(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    scaled = config(rope_scaling={"rope_type": "longrope", "factor": 4.0})
    (folder / "config.json").write_text(json.dumps(scaled))
    Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")).save(
        str(folder / "tokenizer.json")
    )
    with pytest.raises(ValueError, match="rope_type 'longrope'"):
        convert_hf_folder(folder, lambda _: None)
