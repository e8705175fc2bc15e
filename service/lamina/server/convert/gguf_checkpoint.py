"""GGUF files (llama.cpp's format), dequantized to float32.

Decoders: architectures `llama` (Q/K rows permuted by llama.cpp), `qwen2` (q/k/v biases) and
`qwen3` (per-head q/k norms; rows as in Hugging Face), `gemma3` (Gemma 3 text models).
Encoders: `bert` (BertModel and what llama.cpp converts to it: MiniLM, bge, e5) and
`nomic-bert` (nomic-embed-text v1 / v1.5) with their WordPiece vocabulary, `gemma-embedding`
(EmbeddingGemma) with Gemma's SentencePiece vocabulary, `modern-bert` (ModernBERT) with its
byte-level BPE."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from lamina.server.convert import bert, gemma, llama, modernbert, nomic_bert
from lamina.server.convert.converted import ConvertedModel, Progress, require_tensors
from lamina.server.convert.gguf_tokenizer import (
    modernbert_tokenizer_from_gguf,
    sentencepiece_tokenizer_from_gguf,
    tokenizer_from_gguf,
    wordpiece_tokenizer_from_gguf,
)

LLAMA_ARCHITECTURES = ("llama", "qwen2", "qwen3")
ENCODER_ARCHITECTURES = ("bert", "nomic-bert", "modern-bert")
GEMMA_ARCHITECTURES = ("gemma3", "gemma-embedding")
SUPPORTED_ARCHITECTURES = (*LLAMA_ARCHITECTURES, *ENCODER_ARCHITECTURES, *GEMMA_ARCHITECTURES)

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


def architecture(meta: dict[str, Any]) -> str:
    arch = str(meta.get("general.architecture"))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def config_from_metadata(meta: dict[str, Any]) -> llama.LlamaConfig:
    arch = architecture(meta)
    if arch not in LLAMA_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not a Llama-family decoder")

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
    arch = architecture(meta)
    if arch == "bert":
        return convert_bert_gguf(path, reader, meta, progress)
    if arch == "nomic-bert":
        return convert_nomic_bert_gguf(path, reader, meta, progress)
    if arch in GEMMA_ARCHITECTURES:
        return convert_gemma_gguf(path, reader, meta, progress)
    if arch == "modern-bert":
        return convert_modernbert_gguf(path, reader, meta, progress)
    return convert_llama_gguf(path, reader, meta, progress)


def convert_llama_gguf(
    path: Path, reader: GGUFReader, meta: dict[str, Any], progress: Progress
) -> ConvertedModel:
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


# --- encoders -----------------------------------------------------------------------------------


@dataclass
class DequantizedWeights:
    """Tensors by the Hugging Face name a builder reads, dequantized on access."""

    by_name: dict[str, Any]  # HF name -> ReaderTensor

    def __call__(self, name: str) -> np.ndarray:
        tensor = self.by_name[name]
        return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def encoder_tensors(
    tensors: Iterable[Any],
    global_names: dict[str, str],
    block_names: dict[str, str],
    block_prefix: str,
    what: str,
) -> dict[str, Any]:
    """GGUF tensors under the builder's names. A classifier head (llama.cpp's `cls.*`) is not
    part of any hidden state and is left out; any other tensor the graph would not read changes
    the model, so it is refused rather than dropped."""
    by_name: dict[str, Any] = {}
    unread: list[str] = []
    for tensor in tensors:
        name = str(tensor.name)
        parts = name.split(".", 2)
        if name in global_names:
            by_name[global_names[name]] = tensor
        elif len(parts) == 3 and parts[0] == "blk" and parts[2] in block_names:
            by_name[f"{block_prefix}.{parts[1]}.{block_names[parts[2]]}"] = tensor
        elif not name.startswith("cls."):
            unread.append(name)
    if unread:
        raise ValueError(
            f"{what}: tensors this architecture's graph does not read: {', '.join(sorted(unread))}"
        )
    return by_name


def metadata_key(meta: dict[str, Any], arch: str, name: str, default: Any = None) -> Any:
    value = meta.get(f"{arch}.{name}", default)
    if value is None:
        raise ValueError(f"GGUF metadata lacks {arch}.{name}")
    return value


def refuse_causal(meta: dict[str, Any], arch: str) -> None:
    if meta.get(f"{arch}.attention.causal"):
        raise ValueError(
            f"GGUF {arch}.attention.causal true is not supported; "
            "only bidirectional attention (false), as llama.cpp's converter writes encoders"
        )


def vocabulary_size(meta: dict[str, Any], arch: str) -> int:
    tokens = meta.get("tokenizer.ggml.tokens") or []
    return int(meta.get(f"{arch}.vocab_size") or len(tokens))


# llama.cpp's BERT names (gguf-py tensor_mapping.py) -> the names bert.py reads.
_BERT_GLOBAL_NAMES = {
    "token_embd.weight": bert.WORD_EMBEDDINGS,
    "token_types.weight": bert.TOKEN_TYPE_EMBEDDINGS,
    "position_embd.weight": bert.POSITION_EMBEDDINGS,
    "token_embd_norm.weight": bert.EMBEDDINGS_NORM[0],
    "token_embd_norm.bias": bert.EMBEDDINGS_NORM[1],
}
_BERT_BLOCK_PARTS = {
    "attn_q": bert.BERT_BLOCK.query,
    "attn_k": bert.BERT_BLOCK.key,
    "attn_v": bert.BERT_BLOCK.value,
    "attn_output": bert.BERT_BLOCK.attention_output,
    "attn_output_norm": bert.BERT_BLOCK.attention_norm,
    "ffn_up": bert.BERT_BLOCK.up,
    "ffn_down": bert.BERT_BLOCK.down,
    "layer_output_norm": bert.BERT_BLOCK.ffn_norm,
}
_BERT_BLOCK_NAMES = {
    f"{cpp}.{kind}": f"{hf}.{kind}"
    for cpp, hf in _BERT_BLOCK_PARTS.items()
    for kind in ("weight", "bias")
}


def bert_config_from_metadata(meta: dict[str, Any]) -> bert.BertConfig:
    """GGUF keys of llama.cpp's `bert` architecture. It stores no activation: llama.cpp's BERT
    graph applies GELU, and the checkpoints it converts (BERT, MiniLM, bge, e5) use the exact
    (erf) form transformers calls "gelu"."""
    refuse_causal(meta, "bert")
    return bert.BertConfig(
        num_layers=int(metadata_key(meta, "bert", "block_count")),
        hidden_size=int(metadata_key(meta, "bert", "embedding_length")),
        num_heads=int(metadata_key(meta, "bert", "attention.head_count")),
        intermediate_size=int(metadata_key(meta, "bert", "feed_forward_length")),
        max_positions=int(metadata_key(meta, "bert", "context_length")),
        vocab_size=vocabulary_size(meta, "bert"),
        layer_norm_eps=float(metadata_key(meta, "bert", "attention.layer_norm_epsilon", 1e-12)),
        hidden_act="gelu",
    )


def convert_bert_gguf(
    path: Path, reader: GGUFReader, meta: dict[str, Any], progress: Progress
) -> ConvertedModel:
    config = bert_config_from_metadata(meta)
    # Before the tensors: a RoBERTa (gpt2) or XLM-RoBERTa (t5) vocabulary is refused by name.
    tokenizer = wordpiece_tokenizer_from_gguf(meta)
    by_name = encoder_tensors(
        reader.tensors, _BERT_GLOBAL_NAMES, _BERT_BLOCK_NAMES, "encoder.layer", str(path)
    )
    require_tensors(by_name.keys(), bert.expected_tensors(config), str(path))
    weights = DequantizedWeights(by_name)
    progress(
        f"dequantizing and building the BERT graph: {config.num_layers} blocks, "
        f"hidden {config.hidden_size}"
    )
    return ConvertedModel.of_text(
        config,
        graph=bert.build_bert_graph(config, weights),
        tokenizer=tokenizer,
        family="bert",
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id") or 0),
        token_embeddings=weights(bert.WORD_EMBEDDINGS),
    )


# llama.cpp's nomic-bert names -> the remote code's names nomic_bert.py reads. Its converter
# renames only (fc11 is ffn_up, fc12 the gate), and accepts no biases in Wqkv or the MLP.
_NOMIC_GLOBAL_NAMES = {
    "token_embd.weight": "embeddings.word_embeddings.weight",
    "token_types.weight": "embeddings.token_type_embeddings.weight",
    "token_embd_norm.weight": "emb_ln.weight",
    "token_embd_norm.bias": "emb_ln.bias",
}
_NOMIC_BLOCK_NAMES = {
    "attn_qkv.weight": "attn.Wqkv.weight",
    "attn_output.weight": "attn.out_proj.weight",
    "ffn_up.weight": "mlp.fc11.weight",
    "ffn_gate.weight": "mlp.fc12.weight",
    "ffn_down.weight": "mlp.fc2.weight",
    "attn_output_norm.weight": "norm1.weight",
    "attn_output_norm.bias": "norm1.bias",
    "layer_output_norm.weight": "norm2.weight",
    "layer_output_norm.bias": "norm2.bias",
}


def nomic_bert_config_from_metadata(
    meta: dict[str, Any], token_types: int
) -> nomic_bert.NomicBertConfig:
    """llama.cpp converts only nomic-embed-text's own layout (it asserts SwiGLU, no biases,
    post-norm, NeoX rotary over the whole head, no rotary scaling), so that is what a
    `nomic-bert` GGUF holds; its context is the trained one it writes (2048 for v1 / v1.5)."""
    arch = "nomic-bert"
    refuse_causal(meta, arch)
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(
            f"GGUF {arch}.rope.scaling.type {scaling!r} is not supported; only plain RoPE is"
        )
    hidden = int(metadata_key(meta, arch, "embedding_length"))
    heads = int(metadata_key(meta, arch, "attention.head_count"))
    if hidden % heads:
        raise ValueError(
            f"GGUF {arch}.embedding_length {hidden} is not a multiple of {heads} heads"
        )
    return nomic_bert.NomicBertConfig(
        num_layers=int(metadata_key(meta, arch, "block_count")),
        hidden_size=hidden,
        num_heads=heads,
        head_dim=hidden // heads,
        rotary_dim=hidden // heads,
        rotary_base=float(metadata_key(meta, arch, "rope.freq_base", 10_000.0)),
        rotary_interleaved=False,
        max_positions=int(metadata_key(meta, arch, "context_length")),
        vocab_size=vocabulary_size(meta, arch),
        type_vocab_size=token_types,
        layer_norm_eps=float(metadata_key(meta, arch, "attention.layer_norm_epsilon", 1e-12)),
        activation="swiglu",
        qkv_bias=False,
        fc1_bias=False,
        fc2_bias=False,
    )


def convert_nomic_bert_gguf(
    path: Path, reader: GGUFReader, meta: dict[str, Any], progress: Progress
) -> ConvertedModel:
    tokenizer = wordpiece_tokenizer_from_gguf(meta)
    by_name = encoder_tensors(
        reader.tensors, _NOMIC_GLOBAL_NAMES, _NOMIC_BLOCK_NAMES, "encoder.layers", str(path)
    )
    types = by_name.get("embeddings.token_type_embeddings.weight")
    config = nomic_bert_config_from_metadata(meta, 0 if types is None else int(types.shape[-1]))
    require_tensors(by_name.keys(), nomic_bert.expected_tensors(config), str(path))
    weights = DequantizedWeights(by_name)
    progress(
        f"dequantizing and building the NomicBERT graph: {config.num_layers} blocks, "
        f"hidden {config.hidden_size}"
    )
    return ConvertedModel.of_text(
        config,
        graph=nomic_bert.build_nomic_bert_graph(config, weights),
        tokenizer=tokenizer,
        family="nomic_bert",
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id") or 0),
        token_embeddings=weights("embeddings.word_embeddings.weight"),
    )


# --- Gemma 3 ------------------------------------------------------------------------------------

_GEMMA_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
}
_GEMMA_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Not part of any hidden state: an untied LM head, and EmbeddingGemma's sentence-transformers
# Dense layers (written with --sentence-transformers-dense-modules), which act on the pooled
# vector after every hidden state.
_GEMMA_NOT_HIDDEN = ("output.weight", "dense_2.weight", "dense_3.weight")
# What llama.cpp fixes for Gemma 3 rather than reading from the file (llama-model.cpp): every
# sixth layer global, the sliding layers' RoPE base, and Gemma3 27B's query scale.
_GEMMA_PATTERN = 6
_GEMMA_SLIDING_THETA = 10_000.0
_GEMMA3_27B_LAYERS = 62
_EMBED_DTYPES = {"BF16": "bfloat16", "F16": "float16"}


@dataclass
class GemmaNormWeights:
    """llama.cpp stores Gemma's RMSNorm weights as 1 + weight (convert_hf_to_gguf.py
    Gemma3Model.norm_shift); gemma.py adds the 1 itself, so it is taken off here. In float32
    (1 + w) - 1 + 1 gives back the stored 1 + w exactly, as transformers computes it."""

    tensors: DequantizedWeights

    def __call__(self, name: str) -> np.ndarray:
        values = self.tensors(name)
        if name.endswith("norm.weight"):
            return (values - np.float32(1.0)).astype(np.float32)
        return values


def gemma_layer_types(meta: dict[str, Any], arch: str, num_layers: int) -> tuple[str, ...]:
    """llama.cpp's fixed pattern (every sixth layer global) unless the file carries gguf-py's
    attention.sliding_window_pattern: a period, or one flag per layer (true: sliding)."""
    given = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(given, list):
        if len(given) != num_layers:
            raise ValueError(
                f"GGUF {arch}.attention.sliding_window_pattern has {len(given)} entries "
                f"for {num_layers} layers"
            )
        return tuple(gemma.SLIDING if flag else gemma.FULL for flag in given)
    pattern = int(given or _GEMMA_PATTERN)
    return tuple(gemma.SLIDING if (i + 1) % pattern else gemma.FULL for i in range(num_layers))


def gemma_rope(meta: dict[str, Any], arch: str) -> dict[str, gemma.RopeConfig]:
    """rope.freq_base is the global layers' base; linear scaling applies to them only, as in
    transformers and llama.cpp."""
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise ValueError(
            f"GGUF {arch}.rope.scaling.type {scaling!r} is not supported; supported: none, linear"
        )
    factor = float(meta.get(f"{arch}.rope.scaling.factor") or 1.0) if scaling == "linear" else 1.0
    return {
        gemma.FULL: gemma.RopeConfig(
            theta=float(metadata_key(meta, arch, "rope.freq_base", 1_000_000.0)), factor=factor
        ),
        gemma.SLIDING: gemma.RopeConfig(
            theta=float(meta.get(f"{arch}.rope.freq_base_swa") or _GEMMA_SLIDING_THETA)
        ),
    }


def gemma_query_scalar(
    meta: dict[str, Any], arch: str, layers: int, hidden: int, heads: int
) -> float:
    """query_pre_attn_scalar, which llama.cpp does not store: it scales scores by
    attention.scale where a file has it, else by 1 / sqrt(head_dim), or 1 / sqrt(hidden / heads)
    for Gemma3 27B, which is what every released Gemma 3 configures."""
    scale = meta.get(f"{arch}.attention.scale")
    if scale:
        return float(scale) ** -2
    if arch == "gemma3" and layers == _GEMMA3_27B_LAYERS:
        return hidden / heads
    return float(metadata_key(meta, arch, "attention.key_length"))


def gemma_config_from_metadata(
    meta: dict[str, Any], arch: str, embed_dtype: str
) -> gemma.GemmaConfig:
    bidirectional = arch == "gemma-embedding"
    if meta.get(f"{arch}.attn_logit_softcapping"):
        raise ValueError(f"GGUF {arch}.attn_logit_softcapping is not supported; only none")
    layers = int(metadata_key(meta, arch, "block_count"))
    hidden = int(metadata_key(meta, arch, "embedding_length"))
    heads = int(metadata_key(meta, arch, "attention.head_count"))
    layer_types = gemma_layer_types(meta, arch, layers)
    window = int(meta.get(f"{arch}.attention.sliding_window") or 0)
    if not window and gemma.SLIDING in layer_types:
        raise ValueError(f"GGUF metadata lacks {arch}.attention.sliding_window")
    # EmbeddingGemma's file holds config.json's window; a token sees distance <= window / 2 on
    # either side (llama.cpp's symmetric window, transformers' halved one).
    bound = window // 2 + 1 if bidirectional else window
    return gemma.GemmaConfig(
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(metadata_key(meta, arch, "attention.head_count_kv", heads)),
        head_dim=int(metadata_key(meta, arch, "attention.key_length")),
        intermediate_size=int(metadata_key(meta, arch, "feed_forward_length")),
        rms_norm_eps=float(metadata_key(meta, arch, "attention.layer_norm_rms_epsilon", 1e-6)),
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=gemma_query_scalar(meta, arch, layers, hidden, heads),
        layer_types=layer_types,
        window_bound=bound,
        rope=gemma_rope(meta, arch),
        bidirectional=bidirectional,
        attention_bias=False,
        embed_scale=gemma.embed_scale(hidden, embed_dtype),
        max_positions=int(metadata_key(meta, arch, "context_length")),
        vocab_size=vocabulary_size(meta, arch),
    )


def gemma_embed_dtype(tensor: Any) -> str:
    """llama.cpp does not store the embedding scale: it multiplies by sqrt(hidden) at run time.
    transformers rounds that to the dtype the weights run in, so the scale follows the stored
    embedding type: bfloat16 / float16 tables round it, float32 and quantized ones do not."""
    return _EMBED_DTYPES.get(tensor.tensor_type.name, "float32")


def convert_gemma_gguf(
    path: Path, reader: GGUFReader, meta: dict[str, Any], progress: Progress
) -> ConvertedModel:
    arch = str(meta["general.architecture"])
    tokenizer = sentencepiece_tokenizer_from_gguf(meta)
    kept = [t for t in reader.tensors if str(t.name) not in _GEMMA_NOT_HIDDEN]
    by_name = encoder_tensors(kept, _GEMMA_GLOBAL_NAMES, _GEMMA_BLOCK_NAMES, "layers", str(path))
    require_tensors(by_name.keys(), ["embed_tokens.weight"], str(path))
    config = gemma_config_from_metadata(
        meta, arch, gemma_embed_dtype(by_name["embed_tokens.weight"])
    )
    require_tensors(by_name.keys(), gemma.expected_tensors(config), str(path))
    weights = GemmaNormWeights(DequantizedWeights(by_name))
    progress(
        f"dequantizing and building the Gemma 3 graph: {config.num_layers} blocks "
        f"({config.layer_types.count(gemma.SLIDING)} sliding), hidden {config.hidden_size}"
        + (", bidirectional" if config.bidirectional else "")
    )
    return ConvertedModel(
        graph=gemma.build_gemma_graph(config, weights),
        tokenizer=tokenizer,
        family="gemma3",
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        max_context_size=config.max_positions,
        vocab_size=config.vocab_size,
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id") or 0),
        token_embeddings=weights("embed_tokens.weight"),
        causal=not config.bidirectional,
    )


# --- ModernBERT ---------------------------------------------------------------------------------

# llama.cpp's modern-bert: renamed only (Wqkv and Wi stay fused), no bias anywhere (its loader
# reads none, as released ModernBERT has none), layer 0 without attn_norm.
_MODERNBERT_GLOBAL_NAMES = {
    "token_embd.weight": "embeddings.tok_embeddings.weight",
    "token_embd_norm.weight": "embeddings.norm.weight",
    "output_norm.weight": "final_norm.weight",
}
_MODERNBERT_BLOCK_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn_qkv.weight": "attn.Wqkv.weight",
    "attn_output.weight": "attn.Wo.weight",
    "ffn_norm.weight": "mlp_norm.weight",
    "ffn_up.weight": "mlp.Wi.weight",
    "ffn_down.weight": "mlp.Wo.weight",
}
# llama.cpp's optional hidden_act (GeGLU by default; SwiGLU for some derivatives) -> the
# activation of Wi's input half in transformers' names.
_MODERNBERT_ACTIVATIONS = {"gelu": "gelu", "geglu": "gelu", "silu": "silu", "swiglu": "silu"}
_MODERNBERT_PATTERN = 3  # llama.cpp's default: layer i global when i % 3 == 0


def modernbert_layer_types(meta: dict[str, Any], layers: int) -> tuple[str, ...]:
    """No sliding_window: every layer global. Else attention.sliding_window_pattern as llama.cpp
    reads it: a period (dense first) or one flag per layer (true: sliding)."""
    if not meta.get("modern-bert.attention.sliding_window"):
        return (modernbert.GLOBAL,) * layers
    given = meta.get("modern-bert.attention.sliding_window_pattern")
    if isinstance(given, list):
        if len(given) != layers:
            raise ValueError(
                f"GGUF modern-bert.attention.sliding_window_pattern has {len(given)} entries "
                f"for {layers} layers"
            )
        return tuple(modernbert.LOCAL if flag else modernbert.GLOBAL for flag in given)
    every = int(given or _MODERNBERT_PATTERN)
    return tuple(modernbert.LOCAL if i % every else modernbert.GLOBAL for i in range(layers))


def modernbert_config_from_metadata(meta: dict[str, Any]) -> modernbert.ModernBertConfig:
    arch = "modern-bert"
    refuse_causal(meta, arch)
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(
            f"GGUF {arch}.rope.scaling.type {scaling!r} is not supported; only plain RoPE is"
        )
    act = str(meta.get(f"{arch}.hidden_act") or "gelu")
    if act not in _MODERNBERT_ACTIVATIONS:
        raise ValueError(
            f"GGUF {arch}.hidden_act {act!r} is not supported; "
            f"supported: {', '.join(_MODERNBERT_ACTIVATIONS)}"
        )
    layers = int(metadata_key(meta, arch, "block_count"))
    theta = float(metadata_key(meta, arch, "rope.freq_base", 160_000.0))
    return modernbert.ModernBertConfig(
        num_layers=layers,
        hidden_size=int(metadata_key(meta, arch, "embedding_length")),
        num_heads=int(metadata_key(meta, arch, "attention.head_count")),
        intermediate_size=int(metadata_key(meta, arch, "feed_forward_length")),
        max_positions=int(metadata_key(meta, arch, "context_length")),
        vocab_size=vocabulary_size(meta, arch),
        norm_eps=float(metadata_key(meta, arch, "attention.layer_norm_epsilon", 1e-5)),
        hidden_act=_MODERNBERT_ACTIVATIONS[act],
        attention_bias=False,
        mlp_bias=False,
        norm_bias=False,
        local_attention=int(meta.get(f"{arch}.attention.sliding_window") or 0),
        layer_types=modernbert_layer_types(meta, layers),
        # llama.cpp: the sliding layers' base is rope.freq_base_swa where given, else the global.
        rope_theta={
            modernbert.GLOBAL: theta,
            modernbert.LOCAL: float(meta.get(f"{arch}.rope.freq_base_swa") or theta),
        },
    )


def convert_modernbert_gguf(
    path: Path, reader: GGUFReader, meta: dict[str, Any], progress: Progress
) -> ConvertedModel:
    config = modernbert_config_from_metadata(meta)
    tokenizer = modernbert_tokenizer_from_gguf(meta)
    by_name = encoder_tensors(
        reader.tensors, _MODERNBERT_GLOBAL_NAMES, _MODERNBERT_BLOCK_NAMES, "layers", str(path)
    )
    require_tensors(by_name.keys(), modernbert.expected_tensors(config), str(path))
    weights = DequantizedWeights(by_name)
    local = config.layer_types.count(modernbert.LOCAL)
    progress(
        f"dequantizing and building the ModernBERT graph: {config.num_layers} blocks "
        f"({local} local), hidden {config.hidden_size}"
    )
    return ConvertedModel.of_text(
        config,
        graph=modernbert.build_modernbert_graph(config, weights),
        tokenizer=tokenizer,
        family="modernbert",
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id") or 0),
        token_embeddings=weights("embeddings.tok_embeddings.weight"),
    )
