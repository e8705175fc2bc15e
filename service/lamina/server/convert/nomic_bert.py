"""NomicBERT encoders (NomicBertModel: nomic-embed-text-v1 / v1.5) to an ONNX graph.

Post-norm blocks with rotary positions on a fraction of each head (GPT-NeoX halves or GPT-J
interleaved pairs), a fused Wqkv projection, a gated MLP (SwiGLU by default) and optional
biases. Follows nomic-ai's published remote code (contrastors,
src/contrastors/models/huggingface/modeling_hf_nomic_bert.py), whose config.json speaks GPT-2's
names (n_embd, n_head, ...); a config written by transformers' own NomicBertConfig
(hidden_size, rope_parameters, ...) is read too. Both save the same tensor layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lamina.server.convert import bert
from lamina.server.convert.attention import KeyControls, Rotary, multi_head_attention
from lamina.server.convert.checkpoint import SafetensorsWeights, pad_token_id
from lamina.server.convert.converted import ConvertedModel, Progress
from lamina.server.convert.graph import GraphBuilder
from lamina.server.convert.layered import layered_graph
from lamina.server.repository.tokenizer_file import load_plain_tokenizer

HF_ARCHITECTURES = ("NomicBertModel",)

# Gated MLPs: fc2(fc11(x) * act(fc12(x))); "gelu" is plain fc2(gelu(fc1(x))). The remote code
# computes the exact (erf) GELU for every gelu name, so only "gelu" itself is taken at its word.
_GATED = ("swiglu", "geglu", "glu")
_ACTIVATIONS = (*_GATED, "gelu")
# transformers' NomicBertConfig: hidden_act of its gated MLP -> the remote code's name for it.
_TRANSFORMERS_ACTIVATIONS = {"silu": "swiglu", "gelu": "geglu"}
# Options of the remote code (or of its later MoE version) that change the computation and are
# not converted here: each must be absent, false, null or 0, as in nomic-embed-text v1 / v1.5.
_UNSUPPORTED_OPTIONS = (
    "prenorm",
    "parallel_block",
    "use_rms_norm",
    "causal",
    "norm_mlp",
    "rotary_emb_scale_base",
    "moe_every_n_layers",
)


@dataclass(frozen=True)
class NomicBertConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    rotary_dim: int  # the leading dims of each head that rotate; the rest pass unchanged
    rotary_base: float
    rotary_interleaved: bool  # pairs (2i, 2i + 1) rather than (i, i + rotary_dim / 2)
    max_positions: int
    vocab_size: int
    type_vocab_size: int
    layer_norm_eps: float
    activation: str  # one of _ACTIVATIONS
    qkv_bias: bool  # on Wqkv and out_proj
    fc1_bias: bool  # on fc11 and fc12 (fc1)
    fc2_bias: bool

    def __post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation_function {self.activation!r} is not supported; "
                f"supported: {', '.join(_ACTIVATIONS)}"
            )
        if self.head_dim % 2 or self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(
                f"rotary dimension {self.rotary_dim} of head dimension {self.head_dim} is not "
                "supported: both must be even, 0 < rotary <= head"
            )

    @property
    def gated(self) -> bool:
        return self.activation in _GATED

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> NomicBertConfig:
        if "n_embd" in config:
            return _from_remote_code_config(config)
        return _from_transformers_config(config)


def _from_remote_code_config(config: Mapping[str, Any]) -> NomicBertConfig:
    """nomic-ai's NomicBertConfig (a GPT2Config); defaults as in the remote code."""
    for option in _UNSUPPORTED_OPTIONS:
        if config.get(option):
            raise ValueError(
                f"{option} {config[option]!r} is not supported; "
                "only false / null / 0, as in nomic-embed-text v1 and v1.5"
            )
    hidden = int(config["n_embd"])
    heads = int(config["n_head"])
    kv_heads = config.get("num_heads_kv")
    if kv_heads is not None and int(kv_heads) != heads:
        raise ValueError(f"num_heads_kv {kv_heads} is not supported; only n_head ({heads})")
    if hidden % heads:
        raise ValueError(f"n_embd {hidden} is not a multiple of n_head {heads}")
    head_dim = hidden // heads
    fraction = float(config.get("rotary_emb_fraction", 0.0))
    if fraction <= 0:
        raise ValueError(
            f"rotary_emb_fraction {fraction} (absolute position embeddings) is not supported; "
            "only rotary positions, 0 < fraction <= 1"
        )
    rotary_dim = head_dim * fraction
    if rotary_dim != int(rotary_dim):
        raise ValueError(
            f"rotary_emb_fraction {fraction} of head dimension {head_dim} is not a whole number"
        )
    positions = int(config.get("n_positions", 1024))
    if config.get("rotary_scaling_factor"):
        # Dynamic NTK: a plain rotary up to max_trained_positions, a base that grows with the
        # sequence beyond it (and stays grown in the remote code): the context stops there.
        positions = min(positions, int(config.get("max_trained_positions", 2048)))
    return NomicBertConfig(
        num_layers=int(config["n_layer"]),
        hidden_size=hidden,
        num_heads=heads,
        head_dim=head_dim,
        rotary_dim=int(rotary_dim),
        rotary_base=float(config.get("rotary_emb_base", 10_000.0)),
        rotary_interleaved=bool(config.get("rotary_emb_interleaved", False)),
        max_positions=positions,
        vocab_size=int(config["vocab_size"]),
        type_vocab_size=int(config.get("type_vocab_size", 2)),
        layer_norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        activation=str(config.get("activation_function", "gelu_new")),
        qkv_bias=bool(config.get("qkv_proj_bias", True)),
        fc1_bias=bool(config.get("mlp_fc1_bias", True)),
        fc2_bias=bool(config.get("mlp_fc2_bias", True)),
    )


def _from_transformers_config(config: Mapping[str, Any]) -> NomicBertConfig:
    """transformers' NomicBertConfig: full-width NeoX rotary, no biases, a gated MLP."""
    rope = dict(config.get("rope_parameters") or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"rope_parameters rope_type {rope_type!r} is not supported; only default")
    hidden_act = str(config.get("hidden_act", "silu"))
    if hidden_act not in _TRANSFORMERS_ACTIVATIONS:
        raise ValueError(
            f"hidden_act {hidden_act!r} is not supported; "
            f"supported: {', '.join(_TRANSFORMERS_ACTIVATIONS)}"
        )
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return NomicBertConfig(
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        num_heads=heads,
        head_dim=head_dim,
        rotary_dim=head_dim,
        rotary_base=float(rope.get("rope_theta", config.get("rope_theta", 1000.0))),
        rotary_interleaved=False,
        max_positions=int(config.get("max_position_embeddings", 2048)),
        vocab_size=int(config["vocab_size"]),
        type_vocab_size=int(config.get("type_vocab_size", 2)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        activation=_TRANSFORMERS_ACTIVATIONS[hidden_act],
        qkv_bias=False,
        fc1_bias=False,
        fc2_bias=False,
    )


def expected_tensors(config: NomicBertConfig) -> list[str]:
    names = ["embeddings.word_embeddings.weight", "emb_ln.weight", "emb_ln.bias"]
    if config.type_vocab_size > 0:
        names.append("embeddings.token_type_embeddings.weight")

    def linear(name: str, bias: bool) -> list[str]:
        return [f"{name}.weight", f"{name}.bias"] if bias else [f"{name}.weight"]

    for i in range(config.num_layers):
        p = f"encoder.layers.{i}"
        names += linear(f"{p}.attn.Wqkv", config.qkv_bias)
        names += linear(f"{p}.attn.out_proj", config.qkv_bias)
        ups = ("fc11", "fc12") if config.gated else ("fc1",)
        for up in ups:
            names += linear(f"{p}.mlp.{up}", config.fc1_bias)
        names += linear(f"{p}.mlp.fc2", config.fc2_bias)
        for norm in ("norm1", "norm2"):
            names += [f"{p}.{norm}.weight", f"{p}.{norm}.bias"]
    return names


def convert_nomic_bert_folder(
    folder: Path, config: Mapping[str, Any], progress: Progress
) -> ConvertedModel:
    """A Hugging Face folder (NomicBertModel, or NomicBertForPreTraining's "bert." encoder)."""
    parsed = NomicBertConfig.from_hf(config)
    weights = SafetensorsWeights.open(folder, prefixes=("bert.", "nomic_bert."))
    weights.require(expected_tensors(parsed), f"{folder} (NomicBERT)")
    progress(
        f"building the NomicBERT graph: {parsed.num_layers} blocks, hidden {parsed.hidden_size}"
    )
    return ConvertedModel.of_text(
        parsed,
        graph=build_nomic_bert_graph(parsed, weights),
        tokenizer=load_plain_tokenizer(folder / "tokenizer.json"),
        family="nomic_bert",
        pad_token_id=pad_token_id(config),
        token_embeddings=weights("embeddings.word_embeddings.weight"),
    )


def rotary_layout(config: NomicBertConfig) -> tuple[np.ndarray, np.ndarray]:
    """(order, frequencies): every rotary variant here as the NeoX rotation over the whole head.

    Attention scores are dot products over each head's dims, so permuting the dims of q and k
    alike changes nothing. `order` (new dim -> checkpoint dim) puts each rotating pair at
    (i, i + head_dim / 2) and the dims that do not rotate in the remaining slots, which get a
    frequency of 0 (cos 1, sin 0): Rotary.apply then computes the remote code's rotation.
    """
    rotary, half = config.rotary_dim, config.head_dim // 2
    # As the remote code: float32 exponents over the rotary dimension, not the head's.
    exponents = np.arange(0, rotary, 2, dtype=np.float32) / np.float32(rotary)
    inv_freq = (np.float32(1.0) / np.power(np.float32(config.rotary_base), exponents)).astype(
        np.float32
    )
    if config.rotary_interleaved:
        first, second = np.arange(0, rotary, 2), np.arange(1, rotary, 2)
    else:
        first, second = np.arange(rotary // 2), np.arange(rotary // 2, rotary)
    unrotated = np.arange(rotary, config.head_dim)
    spare = half - rotary // 2  # unrotated slots in each half
    order = np.concatenate([first, unrotated[:spare], second, unrotated[spare:]])
    frequencies = np.concatenate([inv_freq, np.zeros(spare, np.float32)])
    return order.astype(np.int64), frequencies


def _permute_heads(w: np.ndarray, order: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    """Rows (or bias entries) of a q or k projection with each head's dims in `order`."""
    split = w.reshape(heads, head_dim, *w.shape[1:])
    return np.ascontiguousarray(split[:, order].reshape(w.shape))


def build_nomic_bert_graph(
    config: NomicBertConfig, weights: Callable[[str], np.ndarray]
) -> onnx.ModelProto:
    """hidden_state_0 (emb_ln of word + token type 0) .. hidden_state_N (each block's output,
    post-norm, no final norm). `weights(name)` takes the remote code's bare tensor names."""
    order, frequencies = rotary_layout(config)
    width = config.num_heads * config.head_dim
    rotary: Rotary | None = None

    def prepare(g: GraphBuilder) -> None:
        nonlocal rotary
        rotary = Rotary.from_frequencies(g, frequencies, config.max_positions)

    def embed(g: GraphBuilder) -> str:
        x = bert.words_of_one_segment(g, weights, token_types=config.type_vocab_size > 0)
        eps = config.layer_norm_eps
        return g.layer_norm(x, weights("emb_ln.weight"), weights("emb_ln.bias"), eps, "emb_ln")

    def block(g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        p = f"encoder.layers.{index}"

        def w(name: str) -> np.ndarray:
            return weights(f"{p}.{name}")

        def b(name: str, present: bool) -> np.ndarray | None:
            return weights(f"{p}.{name}") if present else None

        # Wqkv rows are (three, heads, head_dim): q, k, v one after the other.
        qkv_w = w("attn.Wqkv.weight")
        qkv_b = b("attn.Wqkv.bias", config.qkv_bias)
        parts = []
        for part in range(3):
            rows = slice(part * width, (part + 1) * width)
            weight, bias = qkv_w[rows], None if qkv_b is None else qkv_b[rows]
            if part < 2:
                weight = _permute_heads(weight, order, config.num_heads, config.head_dim)
                if bias is not None:
                    bias = _permute_heads(bias, order, config.num_heads, config.head_dim)
            parts.append(g.linear(hidden, weight, bias, "qkv"[part]))
        context = multi_head_attention(
            g,
            parts[0],
            parts[1],
            parts[2],
            controls,
            num_heads=config.num_heads,
            num_kv_heads=config.num_heads,
            head_dim=config.head_dim,
            rotary=rotary,
        )
        attn = g.linear(
            context, w("attn.out_proj.weight"), b("attn.out_proj.bias", config.qkv_bias), "o"
        )
        eps = config.layer_norm_eps
        hidden = g.layer_norm(
            g.op("Add", [attn, hidden]), w("norm1.weight"), w("norm1.bias"), eps, "norm1"
        )
        mlp = _mlp(g, hidden, config, w, b)
        return g.layer_norm(
            g.op("Add", [mlp, hidden]), w("norm2.weight"), w("norm2.bias"), eps, "norm2"
        )

    return layered_graph(
        "nomic_bert",
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        causal=False,
        embed=embed,
        block=block,
        prepare=prepare,
    )


def _mlp(
    g: GraphBuilder,
    x: str,
    config: NomicBertConfig,
    w: Callable[[str], np.ndarray],
    b: Callable[[str, bool], np.ndarray | None],
) -> str:
    if not config.gated:
        up = g.linear(x, w("mlp.fc1.weight"), b("mlp.fc1.bias", config.fc1_bias), "fc1")
        inner = g.gelu(up)
    else:
        up = g.linear(x, w("mlp.fc11.weight"), b("mlp.fc11.bias", config.fc1_bias), "fc11")
        gate = g.linear(x, w("mlp.fc12.weight"), b("mlp.fc12.bias", config.fc1_bias), "fc12")
        if config.activation == "swiglu":
            activated = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        elif config.activation == "geglu":
            activated = g.gelu(gate)
        else:  # glu: F.glu(cat([fc11, fc12])) = fc11 * sigmoid(fc12)
            activated = g.op("Sigmoid", [gate])
        inner = g.op("Mul", [up, activated])
    return g.linear(inner, w("mlp.fc2.weight"), b("mlp.fc2.bias", config.fc2_bias), "fc2")
