"""Small random-weight models written as real checkpoints, and numpy forward passes of them
written from the equations: what the converters are checked against."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from lamina.server.models.loaded import LoadedModel
from lamina.server.repository.layout import VersionDir


def word_level_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    """One token per whitespace-separated word of `vocab` (which holds "[UNK]"), no special
    tokens: prompt tests that choose every id and embedding."""
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


@dataclass(frozen=True)
class Shape:
    architecture: str
    hidden: int
    heads: int
    kv_heads: int
    layers: int = 2
    ffn: int = 44
    vocab: int = 300
    positions: int = 64
    theta: float = 10000.0
    eps: float = 1e-5
    explicit_head_dim: int | None = None  # config.json `head_dim`, when not hidden / heads

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.heads

    @property
    def qkv_bias(self) -> bool:
        return self.architecture == "Qwen2ForCausalLM"


SHAPES = [
    Shape("LlamaForCausalLM", hidden=40, heads=4, kv_heads=2),  # GQA 2, head_dim 10
    Shape("Qwen2ForCausalLM", hidden=36, heads=6, kv_heads=1, theta=1e6),  # MQA, head_dim 6, biases
    Shape("MistralForCausalLM", hidden=30, heads=3, kv_heads=3),  # plain MHA, head_dim 10
    # An odd hidden size with its own head_dim (q_proj 40 x 45, o_proj 45 x 40).
    Shape("LlamaForCausalLM", hidden=45, heads=4, kv_heads=2, explicit_head_dim=10),
]


def random_weights(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, d = shape.hidden, shape.head_dim

    def r(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * 0.3).astype(np.float32)

    w = {
        "embed_tokens.weight": r(shape.vocab, h),
        "norm.weight": 1 + r(h),
        "lm_head.weight": r(shape.vocab, h),
    }
    for i in range(shape.layers):
        p = f"layers.{i}"
        w[f"{p}.input_layernorm.weight"] = 1 + r(h)
        w[f"{p}.post_attention_layernorm.weight"] = 1 + r(h)
        w[f"{p}.self_attn.q_proj.weight"] = r(shape.heads * d, h)
        w[f"{p}.self_attn.k_proj.weight"] = r(shape.kv_heads * d, h)
        w[f"{p}.self_attn.v_proj.weight"] = r(shape.kv_heads * d, h)
        w[f"{p}.self_attn.o_proj.weight"] = r(h, shape.heads * d)
        if shape.qkv_bias:
            for proj, out in (
                ("q", shape.heads * d),
                ("k", shape.kv_heads * d),
                ("v", shape.kv_heads * d),
            ):
                w[f"{p}.self_attn.{proj}_proj.bias"] = r(out)
        w[f"{p}.mlp.gate_proj.weight"] = r(shape.ffn, h)
        w[f"{p}.mlp.up_proj.weight"] = r(shape.ffn, h)
        w[f"{p}.mlp.down_proj.weight"] = r(h, shape.ffn)
    return w


def controlled_attention(
    scores: np.ndarray, visible: np.ndarray, factors: np.ndarray | None, log_additive: bool
) -> np.ndarray:
    """Attention probabilities [heads, q, k] under AtMan controls (docs/api.md), with the
    documented fallback: a query whose every visible key is masked attends as if uncontrolled."""
    plain = np.where(visible, scores, -np.inf)
    if factors is None:
        controlled = plain
    else:
        if log_additive:
            with np.errstate(divide="ignore"):
                changed = scores + np.log(factors)
        else:
            seen_min = np.where(visible, scores, np.inf).min(-1, keepdims=True)
            changed = (scores - seen_min) * factors
        controlled = np.where(visible, changed, -np.inf)
        all_masked = np.isneginf(controlled.max(-1, keepdims=True))
        controlled = np.where(all_masked, plain, controlled)
    probs = np.exp(controlled - controlled.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def numpy_llama(
    shape: Shape,
    w: dict[str, np.ndarray],
    ids: list[int],
    factors: np.ndarray | None = None,
    log_additive: bool = True,
    embeddings: np.ndarray | None = None,
) -> list[np.ndarray]:
    """transformers' LlamaModel hidden states, from the equations, with AtMan controls;
    `embeddings` replace the token embeddings of `ids` (a vision-language prompt)."""
    n, d = len(ids), shape.head_dim
    group = shape.heads // shape.kv_heads

    def rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + shape.eps) * weight

    inv_freq = 1.0 / shape.theta ** (np.arange(0, d, 2) / d)
    angles = np.arange(n)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))

    def rope(x: np.ndarray) -> np.ndarray:  # [heads, n, d]
        rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos + rotated * sin

    x = (w["embed_tokens.weight"][ids] if embeddings is None else embeddings).astype(np.float64)
    states = [x]
    visible = np.tril(np.ones((n, n), dtype=bool))
    for i in range(shape.layers):
        p = f"layers.{i}"

        def lin(v: np.ndarray, name: str, prefix: str = p) -> np.ndarray:
            out = v @ w[f"{prefix}.{name}.weight"].T.astype(np.float64)
            bias = w.get(f"{prefix}.{name}.bias")
            return out if bias is None else out + bias

        a = rms(x, w[f"{p}.input_layernorm.weight"])
        q = rope(lin(a, "self_attn.q_proj").reshape(n, shape.heads, d).transpose(1, 0, 2))
        k = rope(lin(a, "self_attn.k_proj").reshape(n, shape.kv_heads, d).transpose(1, 0, 2))
        v = lin(a, "self_attn.v_proj").reshape(n, shape.kv_heads, d).transpose(1, 0, 2)
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        probs = controlled_attention(scores, visible, factors, log_additive)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, shape.heads * d)
        x = x + lin(context, "self_attn.o_proj")
        m = rms(x, w[f"{p}.post_attention_layernorm.weight"])
        gate = lin(m, "mlp.gate_proj")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(m, "mlp.up_proj"), "mlp.down_proj")
        states.append(x)
    states[-1] = rms(x, w["norm.weight"])
    return states


def byte_level_vocab() -> list[str]:
    """GPT-2's byte alphabet as tokens 0..255, plus two merged pieces and a control token."""
    from lamina.server.convert.gguf_tokenizer import _byte_alphabet

    return [*_byte_alphabet().values(), "he", "hel", "<|endoftext|>"]


def write_hf_folder(folder: Path, shape: Shape, weights: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    config = {
        "architectures": [shape.architecture],
        "hidden_size": shape.hidden,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "num_hidden_layers": shape.layers,
        "intermediate_size": shape.ffn,
        "max_position_embeddings": shape.positions,
        "vocab_size": shape.vocab,
        "rms_norm_eps": shape.eps,
        "rope_theta": shape.theta,
        "tie_word_embeddings": False,
        "sliding_window": 16 if shape.architecture == "MistralForCausalLM" else None,
    }
    if shape.explicit_head_dim:
        config["head_dim"] = shape.explicit_head_dim
    (folder / "config.json").write_text(json.dumps(config))
    save_file(
        {f"model.{k}" if k != "lm_head.weight" else k: v for k, v in weights.items()},
        str(folder / "model.safetensors"),
    )
    vocab = {token: i for i, token in enumerate(byte_level_vocab())}
    Tokenizer(models.BPE(vocab=vocab, merges=[("h", "e"), ("he", "l")])).save(
        str(folder / "tokenizer.json")
    )
    return folder


@dataclass(frozen=True)
class VisionShape:
    hidden: int = 32
    heads: int = 4
    layers: int = 2
    patch: int = 14
    image_size: int = 168  # 12 x 12 patches: one per cell, no pooling
    eps: float = 1e-6

    @property
    def side(self) -> int:
        return self.image_size // self.patch


def random_dinov2_weights(shape: VisionShape, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h = shape.hidden

    def r(*dims: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    w = {
        "embeddings.cls_token": r(1, 1, h),
        "embeddings.mask_token": r(1, h),
        "embeddings.position_embeddings": r(1, 1 + shape.side**2, h),
        "embeddings.patch_embeddings.projection.weight": r(
            h, 3, shape.patch, shape.patch, scale=0.05
        ),
        "embeddings.patch_embeddings.projection.bias": r(h),
        "layernorm.weight": 1 + r(h),
        "layernorm.bias": r(h),
    }
    for i in range(shape.layers):
        p = f"encoder.layer.{i}"
        for norm in ("norm1", "norm2"):
            w[f"{p}.{norm}.weight"], w[f"{p}.{norm}.bias"] = 1 + r(h), r(h)
        for part, (out, inp) in {
            "attention.attention.query": (h, h),
            "attention.attention.key": (h, h),
            "attention.attention.value": (h, h),
            "attention.output.dense": (h, h),
            "mlp.fc1": (4 * h, h),
            "mlp.fc2": (h, 4 * h),
        }.items():
            w[f"{p}.{part}.weight"], w[f"{p}.{part}.bias"] = r(out, inp), r(out)
        w[f"{p}.layer_scale1.lambda1"] = 0.5 + r(h)
        w[f"{p}.layer_scale2.lambda1"] = 0.5 + r(h)
    return w


def vision_config(shape: VisionShape) -> dict[str, object]:
    return {
        "model_type": "dinov2",
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "mlp_ratio": 4,
        "patch_size": shape.patch,
        "image_size": shape.image_size,
        "layer_norm_eps": shape.eps,
        "hidden_act": "gelu",
    }


def numpy_dinov2(
    shape: VisionShape,
    w: dict[str, np.ndarray],
    pixels: np.ndarray,
    key_factors: np.ndarray | None = None,
    log_additive: bool = True,
) -> list[np.ndarray]:
    """transformers' Dinov2Model hidden states [1 + patches, hidden] of one image [3, s, s],
    position embeddings at their trained grid; AtMan factors per patch key (class token: 1)."""
    h, p, side = shape.hidden, shape.patch, shape.side
    d = h // shape.heads

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + shape.eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T.astype(np.float64) + w[f"{name}.bias"]

    blocks = pixels.reshape(3, side, p, side, p).transpose(1, 3, 0, 2, 4).reshape(side * side, -1)
    kernel = w["embeddings.patch_embeddings.projection.weight"].reshape(h, -1)
    patches = (
        blocks @ kernel.T.astype(np.float64) + w["embeddings.patch_embeddings.projection.bias"]
    )
    x = (
        np.concatenate([w["embeddings.cls_token"][0], patches])
        + w["embeddings.position_embeddings"][0]
    )
    states = [x]
    n = x.shape[0]
    factors = None if key_factors is None else np.concatenate([[1.0], key_factors])
    for i in range(shape.layers):
        a = f"encoder.layer.{i}"
        y = norm(x, f"{a}.norm1")
        q, k, v = (
            lin(y, f"{a}.attention.attention.{part}").reshape(n, shape.heads, d).transpose(1, 0, 2)
            for part in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        probs = controlled_attention(scores, np.ones((n, n), bool), factors, log_additive)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, h)
        x = x + lin(context, f"{a}.attention.output.dense") * w[f"{a}.layer_scale1.lambda1"]
        up = lin(norm(x, f"{a}.norm2"), f"{a}.mlp.fc1")
        gelu = exact_gelu(up)
        x = x + lin(gelu, f"{a}.mlp.fc2") * w[f"{a}.layer_scale2.lambda1"]
        states.append(x)
    return states


def random_projector_weights(
    vision: VisionShape, text: Shape, seed: int = 2
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * 0.3).astype(np.float32)

    return {
        "linear_1.weight": r(text.hidden, vision.hidden),
        "linear_1.bias": r(text.hidden),
        "linear_2.weight": r(text.hidden, text.hidden),
        "linear_2.bias": r(text.hidden),
    }


def write_llava_folder(
    folder: Path,
    vision: VisionShape,
    text: Shape,
    weights: dict[str, dict[str, np.ndarray]],  # "vision", "projector", "text"
) -> Path:
    """A LLaVA-layout checkpoint (transformers 5 names) with a DINOv2 tower and a Llama LM."""
    folder.mkdir(parents=True)
    write_hf_folder(folder / "text", text, weights["text"])
    text_config = json.loads((folder / "text" / "config.json").read_text())
    text_config["model_type"] = "llama"
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "vision_config": vision_config(vision),
        "text_config": text_config,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "image_size": vision.image_size,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "text" / "tokenizer.json").rename(folder / "tokenizer.json")
    tensors = {
        **{f"model.vision_tower.{k}": v for k, v in weights["vision"].items()},
        **{f"model.multi_modal_projector.{k}": v for k, v in weights["projector"].items()},
        **{
            f"model.language_model.{k}": v
            for k, v in weights["text"].items()
            if k != "lm_head.weight"
        },
        "lm_head.weight": weights["text"]["lm_head.weight"],
    }
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def numpy_vlm(
    vision: VisionShape,
    text: Shape,
    weights: dict[str, dict[str, np.ndarray]],
    ids: list[int],
    images: list[np.ndarray],
    image_starts: list[int],
    factors: np.ndarray | None = None,
    key_factors: list[np.ndarray] | None = None,
    log_additive: bool = True,
) -> list[np.ndarray]:
    """The language model's hidden states with each image's projected last vision state (class
    token dropped) in place of the 144 input embeddings from its start position."""
    embeddings = weights["text"]["embed_tokens.weight"][ids].astype(np.float64)
    pw = weights["projector"]
    for index, (pixels, start) in enumerate(zip(images, image_starts, strict=True)):
        keys = None if key_factors is None else key_factors[index]
        cells = numpy_dinov2(vision, weights["vision"], pixels, keys, log_additive)[-1][1:]
        up = cells @ pw["linear_1.weight"].T + pw["linear_1.bias"]
        gelu = exact_gelu(up)
        embeddings[start : start + len(cells)] = (
            gelu @ pw["linear_2.weight"].T + pw["linear_2.bias"]
        )
    return numpy_llama(text, weights["text"], ids, factors, log_additive, embeddings)


def exact_gelu(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + erf(x / sqrt 2))."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    result: np.ndarray = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return result


def load_version(path: Path) -> LoadedModel:
    """A converted version folder (`<repository>/<name>/<version>`), loaded for serving."""
    return LoadedModel.load(
        VersionDir(path.parent.name, int(path.name), path),
        threads=1,
        providers=["CPUExecutionProvider"],
    )


VlmWeights = dict[str, dict[str, np.ndarray]]  # "vision", "projector", "text"


def convert_tiny_vlm(root: Path, vision: VisionShape, text: Shape) -> tuple[Path, VlmWeights]:
    """A random-weight LLaVA checkpoint converted (as untrained) into `root`/repo: the version's
    path and the weights, for the numpy reference."""
    from lamina.server.convert.pipeline import convert_checkpoint

    weights = {
        "vision": random_dinov2_weights(vision),
        "projector": random_projector_weights(vision, text),
        "text": random_weights(text),
    }
    folder = write_llava_folder(root / "checkpoint", vision, text, weights)
    path = convert_checkpoint(
        folder, root / "repo", "tiny-vlm", trained=False, progress=lambda _: None
    )
    return path, weights
