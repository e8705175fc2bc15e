"""The ModernBERT converter's reading of config.json (both the transformers 4 keys and the
transformers 5 `layer_types` / `rope_parameters`), its refusals of what it does not implement,
and its sliding window, on a graph of random weights. Parity with transformers is
tests/families (fixtures `modernbert`, `modernbert_biased`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import save_file

from lamina.server.convert import modernbert
from lamina.server.convert.hf_folder import SUPPORTED_ARCHITECTURES, convert_hf_folder
from lamina.server.convert.modernbert import GLOBAL, LOCAL, ModernBertConfig
from lamina.server.repository import signature
from tests.tiny_models import word_level_tokenizer

# ModernBERT-base's config.json as released (transformers 4 keys), trimmed to what is read.
BASE: dict[str, Any] = {
    "architectures": ["ModernBertForMaskedLM"],
    "model_type": "modernbert",
    "hidden_size": 768,
    "num_hidden_layers": 22,
    "num_attention_heads": 12,
    "intermediate_size": 1152,
    "hidden_activation": "gelu",
    "max_position_embeddings": 8192,
    "vocab_size": 50368,
    "norm_eps": 1e-5,
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "global_attn_every_n_layers": 3,
    "local_attention": 128,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
    "position_embedding_type": "absolute",
    "pad_token_id": 50283,
}


def config(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def test_both_architectures_are_supported() -> None:
    assert {"ModernBertModel", "ModernBertForMaskedLM"} <= set(SUPPORTED_ARCHITECTURES)


def test_the_released_config_reads_as_transformers_does() -> None:
    parsed = ModernBertConfig.from_hf(BASE)
    assert parsed.head_dim == 64
    assert parsed.half_window == 64
    assert parsed.layer_types[:4] == (GLOBAL, LOCAL, LOCAL, GLOBAL)
    assert sum(kind == GLOBAL for kind in parsed.layer_types) == 8  # layers 0, 3, ..., 21
    assert parsed.rope_theta == {GLOBAL: 160000.0, LOCAL: 10000.0}
    assert not (parsed.attention_bias or parsed.mlp_bias or parsed.norm_bias)


def test_transformers_5_keys_take_precedence() -> None:
    parsed = ModernBertConfig.from_hf(
        config(
            num_hidden_layers=3,
            layer_types=[LOCAL, GLOBAL, LOCAL],
            rope_parameters={
                GLOBAL: {"rope_type": "default", "rope_theta": 5000.0},
                LOCAL: {"rope_type": "default", "rope_theta": 700.0},
            },
        )
    )
    assert parsed.layer_types == (LOCAL, GLOBAL, LOCAL)
    assert parsed.rope_theta == {GLOBAL: 5000.0, LOCAL: 700.0}


def test_defaults_and_a_null_local_theta() -> None:
    bare = {k: v for k, v in BASE.items() if "rope_theta" not in k}
    assert ModernBertConfig.from_hf(bare).rope_theta == {GLOBAL: 160000.0, LOCAL: 10000.0}
    # The original implementation's meaning of a null local theta: the global one.
    assert ModernBertConfig.from_hf(config(local_rope_theta=None)).rope_theta[LOCAL] == 160000.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_activation": "swiglu"}, "hidden_activation 'swiglu'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"rope_parameters": {LOCAL: {"rope_type": "linear", "factor": 2.0}}}, "'linear'"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1.0}}, "rope_parameters"),
        ({"layer_types": ["chunked_attention"] * 22}, "chunked_attention"),
        ({"layer_types": [GLOBAL] * 3}, "names 3 layers"),
        ({"global_attn_every_n_layers": 0}, "global_attn_every_n_layers 0"),
        ({"num_attention_heads": 10}, "not a multiple"),
        ({"head_dim": 32}, "head_dim 32"),
        ({"hidden_size": 36, "num_attention_heads": 4}, "odd"),
    ],
)
def test_unsupported_options_are_refused_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        ModernBertConfig.from_hf(config(**changes))


TINY = ModernBertConfig(
    num_layers=2,
    hidden_size=12,
    num_heads=2,
    intermediate_size=10,
    max_positions=64,
    vocab_size=30,
    norm_eps=1e-5,
    hidden_act="gelu",
    attention_bias=False,
    mlp_bias=False,
    norm_bias=False,
    local_attention=8,  # 4 keys each side
    layer_types=(LOCAL, LOCAL),
    rope_theta={GLOBAL: 160000.0, LOCAL: 10000.0},
)


def random_weights(config: ModernBertConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {
        "embeddings.tok_embeddings.weight": (config.vocab_size, config.hidden_size),
        "attn.Wqkv.weight": (3 * config.hidden_size, config.hidden_size),
        "attn.Wo.weight": (config.hidden_size, config.hidden_size),
        "mlp.Wi.weight": (2 * config.intermediate_size, config.hidden_size),
        "mlp.Wo.weight": (config.hidden_size, config.intermediate_size),
    }
    weights = {}
    for name in modernbert.expected_tensors(config):
        suffix = name.split(".", 2)[-1] if name.startswith("layers.") else name
        shape = shapes.get(suffix, (config.hidden_size,))
        weights[name] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
    return weights


def run(config: ModernBertConfig, ids: np.ndarray, length: int | None = None) -> list[np.ndarray]:
    """Every hidden state of one row, its first `length` positions the prompt (default all)."""
    graph = modernbert.build_modernbert_graph(config, random_weights(config).__getitem__)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    mask = np.zeros((1, len(ids)), np.int64)
    mask[0, : len(ids) if length is None else length] = 1
    feed = {
        signature.INPUT_IDS: ids[None],
        signature.ATTENTION_MASK: mask,
        signature.CONTROL_FACTORS: np.ones((1, len(ids)), np.float32),
        signature.CONTROL_LOG_ADDITIVE: np.ones(1, bool),
        signature.DEPTH: np.array(config.num_layers, np.int64),
        **signature.from_the_start(config.hidden_size),
    }
    names = [signature.hidden_state_output(i) for i in range(config.num_layers + 1)]
    return [np.asarray(x)[0] for x in session.run(names, feed)]


def test_a_local_layer_sees_only_its_window() -> None:
    ids = np.arange(1, 21, dtype=np.int64)
    changed = ids.copy()
    changed[12] = 29
    before, after = run(TINY, ids), run(TINY, changed)
    # One local block: position 12 reaches positions 8..16 only; two blocks: 4..20.
    reached_1 = np.abs(before[1] - after[1]).max(axis=-1) > 0
    reached_2 = np.abs(before[2] - after[2]).max(axis=-1) > 0
    assert np.flatnonzero(reached_1).tolist() == list(range(8, 17))
    assert np.flatnonzero(reached_2).tolist() == list(range(4, 20))


def test_a_global_layer_sees_everything() -> None:
    ids = np.arange(1, 21, dtype=np.int64)
    changed = ids.copy()
    changed[12] = 29
    wide = ModernBertConfig(**{**TINY.__dict__, "layer_types": (GLOBAL, LOCAL)})
    reached = np.abs(run(wide, ids)[1] - run(wide, changed)[1]).max(axis=-1) > 0
    assert reached.all()


def test_padding_beyond_the_window_stays_finite() -> None:
    # Padding queries more than half a window past the prompt see no prompt key in the window;
    # left to that they would turn NaN and spread into the prompt through the next layer.
    ids = np.zeros(20, np.int64)
    ids[:3] = [4, 5, 6]
    padded = run(TINY, ids, length=3)
    alone = run(TINY, ids[:3])
    for layer in range(TINY.num_layers + 1):
        assert np.isfinite(padded[layer]).all()
        np.testing.assert_allclose(padded[layer][:3], alone[layer], rtol=1e-5, atol=1e-5)


def write_folder(folder: Path, weights: dict[str, np.ndarray], **changes: Any) -> Path:
    folder.mkdir(parents=True)
    hf = config(
        architectures=["ModernBertForMaskedLM"],
        hidden_size=TINY.hidden_size,
        num_hidden_layers=TINY.num_layers,
        num_attention_heads=TINY.num_heads,
        intermediate_size=TINY.intermediate_size,
        max_position_embeddings=TINY.max_positions,
        vocab_size=TINY.vocab_size,
        local_attention=TINY.local_attention,
        layer_types=list(TINY.layer_types),
        pad_token_id=0,
        **changes,
    )
    (folder / "config.json").write_text(json.dumps(hf))
    # The masked-LM checkpoint's names: the encoder under "model.", the head beside it.
    save_file({f"model.{k}": v for k, v in weights.items()}, str(folder / "model.safetensors"))
    tokenizer = word_level_tokenizer({"[UNK]": 0} | {f"w{i}": i for i in range(1, TINY.vocab_size)})
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def test_a_masked_lm_folder_converts(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "ckpt", random_weights(TINY))
    converted = convert_hf_folder(folder, progress=lambda _: None)
    assert converted.family == "modernbert"
    assert converted.num_layers == 2
    assert converted.max_context_size == TINY.max_positions


def test_missing_tensors_are_named(tmp_path: Path) -> None:
    weights = random_weights(TINY)
    del weights["layers.1.attn_norm.weight"]
    folder = write_folder(tmp_path / "ckpt", weights)
    with pytest.raises(ValueError, match=r"layers\.1\.attn_norm\.weight"):
        convert_hf_folder(folder, progress=lambda _: None)


def test_biases_the_config_promises_are_required(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "ckpt", random_weights(TINY), mlp_bias=True)
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.Wi\.bias"):
        convert_hf_folder(folder, progress=lambda _: None)
