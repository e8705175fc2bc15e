"""The Llama-family converter on random checkpoints, against a numpy forward pass written here.

Covers grouped-query ratios (2 and 6, and plain multi-head), odd head sizes, untied embeddings,
Qwen2's q/k/v biases, Mistral's sliding-window context cap, and the GGUF route: llama.cpp's
permuted Q/K rows, Q8_0 dequantization and a byte-level BPE tokenizer from GGUF metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from lamina.server.convert.gguf_checkpoint import unpermute_rope_rows
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.domain import TextItem
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.batch import Batch
from tests.tiny_models import (
    SHAPES,
    Shape,
    byte_level_vocab,
    load_version,
    numpy_llama,
    random_weights,
    write_hf_folder,
)


def run(
    model: LoadedModel,
    ids_rows: list[list[int]],
    factors: list[list[float] | None] | None = None,
    log_additive: list[bool] | None = None,
) -> dict[int, np.ndarray]:
    rows = factors or [None] * len(ids_rows)
    prompts = [
        EncodedPrompt(np.asarray(ids, np.int64), np.asarray(f or [1.0] * len(ids), np.float32))
        for ids, f in zip(ids_rows, rows, strict=True)
    ]
    batch = Batch.pad(prompts, log_additive or [True] * len(prompts), 0)
    return model.session.run(batch, range(model.manifest.num_layers + 1))


IDS = [5, 77, 3, 250, 19, 104, 42, 7, 8]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.architecture}-{s.hidden}")
def test_hf_checkpoints_match_numpy(tmp_path: Path, shape: Shape) -> None:
    weights = random_weights(shape)
    folder = write_hf_folder(tmp_path / "checkpoint", shape, weights)
    model = load_version(
        convert_checkpoint(folder, tmp_path / "repo", "tiny", progress=lambda _: None)
    )
    assert model.manifest.architecture == "llama"
    states = run(model, [IDS, IDS[:4]])  # the second row pads the batch
    expected, expected_short = (
        numpy_llama(shape, weights, IDS),
        numpy_llama(shape, weights, IDS[:4]),
    )
    for layer in range(shape.layers + 1):
        np.testing.assert_allclose(
            states[layer][0], expected[layer], atol=1e-4, err_msg=f"layer {layer}"
        )
        np.testing.assert_allclose(states[layer][1, :4], expected_short[layer], atol=1e-4)


def test_sliding_window_caps_the_context(tmp_path: Path) -> None:
    shape = SHAPES[2]
    folder = write_hf_folder(tmp_path / "checkpoint", shape, random_weights(shape))
    model = load_version(
        convert_checkpoint(folder, tmp_path / "repo", "tiny", progress=lambda _: None)
    )
    assert model.manifest.max_context_size == 16


def test_missing_llama_tensors_are_listed(tmp_path: Path) -> None:
    shape = SHAPES[0]
    weights = random_weights(shape)
    del weights["layers.1.mlp.up_proj.weight"]
    folder = write_hf_folder(tmp_path / "checkpoint", shape, weights)
    with pytest.raises(ValueError, match=r"missing: layers\.1\.mlp\.up_proj\.weight"):
        convert_checkpoint(folder, tmp_path / "repo", "tiny", progress=lambda _: None)


def test_rope_scaling_is_refused_not_ignored(tmp_path: Path) -> None:
    shape = SHAPES[0]
    folder = write_hf_folder(tmp_path / "checkpoint", shape, random_weights(shape))
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"rope_scaling .* is not supported"):
        convert_checkpoint(folder, tmp_path / "repo", "tiny", progress=lambda _: None)


# --- GGUF ---------------------------------------------------------------------------------------


def permute_like_llama_cpp(weight: np.ndarray, heads: int) -> np.ndarray:
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(path: Path, shape: Shape, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Write a llama-arch GGUF as llama.cpp's converter would; returns the weights as stored
    (Q8_0 embeddings round-trip through quantization)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(shape.layers)
    writer.add_context_length(shape.positions)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.theta)
    writer.add_layer_norm_rms_eps(shape.eps)
    tokens = byte_level_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(["h e", "he l"])
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_eos_token_id(len(tokens) - 1)
    stored = dict(weights)
    embeddings = weights["embed_tokens.weight"]
    quantized = gguf.quants.quantize(embeddings, gguf.GGMLQuantizationType.Q8_0)
    stored["embed_tokens.weight"] = gguf.quants.dequantize(
        quantized, gguf.GGMLQuantizationType.Q8_0
    )
    writer.add_tensor("token_embd.weight", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", weights["norm.weight"])
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(shape.layers):
        for hf, cpp in names.items():
            tensor = weights[f"layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                tensor = permute_like_llama_cpp(tensor, shape.heads)
            elif hf == "self_attn.k_proj":
                tensor = permute_like_llama_cpp(tensor, shape.kv_heads)
            writer.add_tensor(f"blk.{i}.{cpp}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


# Q8_0 quantizes rows in blocks of 32, so the GGUF model's hidden size is a multiple of 32.
GGUF_SHAPE = Shape("LlamaForCausalLM", hidden=64, heads=4, kv_heads=2)


def test_unpermute_inverts_llama_cpp_row_order() -> None:
    weight = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    np.testing.assert_array_equal(unpermute_rope_rows(permute_like_llama_cpp(weight, 2), 2), weight)


def test_gguf_checkpoint_matches_numpy(tmp_path: Path) -> None:
    shape = GGUF_SHAPE
    stored = write_gguf(tmp_path / "tiny.gguf", shape, random_weights(shape))
    model = load_version(
        convert_checkpoint(
            tmp_path / "tiny.gguf", tmp_path / "repo", "tiny", progress=lambda _: None
        )
    )
    states = run(model, [IDS])
    expected = numpy_llama(shape, stored, IDS)
    for layer in range(shape.layers + 1):
        np.testing.assert_allclose(
            states[layer][0], expected[layer], atol=1e-4, err_msg=f"layer {layer}"
        )


def test_gguf_tokenizer_is_byte_level_bpe_with_control_tokens(tmp_path: Path) -> None:
    shape = GGUF_SHAPE
    write_gguf(tmp_path / "tiny.gguf", shape, random_weights(shape))
    model = load_version(
        convert_checkpoint(
            tmp_path / "tiny.gguf", tmp_path / "repo", "tiny", progress=lambda _: None
        )
    )
    encoded = model.encoder.encode((TextItem("hello<|endoftext|>"),))
    pieces = model.encoder.token_strings(encoded)
    assert pieces == ("hel", "l", "o", "<|endoftext|>")
    assert model.encoder.template.prefix == () and model.encoder.template.suffix == ()


def test_unsupported_gguf_architecture_is_named(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "rwkv6")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ValueError, match="GGUF architecture 'rwkv6' is not supported; supported: llama, qwen2"
    ):
        convert_checkpoint(tmp_path / "other.gguf", tmp_path / "repo", "x", progress=lambda _: None)


@pytest.mark.parametrize("log_additive", [True, False])
def test_decoder_controls_follow_the_atman_formulas(tmp_path: Path, log_additive: bool) -> None:
    shape = SHAPES[0]
    weights = random_weights(shape)
    folder = write_hf_folder(tmp_path / "checkpoint", shape, weights)
    model = load_version(
        convert_checkpoint(folder, tmp_path / "repo", "tiny", progress=lambda _: None)
    )
    factors = [1.0, 0.5, 3.0, 0.0, 1.0, 2.0, 1.0, 0.1, 1.0]
    states = run(model, [IDS, IDS[:5]], [factors, None], [log_additive, log_additive])
    expected = numpy_llama(shape, weights, IDS, np.asarray(factors), log_additive)
    plain = numpy_llama(shape, weights, IDS[:5])
    last = shape.layers
    np.testing.assert_allclose(states[last][0], expected[last], atol=1e-4)
    # The plain row beside it in the batch is untouched.
    np.testing.assert_allclose(states[last][1, :5], plain[last], atol=1e-4)
    assert not np.allclose(states[last][0], numpy_llama(shape, weights, IDS)[last], atol=1e-3)


def test_factor_one_is_bit_identical_and_masking_everything_gives_no_nan(tmp_path: Path) -> None:
    shape = SHAPES[0]
    weights = random_weights(shape)
    folder = write_hf_folder(tmp_path / "checkpoint", shape, weights)
    model = load_version(
        convert_checkpoint(folder, tmp_path / "repo", "tiny", progress=lambda _: None)
    )
    plain = run(model, [IDS])
    ones = run(model, [IDS], [[1.0] * len(IDS)])
    assert all(np.array_equal(plain[layer], ones[layer]) for layer in plain)
    # Key 0 masked: query 0 sees nothing else, so it attends as if uncontrolled (no NaN).
    first_masked = [0.0] + [1.0] * (len(IDS) - 1)
    states = run(model, [IDS], [first_masked])
    expected = numpy_llama(shape, weights, IDS, np.asarray(first_masked))
    assert np.isfinite(states[shape.layers]).all()
    np.testing.assert_allclose(states[shape.layers][0], expected[shape.layers], atol=1e-4)
    everything = run(model, [IDS], [[0.0] * len(IDS)])
    np.testing.assert_array_equal(everything[shape.layers], plain[shape.layers])
