"""NomicBERT and GTE (NewModel) converters: what they refuse, and the rotary arithmetic they
rely on. Whole-model parity is tests/families (fixtures nomic-bert, nomic-bert-rotary, gte)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from lamina.server.convert.gte import GteConfig, rope_frequencies
from lamina.server.convert.hf_folder import SUPPORTED_ARCHITECTURES, convert_hf_folder
from lamina.server.convert.nomic_bert import NomicBertConfig, rotary_layout
from tests.tiny_models import word_level_tokenizer


def nomic(**options: Any) -> dict[str, Any]:
    """A published (remote-code) config.json of nomic-embed-text-v1.5's shape, tiny."""
    return {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "activation_function": "swiglu",
        "n_embd": 36,
        "n_head": 3,
        "n_layer": 2,
        "n_inner": 50,
        "n_positions": 8192,
        "max_trained_positions": 2048,
        "vocab_size": 64,
        "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_scaling_factor": None,
        "qkv_proj_bias": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "prenorm": False,
        **options,
    }


def gte(**options: Any) -> dict[str, Any]:
    """gte-large-en-v1.5's config.json, tiny."""
    return {
        "architectures": ["NewModel"],
        "model_type": "new",
        "hidden_size": 40,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 52,
        "max_position_embeddings": 8192,
        "vocab_size": 64,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_type": "layer_norm",
        "position_embedding_type": "rope",
        "rope_theta": 160000,
        "rope_scaling": {"factor": 2.0, "type": "ntk"},
        "logn_attention_scale": False,
        "pack_qkv": True,
        **options,
    }


def test_both_architectures_are_dispatched() -> None:
    assert {"NomicBertModel", "NewModel"} <= set(SUPPORTED_ARCHITECTURES)


def test_the_published_nomic_config_is_read() -> None:
    parsed = NomicBertConfig.from_hf(nomic())
    assert (parsed.hidden_size, parsed.num_heads, parsed.head_dim) == (36, 3, 12)
    assert (parsed.rotary_dim, parsed.rotary_base, parsed.rotary_interleaved) == (12, 1000.0, False)
    assert parsed.max_positions == 8192 and parsed.gated
    assert not (parsed.qkv_bias or parsed.fc1_bias or parsed.fc2_bias)


def test_a_transformers_nomic_config_is_read() -> None:
    config = {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "hidden_size": 36,
        "num_attention_heads": 3,
        "num_hidden_layers": 2,
        "intermediate_size": 50,
        "max_position_embeddings": 160,
        "vocab_size": 64,
        "hidden_act": "silu",
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0},
    }
    parsed = NomicBertConfig.from_hf(config)
    assert (parsed.activation, parsed.rotary_dim, parsed.rotary_base) == ("swiglu", 12, 1000.0)
    assert parsed.layer_norm_eps == 1e-12 and not parsed.qkv_bias


def test_dynamic_ntk_caps_the_context_at_the_trained_length() -> None:
    assert NomicBertConfig.from_hf(nomic(rotary_scaling_factor=2)).max_positions == 2048


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"prenorm": True}, "prenorm True"),
        ({"parallel_block": True}, "parallel_block True"),
        ({"use_rms_norm": True}, "use_rms_norm True"),
        ({"rotary_emb_scale_base": 512}, "rotary_emb_scale_base 512"),
        ({"moe_every_n_layers": 2}, "moe_every_n_layers 2"),
        ({"rotary_emb_fraction": 0.0}, "rotary_emb_fraction 0.0"),
        ({"rotary_emb_fraction": 0.3}, "rotary_emb_fraction 0.3"),
        ({"rotary_emb_fraction": 0.25}, "rotary dimension 3"),
        ({"activation_function": "gelu_new"}, "activation_function 'gelu_new'"),
        ({"num_heads_kv": 1}, "num_heads_kv 1"),
        ({"n_head": 5}, "n_embd 36 is not a multiple of n_head 5"),
    ],
)
def test_unsupported_nomic_options_fail_by_name(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        NomicBertConfig.from_hf(nomic(**options))


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_type 'yarn'"),
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
    ],
)
def test_unsupported_transformers_nomic_options_fail_by_name(
    config: dict[str, Any], named: str
) -> None:
    base = {"hidden_size": 36, "num_attention_heads": 3, "num_hidden_layers": 2, "vocab_size": 64}
    with pytest.raises(ValueError, match=named):
        NomicBertConfig.from_hf(base | config)


def _remote_code_rotation(x: np.ndarray, rotary: int, base: float, interleaved: bool) -> np.ndarray:
    """apply_rotary_emb of the remote code on x [sequence, head_dim], written out here."""
    inv_freq = 1.0 / base ** (np.arange(0, rotary, 2) / rotary)
    angles = np.arange(x.shape[0])[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angles), np.sin(angles)
    out = x.copy()
    for j in range(rotary // 2):
        a, b = (2 * j, 2 * j + 1) if interleaved else (j, j + rotary // 2)
        out[:, a] = x[:, a] * cos[:, j] - x[:, b] * sin[:, j]
        out[:, b] = x[:, b] * cos[:, j] + x[:, a] * sin[:, j]
    return out


def _neox_rotation(x: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """Rotary.apply: x cos + rotate_half(x) sin with the tables of Rotary.from_frequencies."""
    angles = np.arange(x.shape[0])[:, None] * frequencies.astype(np.float64)[None, :]
    cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[:, half:], x[:, :half]], -1) * sin


@pytest.mark.parametrize(
    ("fraction", "interleaved"), [(1.0, False), (1.0, True), (0.5, False), (0.5, True)]
)
def test_permuted_neox_rotary_gives_the_remote_code_scores(
    fraction: float, interleaved: bool
) -> None:
    config = NomicBertConfig.from_hf(
        nomic(rotary_emb_fraction=fraction, rotary_emb_interleaved=interleaved)
    )
    order, frequencies = rotary_layout(config)
    assert sorted(order.tolist()) == list(range(config.head_dim))
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 9, config.head_dim))
    args = (config.rotary_dim, config.rotary_base, interleaved)
    expected = _remote_code_rotation(q, *args) @ _remote_code_rotation(k, *args).T
    ours = _neox_rotation(q[:, order], frequencies) @ _neox_rotation(k[:, order], frequencies).T
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_the_published_gte_config_is_read() -> None:
    parsed = GteConfig.from_hf(gte(unpad_inputs="true", use_memory_efficient_attention="true"))
    assert (parsed.head_dim, parsed.max_positions, parsed.type_vocab_size) == (10, 8192, 2)
    assert parsed.rope_scaling is not None and parsed.rope_scaling.factor == 2.0


def test_gte_ntk_frequencies() -> None:
    dim, theta = 10, 160000.0
    plain = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    np.testing.assert_allclose(
        rope_frequencies(GteConfig.from_hf(gte(rope_scaling=None))), plain, rtol=1e-6
    )
    fixed = 1.0 / (theta * 2) ** (np.arange(0, dim, 2) / dim) / 2 ** (2 / dim)
    np.testing.assert_allclose(rope_frequencies(GteConfig.from_hf(gte())), fixed, rtol=1e-6)
    mixed = gte(rope_scaling={"type": "ntk", "factor": 4.0, "mixed_b": 0.5})
    a = np.log(4.0) / (dim / 2) ** 0.5
    expected = plain / np.exp(a * np.arange(1, dim // 2 + 1) ** 0.5)
    np.testing.assert_allclose(rope_frequencies(GteConfig.from_hf(mixed)), expected, rtol=1e-6)
    # A factor <= 1 never takes the remote code's scaled branch.
    unscaled = gte(rope_scaling={"type": "ntk", "factor": 1.0})
    np.testing.assert_allclose(rope_frequencies(GteConfig.from_hf(unscaled)), plain, rtol=1e-6)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"position_embedding_type": "absolute"}, "position_embedding_type 'absolute'"),
        ({"logn_attention_scale": True}, "logn_attention_scale True"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling type 'linear'"),
        ({"hidden_act": "tanh"}, "hidden_act 'tanh'"),
        ({"layer_norm_type": "batch_norm"}, "layer_norm_type 'batch_norm'"),
        ({"num_attention_heads": 3}, "hidden_size 40 is not a multiple"),
    ],
)
def test_unsupported_gte_options_fail_by_name(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        GteConfig.from_hf(gte(**options))


def _folder(tmp_path: Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    word_level_tokenizer({"[UNK]": 0, "a": 1}).save(str(tmp_path / "tokenizer.json"))
    return tmp_path


@pytest.mark.parametrize("config", [nomic(), gte()])
def test_a_checkpoint_without_the_expected_tensors_fails_with_their_names(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    folder = _folder(tmp_path, config, {"unrelated.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"expected tensors are missing: embeddings\.word_emb"):
        convert_hf_folder(folder, lambda _: None)


def test_an_unsupported_option_fails_before_any_tensor_is_read(tmp_path: Path) -> None:
    folder = _folder(tmp_path, nomic(prenorm=True), {"x": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="prenorm True is not supported"):
        convert_hf_folder(folder, lambda _: None)
