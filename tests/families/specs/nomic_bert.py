"""NomicBERT (NomicBertModel: nomic-embed-text v1 / v1.5) against a numpy forward pass of
nomic-ai's published remote code: github.com/nomic-ai/contrastors,
src/contrastors/models/huggingface/modeling_hf_nomic_bert.py and configuration_hf_nomic_bert.py
at commit 496a0593453c3fc1b0dce723c176e82819afb7bb (the last to change the model file; HEAD
613ddfd37309e538cceadb05b1e6423e7b09f603).

Why not transformers alone: transformers 5.5.4 has a nomic_bert model and loads the published
tensor layout (its conversion mapping splits Wqkv and renames fc11 / fc12 / fc2, norm1 / norm2,
emb_ln; save_pretrained writes that layout back), but its NomicBertConfig reads none of the
published config.json's keys (n_embd, n_head, n_layer, n_inner, n_positions, rotary_emb_base,
rotary_emb_fraction, rotary_emb_interleaved, qkv_proj_bias, mlp_fc1_bias, ...): it would run
its defaults. It also has neither partial nor interleaved rotary nor biases. So the reference is
the remote code's forward in numpy; `nomic-bert` is what nomic-embed-text ships (full-width NeoX
rotary, base 1000, SwiGLU, no biases) and is also checked against transformers' NomicBertModel
on the same weights; `nomic-bert-rotary` sets the options only the remote code has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer
from transformers import NomicBertConfig, NomicBertModel

from tests.families.reference import (
    FamilySpec,
    Forward,
    randomize,
    save_checkpoint,
    transformers_forward,
)
from tests.families.tiny_tokenizers import wordpiece

HIDDEN, HEADS, LAYERS, INNER, POSITIONS = 36, 3, 3, 50, 160
SPECIALS = {
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "mask_token": "[MASK]",
}


def published_config(vocab: int, pad: int, **options: Any) -> dict[str, Any]:
    """config.json as nomic-embed-text-v1.5 writes it (GPT-2 key names), at tiny sizes."""
    return {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "activation_function": "swiglu",
        "n_embd": HIDDEN,
        "n_head": HEADS,
        "n_layer": LAYERS,
        "n_inner": INNER,
        "n_positions": POSITIONS,
        "max_trained_positions": POSITIONS,
        "vocab_size": vocab,
        "type_vocab_size": 2,
        "layer_norm_epsilon": 1e-12,
        "pad_token_id": pad,
        "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None,
        "qkv_proj_bias": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "prenorm": False,
        "parallel_block": False,
        "causal": False,
        "use_rms_norm": False,
        "pad_vocab_size_multiple": 1,
        **options,
    }


def pad_id(tokenizer: Tokenizer) -> int:
    pad = tokenizer.token_to_id("[PAD]")
    assert pad is not None
    return pad


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1 + erf(x / np.sqrt(2.0)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    y = x @ w[f"{name}.weight"].astype(np.float64).T
    bias = w.get(f"{name}.bias")
    return y if bias is None else y + bias


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """softmax(q k^T / sqrt(d) + padding mask) v over [batch, heads, sequence, d]."""
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    # get_extended_attention_mask: (1 - mask) * float32 min, added to the scores.
    scores = scores + (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs = probs / probs.sum(-1, keepdims=True)
    return probs @ v


def rotary_tables(dim: int, base: float, length: int) -> tuple[np.ndarray, np.ndarray]:
    """NomicBertRotaryEmbedding's cos / sin [length, dim / 2], float32 as it computes them."""
    inv_freq = np.float32(1.0) / np.power(
        np.float32(base), np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    )
    freqs = np.outer(np.arange(length, dtype=np.float32), inv_freq.astype(np.float32))
    return np.cos(freqs).astype(np.float64), np.sin(freqs).astype(np.float64)


def apply_rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """apply_rotary_emb: x [batch, sequence, heads, head_dim], the first 2 * cos.shape[-1] dims."""
    rotary = cos.shape[-1] * 2
    rot, rest = x[..., :rotary], x[..., rotary:]
    if interleaved:
        c, s = np.repeat(cos, 2, axis=-1), np.repeat(sin, 2, axis=-1)  # "... d -> ... (d 2)"
        rotated = np.stack([-rot[..., 1::2], rot[..., ::2]], axis=-1).reshape(rot.shape)
    else:
        c, s = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
        half = rotary // 2
        rotated = np.concatenate([-rot[..., half:], rot[..., :half]], -1)
    c, s = c[None, :, None, :], s[None, :, None, :]
    return np.concatenate([rot * c + rotated * s, rest], -1)


def nomic_forward(w: dict[str, np.ndarray], config: dict[str, Any]) -> Forward:
    """NomicBertModel.forward of the remote code (post-norm, gated MLP), every block's output
    kept (the remote code returns only the last: these are the states between its blocks)."""
    hidden, heads = config["n_embd"], config["n_head"]
    head_dim = hidden // heads
    eps = config["layer_norm_epsilon"]
    rotary_dim = int(head_dim * config["rotary_emb_fraction"])
    interleaved = bool(config["rotary_emb_interleaved"])
    act = {"swiglu": silu, "geglu": gelu, "glu": sigmoid}[config["activation_function"]]

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        x = w["embeddings.word_embeddings.weight"].astype(np.float64)[ids]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = layer_norm(x, w["emb_ln.weight"], w["emb_ln.bias"], eps)
        states = [x]
        cos, sin = rotary_tables(rotary_dim, config["rotary_emb_base"], length)
        for i in range(config["n_layer"]):
            p = f"encoder.layers.{i}"
            qkv = linear(x, w, f"{p}.attn.Wqkv").reshape(batch, length, 3, heads, head_dim)
            q = apply_rotary(qkv[:, :, 0], cos, sin, interleaved)
            k = apply_rotary(qkv[:, :, 1], cos, sin, interleaved)
            v = qkv[:, :, 2]
            context = attention(
                q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask
            )
            context = context.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
            attn = linear(context, w, f"{p}.attn.out_proj")
            x = layer_norm(attn + x, w[f"{p}.norm1.weight"], w[f"{p}.norm1.bias"], eps)
            gated = linear(x, w, f"{p}.mlp.fc11") * act(linear(x, w, f"{p}.mlp.fc12"))
            mlp = linear(gated, w, f"{p}.mlp.fc2")
            x = layer_norm(mlp + x, w[f"{p}.norm2.weight"], w[f"{p}.norm2.bias"], eps)
            states.append(x)
        return np.stack(states).astype(np.float32)

    return forward


def _write_tiny(folder: Path) -> tuple[NomicBertModel, dict[str, np.ndarray], int, int]:
    """transformers' NomicBertModel, randomized and saved (it writes the remote code's tensor
    layout); returns the model, its tensors as saved, the vocabulary size and the pad id."""
    tokenizer = wordpiece()
    pad = pad_id(tokenizer)
    config = NomicBertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INNER,
        max_position_embeddings=POSITIONS,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=pad,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
    )
    model = NomicBertModel(config).eval()
    randomize(model)
    save_checkpoint(folder, model, tokenizer, **SPECIALS)
    return model, load_file(str(folder / "model.safetensors")), tokenizer.get_vocab_size(), pad


def _check_against_transformers(model: NomicBertModel, forward: Forward) -> None:
    """The numpy remote-code forward and transformers' agree where both apply."""
    rng = np.random.default_rng(0)
    ids = rng.integers(5, model.config.vocab_size, size=(2, 17))
    mask = np.ones_like(ids)
    mask[1, 11:] = 0
    ours, theirs = forward(ids, mask), transformers_forward(model)(ids, mask)
    for row, length in ((0, 17), (1, 11)):
        error = float(np.abs(ours[:, row, :length] - theirs[:, row, :length]).max())
        assert error < 1e-4, f"numpy remote-code forward vs transformers: {error:.2e}"


def build(folder: Path) -> Forward:
    model, weights, vocab, pad = _write_tiny(folder)
    config = published_config(vocab, pad)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    forward = nomic_forward(weights, config)
    _check_against_transformers(model, forward)
    return forward


def build_rotary_variant(folder: Path) -> Forward:
    """Half of each head rotating, GPT-J interleaved pairs, GeGLU and every bias."""
    _, weights, vocab, pad = _write_tiny(folder)
    rng = np.random.default_rng(1)
    for name in list(weights):
        if any(part in name for part in ("Wqkv", "out_proj", "fc11", "fc12", "fc2")):
            rows = weights[name].shape[0]
            bias = name.replace(".weight", ".bias")
            weights[bias] = (rng.standard_normal((rows,)) * 0.3).astype(np.float32)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = published_config(
        vocab,
        pad,
        activation_function="geglu",
        rotary_emb_fraction=0.5,
        rotary_emb_interleaved=True,
        rotary_emb_base=10_000,
        qkv_proj_bias=True,
        mlp_fc1_bias=True,
        mlp_fc2_bias=True,
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return nomic_forward(weights, config)


SPECS = [
    FamilySpec("nomic-bert", "NomicBertModel", build, {"reference": "numpy remote code"}),
    FamilySpec(
        "nomic-bert-rotary",
        "NomicBertModel",
        build_rotary_variant,
        {"reference": "numpy remote code", "options": "rotary 1/2 interleaved, geglu, biases"},
    ),
]
