"""GGUF files (llama.cpp's format) of Llama-family models, dequantized to float32.

Architectures `llama` (Q/K rows permuted by llama.cpp), `qwen2` (q/k/v biases) and `qwen3`
(per-head q/k norms; rows as in Hugging Face)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from lamina.server.convert import llama
from lamina.server.convert.converted import ConvertedModel, Progress, require_tensors
from lamina.server.convert.gguf_tokenizer import tokenizer_from_gguf

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

# GGUF tensor names -> the bare Hugging Face names the Llama builder reads.
_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    # Qwen3's per-head norms: llama.cpp writes them as they are (it permutes Q/K rows for the
    # llama architecture only), so they pair with q_proj / k_proj rows in Hugging Face's order.
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
    return None  # e.g. output.weight, the LM head: not part of any hidden state


def unpermute_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: it interleaves each head's two RoPE halves, where
    transformers keeps them as [first half, second half]."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclass
class GGUFWeights:
    reader: GGUFReader
    by_name: dict[str, Any]  # bare HF name -> ReaderTensor
    config: llama.LlamaConfig
    permuted: bool  # llama arch: Q/K rows in llama.cpp's RoPE order

    def __call__(self, name: str) -> np.ndarray:
        tensor = self.by_name[name]
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if self.permuted and ".self_attn.q_proj." in name:
            values = unpermute_rope_rows(values, self.config.num_heads)
        elif self.permuted and ".self_attn.k_proj." in name:
            values = unpermute_rope_rows(values, self.config.num_kv_heads)
        return values


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def config_from_metadata(meta: dict[str, Any]) -> llama.LlamaConfig:
    arch = str(meta.get("general.architecture"))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{name}")
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(
            f"GGUF {arch}.rope.scaling.type {scaling!r} is not supported; only plain RoPE is"
        )
    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    return llama.LlamaConfig(
        num_layers=int(key("block_count")),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)),
        head_dim=int(key("attention.key_length", hidden // heads)),
        intermediate_size=int(key("feed_forward_length")),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        max_positions=int(key("context_length")),
        vocab_size=int(meta.get(f"{arch}.vocab_size") or len(tokens)),
        attention_bias=arch == "qwen2",
        output_bias=False,
        mlp_bias=False,
        qk_norm=arch == "qwen3",
    )


def refuse_unread_tensors(names: Iterable[str], config: llama.LlamaConfig, what: str) -> None:
    """A block tensor the graph would not read (a bias the architecture does not have, such as
    a qwen3 file with attention biases) changes the model: refuse rather than drop it."""
    expected = set(llama.expected_tensors(config))
    unread = sorted(name for name in names if name not in expected)
    if unread:
        raise ValueError(
            f"{what}: tensors this architecture's graph does not read: {', '.join(unread)}"
        )


def convert_gguf(path: Path, progress: Progress) -> ConvertedModel:
    progress(f"reading {path.name}")
    reader = GGUFReader(str(path))
    meta = read_metadata(reader)
    config = config_from_metadata(meta)
    by_name = {bare: t for t in reader.tensors if (bare := hf_name(t.name)) is not None}
    require_tensors(by_name.keys(), llama.expected_tensors(config), str(path))
    refuse_unread_tensors(by_name.keys(), config, str(path))
    weights = GGUFWeights(reader, by_name, config, permuted=meta["general.architecture"] == "llama")
    tokenizer = tokenizer_from_gguf(meta)
    progress(
        f"dequantizing and building the llama graph: {config.num_layers} blocks, "
        f"hidden {config.hidden_size}, {config.num_heads}/{config.num_kv_heads} heads"
    )
    pad = meta.get("tokenizer.ggml.padding_token_id", meta.get("tokenizer.ggml.eos_token_id", 0))
    return llama.convert_llama(config, weights, tokenizer, int(pad or 0))
