"""GTE "new" encoders (NewModel: gte-base/large-en-v1.5, gte-multilingual-base) against a numpy
forward pass written from Alibaba's remote code, which transformers does not carry.

Source: the Hugging Face Hub repository Alibaba-NLP/new-impl, modeling.py and configuration.py
(every gte-*-v1.5 / gte-multilingual config.json points its auto_map there; revision
40ced75c3017eb27626c9d4ea981bde21a2662f4 is the one downstream projects pin). That repository is
not on GitHub, so it could not be fetched here: the code was read from a public copy of
modeling.py in the stored code index (which names no repository or commit for it; NewEmbeddings,
RotaryEmbedding, NTKScalingRotaryEmbedding, NewAttention, NewGatedMLP, NewLayer, NewEncoder and
NewModel.forward as below) and NewConfig's defaults from a copy of configuration.py (7.1 kB, the
size the Hub lists). Pieces mirrored here:
- embeddings: word + token type 0 (type_vocab_size > 0), then a LayerNorm; no absolute positions
  with position_embedding_type "rope";
- RoPE: rotate_half over the whole head; NTKScalingRotaryEmbedding builds its table for
  max_position_embeddings * factor positions, which takes the scaled branch (base * factor,
  inv_freq / factor^(2 / dim); mixed_b: inv_freq / exp(a m^b)) whenever factor > 1;
- NewLayer: packed qkv_proj (bias), o_proj (bias), residual, attn_ln; up_gate_proj (no bias)
  split into up then gate, act(gate) * up, down_proj (bias), residual, mlp_ln (post-norm);
- NewEncoder's output_hidden_states: the embeddings, then every layer's output;
- unpadding (unpad_inputs with xformers) computes exactly the padded path, the padding mask here.
The fixture is configured as gte-large-en-v1.5 is (rope_theta 160000, NTK factor 2, two token
types, LayerNorm, exact GELU, packed qkv), at tiny sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from transformers import PreTrainedTokenizerFast

from tests.families.reference import FamilySpec, Forward
from tests.families.specs.nomic_bert import (
    SPECIALS,
    attention,
    gelu,
    layer_norm,
    linear,
    pad_id,
)
from tests.families.tiny_tokenizers import wordpiece

HIDDEN, HEADS, LAYERS, INTERMEDIATE, POSITIONS = 40, 4, 3, 52, 160


def gte_config(vocab: int, pad: int) -> dict[str, Any]:
    """config.json as gte-large-en-v1.5 has it (without its auto_map, which would send
    transformers looking for the remote code), at tiny sizes."""
    return {
        "architectures": ["NewModel"],
        "model_type": "new",
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "layer_norm_eps": 1e-12,
        "layer_norm_type": "layer_norm",
        "logn_attention_clip1": False,
        "logn_attention_scale": False,
        "max_position_embeddings": POSITIONS,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pack_qkv": True,
        "pad_token_id": pad,
        "position_embedding_type": "rope",
        "rope_scaling": {"factor": 2.0, "type": "ntk"},
        "rope_theta": 160000,
        "torch_dtype": "float32",
        "type_vocab_size": 2,
        "unpad_inputs": False,
        "use_memory_efficient_attention": False,
        "vocab_size": vocab,
    }


def random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor NewModel has, drawn afresh (norm weights around 1)."""
    rng = np.random.default_rng(seed)
    h, inner = config["hidden_size"], config["intermediate_size"]

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(config["vocab_size"], h),
        "embeddings.token_type_embeddings.weight": r(config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": 1 + r(h),
        "embeddings.LayerNorm.bias": r(h),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        w[f"{p}.attention.qkv_proj.weight"], w[f"{p}.attention.qkv_proj.bias"] = (
            r(3 * h, h),
            r(3 * h),
        )
        w[f"{p}.attention.o_proj.weight"], w[f"{p}.attention.o_proj.bias"] = r(h, h), r(h)
        w[f"{p}.mlp.up_gate_proj.weight"] = r(2 * inner, h)
        w[f"{p}.mlp.down_proj.weight"], w[f"{p}.mlp.down_proj.bias"] = r(h, inner), r(h)
        for norm in ("attn_ln", "mlp_ln"):
            w[f"{p}.{norm}.weight"], w[f"{p}.{norm}.bias"] = 1 + r(h), r(h)
    return w


def rope_tables(config: dict[str, Any], length: int) -> tuple[np.ndarray, np.ndarray]:
    """NewEmbeddings' rotary_emb cos / sin [length, head_dim], float32 as the remote code's
    RotaryEmbedding / NTKScalingRotaryEmbedding build them (in their order of calls)."""
    dim = config["hidden_size"] // config["num_attention_heads"]
    base = float(config["rope_theta"])
    max_positions = config["max_position_embeddings"]
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(base), exponents)).astype(np.float32)
    scaling = config.get("rope_scaling")
    if scaling is not None:
        assert scaling["type"] == "ntk"
        factor, mixed_b = float(scaling["factor"]), scaling.get("mixed_b")
        cached = max_positions * factor  # the second _set_cos_sin_cache of __init__
        if cached > max_positions:
            scaled_base = base * (factor if mixed_b is None else 1)
            inv_freq = (np.float32(1.0) / np.power(np.float32(scaled_base), exponents)).astype(
                np.float32
            )
            if mixed_b is None:
                inv_freq = (inv_freq / np.float32(factor ** (2 / dim))).astype(np.float32)
            else:
                a = np.log(np.float32(factor)) / np.float32((dim / 2) ** mixed_b)
                steps = np.arange(1, dim // 2 + 1, dtype=np.float32)
                inv_freq = (inv_freq / np.exp(a * steps**mixed_b)).astype(np.float32)
    freqs = np.outer(np.arange(length, dtype=np.float32), inv_freq).astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float64), np.sin(emb).astype(np.float64)


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def gte_forward(w: dict[str, np.ndarray], config: dict[str, Any]) -> Forward:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim, inner = hidden // heads, config["intermediate_size"]
    eps = config["layer_norm_eps"]
    assert config["hidden_act"] == "gelu" and config["layer_norm_type"] == "layer_norm"

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        x = w["embeddings.word_embeddings.weight"].astype(np.float64)[ids]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        states = [x]
        cos, sin = rope_tables(config, length)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # [1, sequence, 1, head_dim]
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            qkv = linear(x, w, f"{p}.attention.qkv_proj")
            q, k, v = (
                part.reshape(batch, length, heads, head_dim) for part in np.split(qkv, 3, -1)
            )
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            context = attention(
                q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask
            )
            context = context.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
            x = x + linear(context, w, f"{p}.attention.o_proj")
            x = layer_norm(x, w[f"{p}.attn_ln.weight"], w[f"{p}.attn_ln.bias"], eps)
            up_gate = linear(x, w, f"{p}.mlp.up_gate_proj")
            up, gate = up_gate[..., :inner], up_gate[..., inner:]
            x = x + linear(gelu(gate) * up, w, f"{p}.mlp.down_proj")
            x = layer_norm(x, w[f"{p}.mlp_ln.weight"], w[f"{p}.mlp_ln.bias"], eps)
            states.append(x)
        return np.stack(states).astype(np.float32)

    return forward


def build(folder: Path) -> Forward:
    tokenizer = wordpiece()
    config = gte_config(tokenizer.get_vocab_size(), pad_id(tokenizer))
    weights = random_weights(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIALS).save_pretrained(folder)
    return gte_forward(weights, config)


SPECS = [FamilySpec("gte", "NewModel", build, {"reference": "numpy remote code"})]
