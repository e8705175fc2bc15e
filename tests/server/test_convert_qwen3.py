"""Qwen3 beyond the family fixture: the config options it refuses, Qwen3Model's bare tensor
names, and the GGUF route (llama.cpp's `qwen3` architecture) against the same transformers
reference as the Hugging Face folder (tests/families/fixtures/qwen3)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lamina.server.convert.gguf_checkpoint import config_from_metadata, read_metadata
from lamina.server.convert.llama import LlamaConfig
from lamina.server.convert.pipeline import convert_checkpoint
from tests.families.checks import (
    assert_matches_reference,
    assert_tokenizes_as_transformers,
    convert,
)
from tests.tiny_models import load_version

FIXTURE = Path(__file__).parents[1] / "families" / "fixtures" / "qwen3"

# Qwen3-0.6B's config.json as released (transformers 4.51), the fields the converter reads.
RELEASED = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def released(**changes: Any) -> dict[str, Any]:
    return {**RELEASED, **changes}


# --- config.json --------------------------------------------------------------------------------


def test_a_released_config_reads_as_qwen3() -> None:
    config = LlamaConfig.from_hf(RELEASED, "qwen3")
    assert config.qk_norm
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (16, 8, 128)
    assert config.rope_theta == 1e6
    assert not (config.attention_bias or config.output_bias or config.mlp_bias)
    assert config.max_positions == 40960


def test_transformers_5_rope_parameters_are_read() -> None:
    legacy = {k: v for k, v in RELEASED.items() if k not in ("rope_theta", "rope_scaling")}
    config = LlamaConfig.from_hf(
        {**legacy, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "qwen3"
    )
    assert config.rope_theta == 5e5


def test_attention_bias_covers_q_k_v_and_o_as_in_transformers() -> None:
    config = LlamaConfig.from_hf(released(attention_bias=True, mlp_bias=True), "qwen3")
    assert config.attention_bias and config.output_bias
    assert not config.mlp_bias  # Qwen3's MLP has no biases whatever the config says


def test_sliding_window_layers_are_refused() -> None:
    config = released(use_sliding_window=True, sliding_window=4096, max_window_layers=21)
    with pytest.raises(
        ValueError,
        match=r"sliding-window attention \(use_sliding_window True, sliding_window 4096, "
        r"max_window_layers 21, layer_types of layers \[21, .*, 27\].* is not supported; "
        r"only full attention in every layer \(use_sliding_window false\) is",
    ):
        LlamaConfig.from_hf(config, "qwen3")


def test_explicit_sliding_layer_types_are_refused() -> None:
    types = ["full_attention"] * 27 + ["sliding_attention"]
    with pytest.raises(ValueError, match=r"layers \[27\]: \['sliding_attention'\]"):
        LlamaConfig.from_hf(released(layer_types=types), "qwen3")


def test_a_window_that_covers_no_layer_is_full_attention() -> None:
    # transformers windows layers i >= max_window_layers only: 28 of 28 layers leaves none.
    config = released(use_sliding_window=True, sliding_window=4096, max_window_layers=28)
    assert LlamaConfig.from_hf(config, "qwen3").max_positions == 40960
    types = {"layer_types": ["full_attention"] * 28}
    assert LlamaConfig.from_hf(released(**types), "qwen3").qk_norm


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            r"rope_scaling \{'rope_type': 'yarn', 'factor': 4.0\} is not supported; "
            r"only plain RoPE is",
        ),
        (
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}},
            r"rope_parameters \{.*'yarn'.*\} is not supported; only plain RoPE is",
        ),
        (
            {"rope_parameters": {"full_attention": {"rope_type": "default"}}},
            r"rope_parameters .* differ per layer type; not supported",
        ),
        (
            {"partial_rotary_factor": 0.5},
            r"partial_rotary_factor 0.5 is not supported; only RoPE over the whole head",
        ),
        (
            {"hidden_act": "gelu"},
            r"hidden_act 'gelu' is not supported; supported: silu, swish",
        ),
    ],
)
def test_options_not_built_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LlamaConfig.from_hf(released(**changes), "qwen3")


def test_a_sliding_window_checkpoint_is_refused_by_convert(tmp_path: Path) -> None:
    # As transformers 4 wrote it: no layer_types, so they derive from max_window_layers.
    folder = copy_checkpoint(tmp_path)
    edit_config(folder, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    edit_config(folder, layer_types=None)
    with pytest.raises(ValueError, match=r"layer_types of layers \[1, 2\]"):
        convert_checkpoint(folder, tmp_path / "repo", "q", progress=lambda _: None)


def test_explicit_full_layer_types_override_the_window_as_in_transformers() -> None:
    # transformers 5 windows exactly the layers layer_types calls sliding_attention.
    types = {"layer_types": ["full_attention"] * 28}
    config = released(use_sliding_window=True, sliding_window=4096, max_window_layers=0, **types)
    assert LlamaConfig.from_hf(config, "qwen3").qk_norm


def test_missing_q_norm_is_listed(tmp_path: Path) -> None:
    folder = copy_checkpoint(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.self_attn.q_norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing: layers\.1\.self_attn\.q_norm\.weight"):
        convert_checkpoint(folder, tmp_path / "repo", "q", progress=lambda _: None)


# --- Qwen3Model (Qwen3-Embedding): no LM head, tensor names without `model.` ------------------


def test_qwen3_model_matches_the_reference(tmp_path: Path) -> None:
    folder = copy_checkpoint(tmp_path)
    edit_config(folder, architectures=["Qwen3Model"])
    tensors = load_file(folder / "model.safetensors")
    bare = {k.removeprefix("model."): v for k, v in tensors.items() if k != "lm_head.weight"}
    save_file(bare, str(folder / "model.safetensors"))
    model = load_version(
        convert_checkpoint(folder, tmp_path / "repo", "q", trained=False, progress=lambda _: None)
    )
    assert model.manifest.architecture == "llama"
    assert_matches_reference(model, FIXTURE, "Qwen3Model")


# --- GGUF ---------------------------------------------------------------------------------------

_GGUF_BLOCK_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_qwen3_gguf(
    path: Path,
    checkpoint: Path,
    extra_metadata: dict[str, str] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """The fixture's checkpoint as llama.cpp's converter writes a Qwen3 (`Qwen3Model(Qwen2Model)`
    there): arch `qwen3`, head_dim as key_length, Q/K rows NOT permuted (only its LlamaModel
    permutes), q_norm/k_norm as attn_q_norm/attn_k_norm, the byte-level vocabulary with pre
    `qwen2`, no bos. F32 throughout: Q8_0 needs rows in multiples of 32 and the fixture's hidden
    size is 44."""
    config = json.loads((checkpoint / "config.json").read_text())
    weights = {
        k.removeprefix("model."): v for k, v in load_file(checkpoint / "model.safetensors").items()
    }
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    for key, value in (extra_metadata or {}).items():
        writer.add_string(key, value)
    add_tokenizer(writer, checkpoint / "tokenizer.json")
    writer.add_tensor("token_embd.weight", weights["embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["norm.weight"])
    for i in range(config["num_hidden_layers"]):
        for hf, cpp in _GGUF_BLOCK_NAMES.items():
            writer.add_tensor(f"blk.{i}.{cpp}", np.ascontiguousarray(weights[f"layers.{i}.{hf}"]))
    for name, tensor in (extra_tensors or {}).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer_json: Path) -> None:
    """tokenizer.json's vocabulary as llama.cpp's `_set_vocab_gpt2` writes it: every id's
    token, the merges as "a b", added special tokens as control tokens."""
    data = json.loads(tokenizer_json.read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    specials = {t["content"] for t in data["added_tokens"] if t["special"]}
    vocab |= {t["content"]: t["id"] for t in data["added_tokens"]}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    assert len(tokens) == max(vocab.values()) + 1, "ids have gaps"
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([3 if token in specials else 1 for token in tokens])
    end = tokens.index("<|endoftext|>")
    writer.add_eos_token_id(end)
    writer.add_pad_token_id(end)
    writer.add_add_bos_token(False)


def test_qwen3_gguf_matches_the_transformers_reference(tmp_path: Path) -> None:
    path = write_qwen3_gguf(tmp_path / "qwen3.gguf", FIXTURE / "checkpoint")
    model = convert(path, tmp_path)
    # transformers' GGUF loader adds NFC for qwen2-style vocabularies; the corpus is NFC already.
    assert_tokenizes_as_transformers(model, FIXTURE)
    assert_matches_reference(model, FIXTURE, "GGUF")


def test_gguf_config_reads_qwen3_metadata(tmp_path: Path) -> None:
    path = write_qwen3_gguf(tmp_path / "qwen3.gguf", FIXTURE / "checkpoint")
    config = config_from_metadata(read_metadata(gguf.GGUFReader(str(path))))
    hf = LlamaConfig.from_hf(
        json.loads((FIXTURE / "checkpoint" / "config.json").read_text()), "qwen3"
    )
    # GGUF stores epsilon as float32.
    assert config.rms_norm_eps == pytest.approx(hf.rms_norm_eps, rel=1e-6)
    assert dataclasses.replace(config, rms_norm_eps=hf.rms_norm_eps) == hf


def test_gguf_rope_scaling_is_refused(tmp_path: Path) -> None:
    path = write_qwen3_gguf(
        tmp_path / "qwen3.gguf", FIXTURE / "checkpoint", {"qwen3.rope.scaling.type": "yarn"}
    )
    with pytest.raises(
        ValueError,
        match=r"GGUF qwen3\.rope\.scaling\.type 'yarn' is not supported; only plain RoPE",
    ):
        convert_checkpoint(path, tmp_path / "repo", "q", progress=lambda _: None)


def test_gguf_tensors_the_graph_would_drop_are_refused(tmp_path: Path) -> None:
    config = json.loads((FIXTURE / "checkpoint" / "config.json").read_text())
    q_rows = config["num_attention_heads"] * config["head_dim"]
    path = write_qwen3_gguf(
        tmp_path / "qwen3.gguf",
        FIXTURE / "checkpoint",
        extra_tensors={"blk.0.attn_q.bias": np.ones(q_rows, np.float32)},
    )
    with pytest.raises(
        ValueError, match=r"graph does not read: layers\.0\.self_attn\.q_proj\.bias"
    ):
        convert_checkpoint(path, tmp_path / "repo", "q", progress=lambda _: None)


# --- helpers ------------------------------------------------------------------------------------


def copy_checkpoint(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE / "checkpoint", tmp_path / "checkpoint"))


def edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
