"""The GGUF route for the encoders llama.cpp has (issue 17): `bert`, `nomic-bert`,
`modern-bert`, `gemma3` and `gemma-embedding`, each written from its family fixture as
llama.cpp's convert_hf_to_gguf.py writes it (same keys, gguf-py's tensor names, the same weight
transformations and vocabulary spelling), against the same transformers reference as the
Hugging Face folder (tests/families/fixtures/<name>); and a Q8_0 variant of each on widened
random weights, against the folder holding the same dequantized weights."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lamina.server.convert.gguf_checkpoint import (
    gemma_config_from_metadata,
    gemma_embed_dtype,
    gemma_query_scalar,
    gemma_rope,
    modernbert_layer_types,
    read_metadata,
)
from lamina.server.convert.gguf_tokenizer import (
    sentencepiece_tokenizer_from_gguf,
    vocabulary_is_lowercase,
    wordpiece_piece,
)
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.domain import TextItem
from lamina.server.prompt import EncodedPrompt
from tests.families.checks import (
    assert_matches_reference,
    assert_tokenizes_as_transformers,
    convert,
    run,
)
from tests.parity.bounds import assert_layer_matches

FIXTURES = Path(__file__).parents[1] / "families" / "fixtures"
BERT = FIXTURES / "bert"
NOMIC = FIXTURES / "nomic-bert"
GEMMA3 = FIXTURES / "gemma3"
EMBEDDING_GEMMA = FIXTURES / "embeddinggemma"
MODERNBERT = FIXTURES / "modernbert"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6  # gguf.TokenType


# --- writing a GGUF as llama.cpp's converter does -----------------------------------------------


def bert_vocab(checkpoint: Path) -> tuple[list[str], list[int]]:
    """convert_hf_to_gguf.py's get_vocab_base + BertModel.set_vocab: every id's token (special
    added tokens CONTROL, other added tokens USER_DEFINED), in llama.cpp's "phantom space"
    spelling: "##x" -> "x", any other non-control "x" -> "▁x"."""
    data = json.loads((checkpoint / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    added = {t["content"]: t for t in data["added_tokens"]}
    vocab |= {content: token["id"] for content, token in added.items()}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    assert len(tokens) == max(vocab.values()) + 1, "ids have gaps"
    kinds = [
        (CONTROL if added[t]["special"] else USER_DEFINED) if t in added else NORMAL for t in tokens
    ]

    def phantom(token: str, kind: int) -> str:
        if kind == CONTROL:
            return token
        return token[2:] if token.startswith("##") else "\u2581" + token

    return [phantom(t, k) for t, k in zip(tokens, kinds, strict=True)], kinds


def write_bert_gguf(
    path: Path,
    checkpoint: Path,
    *,
    quantize: bool = False,
    extra_tensors: dict[str, np.ndarray] | None = None,
    tokenizer_model: str = "bert",
    causal: bool = False,
) -> Path:
    """BertModel as llama.cpp writes it: arch `bert`, TextModel's hparams keys, tensors renamed
    by gguf-py's tensor map (no permutation or transposition for BERT), the pooler and MLM head
    left out, the WordPiece vocabulary in phantom-space spelling and gguf-py's SpecialVocab.
    `quantize`: 2-D weights whose rows are a multiple of 32 wide as Q8_0, the rest F32, as
    llama.cpp's Q8_0 output type does."""
    config = json.loads((checkpoint / "config.json").read_text())

    def hparams(writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(config["num_attention_heads"])
        writer.add_layer_norm_eps(config["layer_norm_eps"])
        writer.add_block_count(config["num_hidden_layers"])

    encoder = Encoder(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"], "bert.")
    return write_encoder_gguf(
        path,
        checkpoint,
        encoder,
        hparams,
        Options(quantize, extra_tensors or {}, tokenizer_model, causal),
    )


def write_nomic_bert_gguf(path: Path, checkpoint: Path, options: Options | None = None) -> Path:
    """NomicBertModel as llama.cpp writes it (arch `nomic-bert`): GPT-2 style hparams by
    find_hparam (n_positions, n_embd, n_inner, n_head, layer_norm_epsilon, rotary_emb_base),
    Wqkv kept fused, fc11 as ffn_up and fc12 as ffn_gate, the BERT vocabulary. Its converter
    takes n_positions only as released (8192 trained to 2048 -> 2048); the fixture's 160 is
    written as it is."""
    config = json.loads((checkpoint / "config.json").read_text())

    def hparams(writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(config["n_positions"])
        writer.add_embedding_length(config["n_embd"])
        writer.add_feed_forward_length(config["n_inner"])
        writer.add_head_count(config["n_head"])
        writer.add_rope_freq_base(config["rotary_emb_base"])
        writer.add_layer_norm_eps(config["layer_norm_epsilon"])
        writer.add_block_count(config["n_layer"])

    encoder = Encoder(gguf.MODEL_ARCH.NOMIC_BERT, config["n_layer"], "bert.")
    return write_encoder_gguf(path, checkpoint, encoder, hparams, options or Options())


@dataclass(frozen=True)
class Encoder:
    arch: gguf.MODEL_ARCH
    layers: int
    prefix: str  # a model-class prefix llama.cpp strips


@dataclass(frozen=True)
class Options:
    quantize: bool = False
    extra_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    tokenizer_model: str = "bert"
    causal: bool = False


def write_encoder_gguf(
    path: Path,
    checkpoint: Path,
    encoder: Encoder,
    hparams: Callable[[gguf.GGUFWriter], None],
    options: Options,
) -> Path:
    weights = {
        k.removeprefix(encoder.prefix): v
        for k, v in load_file(checkpoint / "model.safetensors").items()
    }
    config = json.loads((checkpoint / "config.json").read_text())
    names = gguf.get_tensor_name_map(encoder.arch, encoder.layers)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[encoder.arch])
    hparams(writer)
    writer.add_causal_attention(options.causal)
    tokens, kinds = bert_vocab(checkpoint)
    writer.add_token_type_count(config.get("type_vocab_size", 1))
    writer.add_tokenizer_model(options.tokenizer_model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    gguf.SpecialVocab(checkpoint, n_vocab=len(tokens)).add_to_gguf(writer)
    for name, tensor in weights.items():
        if name.startswith(("pooler.", "cls.")) or name == "embeddings.position_ids":
            continue
        cpp = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert cpp is not None, name
        add_tensor(writer, cpp, np.ascontiguousarray(tensor, dtype=np.float32), options.quantize)
    for name, tensor in options.extra_tensors.items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_tensor(writer: gguf.GGUFWriter, name: str, tensor: np.ndarray, quantize: bool) -> None:
    q8 = gguf.GGMLQuantizationType.Q8_0
    if quantize and tensor.ndim == 2 and tensor.shape[1] % 32 == 0:
        writer.add_tensor(name, gguf.quants.quantize(tensor, q8), raw_dtype=q8)
    else:
        writer.add_tensor(name, tensor)


# --- bert ---------------------------------------------------------------------------------------


def test_bert_gguf_matches_the_transformers_reference(tmp_path: Path) -> None:
    path = write_bert_gguf(tmp_path / "bert.gguf", BERT / "checkpoint")
    model = convert(path, tmp_path)
    assert model.manifest.architecture == "bert"
    assert_tokenizes_as_transformers(model, BERT)
    assert_matches_reference(model, BERT, "bert GGUF")


def test_bert_gguf_pieces_and_template(tmp_path: Path) -> None:
    model = convert(write_bert_gguf(tmp_path / "bert.gguf", BERT / "checkpoint"), tmp_path)
    encoded = model.encoder.encode((TextItem("Hello [SEP] world"),))
    reference = json.loads((BERT / "checkpoint" / "tokenizer.json").read_text())
    vocab = reference["model"]["vocab"]
    pieces = model.encoder.token_strings(encoded)
    assert all(piece in vocab for piece in pieces)
    assert "[SEP]" in pieces[1:-1]  # a control token inside the text stays one token
    assert model.manifest.pad_token_id == vocab["[PAD]"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("gpt2", r"tokenizer model 'gpt2' is not supported for this architecture; .*'bert'"),
        ("t5", r"tokenizer model 't5' is not supported for this architecture; .*'bert'"),
    ],
)
def test_bert_gguf_other_vocabularies_are_refused(tmp_path: Path, model: str, message: str) -> None:
    path = write_bert_gguf(tmp_path / "bert.gguf", BERT / "checkpoint", tokenizer_model=model)
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(path, tmp_path / "repo", "b", progress=lambda _: None)


def test_bert_gguf_causal_attention_is_refused(tmp_path: Path) -> None:
    path = write_bert_gguf(tmp_path / "bert.gguf", BERT / "checkpoint", causal=True)
    with pytest.raises(ValueError, match=r"bert\.attention\.causal true is not supported"):
        convert_checkpoint(path, tmp_path / "repo", "b", progress=lambda _: None)


def test_bert_gguf_tensors_the_graph_would_drop_are_refused(tmp_path: Path) -> None:
    path = write_bert_gguf(
        tmp_path / "bert.gguf",
        BERT / "checkpoint",
        extra_tensors={"blk.0.attn_qkv.weight": np.ones((108, 36), np.float32)},
    )
    with pytest.raises(ValueError, match=r"graph does not read: blk\.0\.attn_qkv\.weight"):
        convert_checkpoint(path, tmp_path / "repo", "b", progress=lambda _: None)


def test_a_classifier_head_is_left_out(tmp_path: Path) -> None:
    path = write_bert_gguf(
        tmp_path / "bert.gguf",
        BERT / "checkpoint",
        extra_tensors={"cls.output.weight": np.ones((2, 36), np.float32)},
    )
    assert convert(path, tmp_path).manifest.architecture == "bert"


def test_unsupported_architectures_list_the_encoders(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "t5encoder")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ValueError,
        match=r"'t5encoder' is not supported; supported: llama, qwen2, qwen3, bert, "
        r"nomic-bert, modern-bert, gemma3, gemma-embedding",
    ):
        convert_checkpoint(tmp_path / "other.gguf", tmp_path / "repo", "x", progress=lambda _: None)


def test_phantom_space_spelling_is_undone() -> None:
    assert wordpiece_piece("\u2581hello", NORMAL) == "hello"
    assert wordpiece_piece("ing", NORMAL) == "##ing"
    assert wordpiece_piece("", NORMAL) == "##"  # the piece "##" itself
    assert wordpiece_piece("[CLS]", CONTROL) == "[CLS]"


def test_cased_vocabularies_are_not_lowercased() -> None:
    assert vocabulary_is_lowercase(["a", "##b", "[CLS]"], [NORMAL, NORMAL, CONTROL])
    assert not vocabulary_is_lowercase(["The", "the", "##s"], [NORMAL] * 3)


# --- nomic-bert ---------------------------------------------------------------------------------


def test_nomic_bert_gguf_matches_the_reference(tmp_path: Path) -> None:
    model = convert(write_nomic_bert_gguf(tmp_path / "nomic.gguf", NOMIC / "checkpoint"), tmp_path)
    assert model.manifest.architecture == "nomic_bert"
    assert_tokenizes_as_transformers(model, NOMIC)
    assert_matches_reference(model, NOMIC, "nomic-bert GGUF")


@pytest.mark.parametrize(
    ("extra", "unread"),
    [
        ({"blk.0.attn_qkv.bias": np.ones(108, np.float32)}, r"blk\.0\.attn_qkv\.bias"),
        ({"position_embd.weight": np.ones((160, 36), np.float32)}, r"position_embd\.weight"),
    ],
)
def test_nomic_bert_gguf_tensors_the_graph_would_drop_are_refused(
    tmp_path: Path, extra: dict[str, np.ndarray], unread: str
) -> None:
    path = write_nomic_bert_gguf(
        tmp_path / "n.gguf", NOMIC / "checkpoint", Options(extra_tensors=extra)
    )
    with pytest.raises(ValueError, match=f"graph does not read: {unread}"):
        convert_checkpoint(path, tmp_path / "repo", "n", progress=lambda _: None)


def test_nomic_bert_gguf_xlm_roberta_vocabulary_is_refused(tmp_path: Path) -> None:
    # nomic-embed-text-v2's Unigram vocabulary is written as llama.cpp's `t5` model.
    options = Options(tokenizer_model="t5")
    path = write_nomic_bert_gguf(tmp_path / "n.gguf", NOMIC / "checkpoint", options)
    with pytest.raises(ValueError, match=r"tokenizer model 't5' is not supported"):
        convert_checkpoint(path, tmp_path / "repo", "n", progress=lambda _: None)


# --- gemma3 / gemma-embedding ------------------------------------------------------------------


def sentencepiece_vocab(checkpoint: Path) -> tuple[list[str], list[float], list[int]]:
    """The fixture's vocabulary as _set_vocab_sentencepiece writes Gemma's tokenizer.model: its
    pieces by id, SentencePiece BPE scores (a joined piece scores by the rank of its merge, as
    the tokenizer.json converted from that model orders its merges), <unk> UNKNOWN, <0xXX>
    BYTE, other special tokens CONTROL. The fixture has no tokenizer.model, so the scores are
    derived from tokenizer.json's merges."""
    data = json.loads((checkpoint / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    specials = {t["content"] for t in data["added_tokens"] if t["special"]}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    rank: dict[str, int] = {}
    for index, (left, right) in enumerate(data["model"]["merges"]):
        rank.setdefault(left + right, index)
    scores = [
        0.0 if t in specials else -float(rank.get(t, len(rank) + i)) for i, t in enumerate(tokens)
    ]

    def kind(token: str) -> int:
        if token == data["model"]["unk_token"]:
            return UNKNOWN
        if token in specials:
            return CONTROL
        if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            return BYTE
        return NORMAL

    return tokens, scores, [kind(t) for t in tokens]


def write_gemma_gguf(
    path: Path,
    checkpoint: Path,
    *,
    arch: gguf.MODEL_ARCH,
    fixture_keys: bool = True,
    quantize: bool = False,
) -> Path:
    """Gemma3ForCausalLM (`gemma3`) or Gemma3TextModel (`gemma-embedding`) as llama.cpp writes
    it: every *norm.weight + 1, tensors by gguf-py's map, rope.freq_base of the global layers
    with their linear scaling, config.json's sliding_window, the SentencePiece vocabulary with
    add_space_prefix false and SpecialVocab. No embedding scale (llama.cpp computes it).

    `fixture_keys`: the fixtures differ from every released Gemma 3 in what llama.cpp fixes
    rather than stores (query_pre_attn_scalar not head_dim; layer types not every sixth layer
    global), so their GGUF carries gguf-py's attention.scale and
    attention.sliding_window_pattern, which the reader takes where present."""
    config = json.loads((checkpoint / "config.json").read_text())
    weights = {
        "model." + k.removeprefix("model."): v
        for k, v in load_file(checkpoint / "model.safetensors").items()
    }
    layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(arch, layers)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_block_count(layers)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    full = config["rope_parameters"]["full_attention"]
    writer.add_rope_freq_base(full["rope_theta"])
    if full.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(full["factor"])
    writer.add_sliding_window(config["sliding_window"])
    if arch == gguf.MODEL_ARCH.GEMMA_EMBEDDING:
        writer.add_causal_attention(False)
    if fixture_keys:
        writer.add_float32(
            gguf.Keys.Attention.SCALE.format(arch=writer.arch),
            config["query_pre_attn_scalar"] ** -0.5,
        )
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in config["layer_types"]])
    tokens, scores, kinds = sentencepiece_vocab(checkpoint)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(kinds)
    gguf.SpecialVocab(checkpoint, load_merges=False, n_vocab=len(tokens)).add_to_gguf(writer)
    writer.add_add_space_prefix(False)
    for name, tensor in weights.items():
        if name == "model.lm_head.weight":
            continue
        cpp = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert cpp is not None, name
        stored = tensor + np.float32(1.0) if name.endswith("norm.weight") else tensor
        add_tensor(writer, cpp, np.ascontiguousarray(stored, dtype=np.float32), quantize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("fixture", "arch"),
    [(GEMMA3, gguf.MODEL_ARCH.GEMMA3), (EMBEDDING_GEMMA, gguf.MODEL_ARCH.GEMMA_EMBEDDING)],
    ids=["gemma3", "gemma-embedding"],
)
def test_gemma_gguf_matches_the_reference(
    tmp_path: Path, fixture: Path, arch: gguf.MODEL_ARCH
) -> None:
    path = write_gemma_gguf(tmp_path / "g.gguf", fixture / "checkpoint", arch=arch)
    model = convert(path, tmp_path)
    assert model.manifest.architecture == "gemma3"
    assert_tokenizes_as_transformers(model, fixture)
    assert_matches_reference(model, fixture, f"{arch.name} GGUF")


def test_gemma_gguf_without_fixture_keys_reads_as_llama_cpp(tmp_path: Path) -> None:
    """What llama.cpp fixes: every sixth layer global, sliding base 10000, scores scaled by
    1 / sqrt(head_dim); the symmetric window of EmbeddingGemma is half config.json's."""
    path = write_gemma_gguf(
        tmp_path / "g.gguf",
        EMBEDDING_GEMMA / "checkpoint",
        arch=gguf.MODEL_ARCH.GEMMA_EMBEDDING,
        fixture_keys=False,
    )
    meta = read_metadata(gguf.GGUFReader(str(path)))
    config = gemma_config_from_metadata(meta, "gemma-embedding", "float32")
    assert config.layer_types == ("sliding_attention",) * 3
    assert config.query_pre_attn_scalar == 16
    assert config.window_bound == 24 // 2 + 1
    assert config.bidirectional
    assert config.rope["sliding_attention"].theta == 10_000.0
    many = {**meta, "gemma-embedding.block_count": 12}
    layer_types = gemma_config_from_metadata(many, "gemma-embedding", "float32").layer_types
    assert [i for i, t in enumerate(layer_types) if t == "full_attention"] == [5, 11]


def test_gemma3_27b_scales_by_hidden_over_heads() -> None:
    meta = {"gemma3.attention.key_length": 128}
    assert gemma_query_scalar(meta, "gemma3", 62, 5376, 32) == 168
    assert gemma_query_scalar(meta, "gemma3", 34, 2560, 8) == 128


def test_gemma_embedding_scale_follows_the_stored_embedding_type() -> None:
    @dataclass
    class Stored:
        tensor_type: gguf.GGMLQuantizationType

    assert gemma_embed_dtype(Stored(gguf.GGMLQuantizationType.BF16)) == "bfloat16"
    assert gemma_embed_dtype(Stored(gguf.GGMLQuantizationType.F16)) == "float16"
    assert gemma_embed_dtype(Stored(gguf.GGMLQuantizationType.Q8_0)) == "float32"


def test_gemma_gguf_other_rope_scaling_is_refused() -> None:
    with pytest.raises(ValueError, match=r"rope\.scaling\.type 'yarn' is not supported"):
        gemma_rope({"gemma3.rope.scaling.type": "yarn"}, "gemma3")


def test_gemma_gguf_wordpiece_vocabulary_is_refused(tmp_path: Path) -> None:
    path = write_gemma_gguf(tmp_path / "g.gguf", GEMMA3 / "checkpoint", arch=gguf.MODEL_ARCH.GEMMA3)
    meta = read_metadata(gguf.GGUFReader(str(path)))
    with pytest.raises(ValueError, match=r"tokenizer model 'bert' is not supported .*'llama'"):
        sentencepiece_tokenizer_from_gguf({**meta, "tokenizer.ggml.model": "bert"})
    with pytest.raises(ValueError, match=r"remove_extra_whitespaces true is not supported"):
        sentencepiece_tokenizer_from_gguf({**meta, "tokenizer.ggml.remove_extra_whitespaces": True})


# --- modern-bert --------------------------------------------------------------------------------


def write_modernbert_gguf(path: Path, checkpoint: Path, options: Options | None = None) -> Path:
    """ModernBertModel as llama.cpp writes it (arch `modern-bert`): TextModel's hparams (norm_eps
    as layer_norm_eps, the global rope_theta as rope.freq_base, the local one as
    rope.freq_base_swa), local_attention as sliding_window, global_attn_every_n_layers as
    sliding_window_pattern, Wqkv and Wi fused as they are, the byte-level vocabulary by
    _set_vocab_gpt2 with pre `modern-bert` and add_bos / add_eos / add_sep true."""
    options = options or Options(tokenizer_model="gpt2")
    config = json.loads((checkpoint / "config.json").read_text())
    weights = {
        k.removeprefix("model."): v for k, v in load_file(checkpoint / "model.safetensors").items()
    }
    layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MODERN_BERT, layers)
    writer = gguf.GGUFWriter(str(path), "modern-bert")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["norm_eps"])
    writer.add_block_count(layers)
    writer.add_rope_freq_base(config["rope_parameters"]["full_attention"]["rope_theta"])
    writer.add_rope_freq_base_swa(config["rope_parameters"]["sliding_attention"]["rope_theta"])
    writer.add_causal_attention(options.causal)
    writer.add_sliding_window(config["local_attention"])
    writer.add_sliding_window_pattern(config["global_attn_every_n_layers"])
    writer.add_rope_scaling_type(gguf.RopeScalingType.NONE)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(True)
    add_gpt2_vocab(writer, checkpoint, options.tokenizer_model)
    for name, tensor in weights.items():
        cpp = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert cpp is not None, name
        add_tensor(writer, cpp, np.ascontiguousarray(tensor, dtype=np.float32), options.quantize)
    for name, tensor in options.extra_tensors.items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_gpt2_vocab(writer: gguf.GGUFWriter, checkpoint: Path, model: str) -> None:
    data = json.loads((checkpoint / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    added = {t["content"]: t for t in data["added_tokens"]}
    vocab |= {content: token["id"] for content, token in added.items()}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    assert len(tokens) == max(vocab.values()) + 1, "ids have gaps"
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre("modern-bert")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            (CONTROL if added[t]["special"] else USER_DEFINED) if t in added else NORMAL
            for t in tokens
        ]
    )
    gguf.SpecialVocab(checkpoint, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer)


def test_modernbert_gguf_matches_the_reference(tmp_path: Path) -> None:
    model = convert(write_modernbert_gguf(tmp_path / "m.gguf", MODERNBERT / "checkpoint"), tmp_path)
    assert model.manifest.architecture == "modernbert"
    assert_tokenizes_as_transformers(model, MODERNBERT)
    assert_matches_reference(model, MODERNBERT, "modern-bert GGUF")


def test_modernbert_gguf_biases_are_refused(tmp_path: Path) -> None:
    # llama.cpp reads no ModernBERT bias: a file with one is not a model it would run.
    bias = {"blk.1.attn_qkv.bias": np.ones(120, np.float32)}
    options = Options(extra_tensors=bias, tokenizer_model="gpt2")
    path = write_modernbert_gguf(tmp_path / "m.gguf", MODERNBERT / "checkpoint", options)
    with pytest.raises(ValueError, match=r"graph does not read: blk\.1\.attn_qkv\.bias"):
        convert_checkpoint(path, tmp_path / "repo", "m", progress=lambda _: None)


def test_modernbert_gguf_wordpiece_vocabulary_is_refused(tmp_path: Path) -> None:
    path = write_modernbert_gguf(
        tmp_path / "m.gguf", MODERNBERT / "checkpoint", Options(tokenizer_model="bert")
    )
    with pytest.raises(ValueError, match=r"tokenizer model 'bert' is not supported .*'gpt2'"):
        convert_checkpoint(path, tmp_path / "repo", "m", progress=lambda _: None)


def test_modernbert_layer_types_follow_llama_cpp() -> None:
    meta: dict[str, object] = {"modern-bert.attention.sliding_window": 128}
    assert modernbert_layer_types(meta, 7) == (
        "full_attention",
        *("sliding_attention",) * 2,
    ) * 2 + ("full_attention",)
    flags = {**meta, "modern-bert.attention.sliding_window_pattern": [False, True]}
    assert modernbert_layer_types(flags, 2) == ("full_attention", "sliding_attention")
    assert modernbert_layer_types({}, 2) == ("full_attention",) * 2


# --- Q8_0 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Widening:
    """A fixture's config and tokenizer with random weights wide enough for Q8_0 (the fixtures
    are 36 or 40 wide: no row of theirs is a multiple of 32)."""

    fixture: Path
    config: dict[str, int]
    dims: dict[int, int]  # old size -> new size, in every tensor shape
    write: Callable[[Path, Path], Path]  # (path, checkpoint) -> a GGUF with Q8_0 where it fits


WIDENINGS = {
    "bert": Widening(
        BERT,
        {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4},
        {36: 64, 50: 96},
        lambda path, checkpoint: write_bert_gguf(path, checkpoint, quantize=True),
    ),
    "nomic-bert": Widening(
        NOMIC,
        {"n_embd": 64, "n_inner": 96, "n_head": 4},
        {36: 64, 108: 192, 50: 96},
        lambda path, checkpoint: write_nomic_bert_gguf(path, checkpoint, Options(quantize=True)),
    ),
    "modern-bert": Widening(
        MODERNBERT,
        {"hidden_size": 64, "intermediate_size": 96},
        {40: 64, 120: 192, 104: 192, 52: 96},
        lambda path, checkpoint: write_modernbert_gguf(
            path, checkpoint, Options(quantize=True, tokenizer_model="gpt2")
        ),
    ),
    "gemma3": Widening(
        GEMMA3,
        {"hidden_size": 64},  # intermediate 48 stays: q_proj has 4 x 12 = 48 rows too
        {36: 64},
        lambda path, checkpoint: write_gemma_gguf(
            path, checkpoint, arch=gguf.MODEL_ARCH.GEMMA3, quantize=True
        ),
    ),
    "gemma-embedding": Widening(
        EMBEDDING_GEMMA,
        {"hidden_size": 64, "intermediate_size": 96},
        {36: 64, 52: 96},
        lambda path, checkpoint: write_gemma_gguf(
            path, checkpoint, arch=gguf.MODEL_ARCH.GEMMA_EMBEDDING, quantize=True
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(WIDENINGS))
def test_q8_0_gguf_matches_its_dequantized_folder(tmp_path: Path, name: str) -> None:
    """A Q8_0 GGUF against the Hugging Face folder holding the same dequantized weights."""
    widening = WIDENINGS[name]
    checkpoint = widened(tmp_path / "wide", widening)
    path = widening.write(tmp_path / "q8.gguf", checkpoint)
    q8 = gguf.GGMLQuantizationType.Q8_0
    quantized = [t.name for t in gguf.GGUFReader(str(path)).tensors if t.tensor_type == q8]
    assert "token_embd.weight" in quantized and any(".attn_" in n for n in quantized)
    stored = load_file(checkpoint / "model.safetensors")
    for tensor_name, tensor in stored.items():
        if tensor.ndim == 2 and tensor.shape[1] % 32 == 0:  # the writer's rule (add_tensor)
            stored[tensor_name] = gguf.quants.dequantize(gguf.quants.quantize(tensor, q8), q8)
    save_file(stored, str(checkpoint / "model.safetensors"))
    from_gguf = convert(path, tmp_path / "a")
    from_folder = convert(checkpoint, tmp_path / "b")
    ids = from_folder.encoder.encode((TextItem("Lamina serves every hidden state."),)).ids
    prompt = EncodedPrompt(ids, np.ones(len(ids), np.float32))
    layers = range(from_folder.manifest.num_layers + 1)
    ours, theirs = run(from_gguf, [prompt], layers), run(from_folder, [prompt], layers)
    for layer in layers:
        assert_layer_matches(ours[layer][0], theirs[layer][0], f"{name} Q8_0 layer {layer}")


def widened_shape(tensor: np.ndarray, dims: dict[int, int]) -> list[int]:
    shape: list[int] = []
    for size in tensor.shape:
        assert size is not None
        shape.append(dims[size] if size in dims else int(size))
    return shape


def widened(folder: Path, widening: Widening) -> Path:
    shutil.copytree(widening.fixture / "checkpoint", folder)
    config = json.loads((folder / "config.json").read_text()) | widening.config
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(17)
    tensors = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        shape = widened_shape(tensor, widening.dims)
        values = 0.1 * rng.standard_normal(shape)
        if "norm" in name.lower() and name.endswith(".weight"):
            values += 1.0
        tensors[name] = values.astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder
