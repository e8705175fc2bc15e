"""The RoBERTa / XLM-RoBERTa converter beyond the family fixtures (tests/families): what it
refuses, and its positions against BERT's numpy forward pass.

A RoBERTa checkpoint whose position table is a BERT table shifted down by pad_token_id + 1 rows
computes exactly what that BERT computes, so tests/server/test_convert_bert.py's numpy reference
checks every layer here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.convert.roberta import RobertaConfig
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.batch import Batch
from tests.server.test_convert_bert import (
    CONFIG,
    EPS,
    HIDDEN,
    IDS,
    LAYERS,
    POSITIONS,
    numpy_bert,
    random_bert_weights,
    tiny_tokenizer,
)
from tests.tiny_models import load_version

PAD = 1  # as in every released RoBERTa; [UNK] in the tiny tokenizer, absent from IDS
ROBERTA_CONFIG = {
    **CONFIG,
    "architectures": ["XLMRobertaModel"],
    "max_position_embeddings": POSITIONS + PAD + 1,
    "pad_token_id": PAD,
    "type_vocab_size": 2,
}
LM_HEAD = ("lm_head.dense.weight", "lm_head.layer_norm.weight", "lm_head.bias")


def roberta_weights(bert: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BERT's weights with PAD + 1 rows in front of the position table, which no token reads."""
    rng = np.random.default_rng(7)
    unused = (rng.standard_normal((PAD + 1, HIDDEN)) * 5).astype(np.float32)
    table = bert["embeddings.position_embeddings.weight"]
    return {**bert, "embeddings.position_embeddings.weight": np.concatenate([unused, table])}


def write_checkpoint(
    folder: Path, weights: dict[str, np.ndarray], config: dict[str, Any], prefix: str = ""
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({prefix + k: v for k, v in weights.items()}, str(folder / "model.safetensors"))
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def convert(root: Path, weights: dict[str, np.ndarray], **config: Any) -> LoadedModel:
    prefix = config.pop("prefix", "")
    folder = write_checkpoint(root / "checkpoint", weights, {**ROBERTA_CONFIG, **config}, prefix)
    return load_version(convert_checkpoint(folder, root / "repo", "tiny", progress=lambda _: None))


def run(model: LoadedModel, rows: list[list[int]], layers: list[int]) -> dict[int, np.ndarray]:
    prompts = [EncodedPrompt(np.asarray(r, np.int64), np.ones(len(r), np.float32)) for r in rows]
    return model.session.run(Batch.pad(prompts, [True] * len(rows), PAD), layers)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    return (x64 - mean) / np.sqrt(var + EPS) * weight + bias


@pytest.fixture(scope="module")
def bert() -> dict[str, np.ndarray]:
    return random_bert_weights()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, bert: dict[str, np.ndarray]) -> LoadedModel:
    return convert(tmp_path_factory.mktemp("roberta"), roberta_weights(bert))


def test_every_layer_is_bert_with_positions_past_the_padding_index(
    model: LoadedModel, bert: dict[str, np.ndarray]
) -> None:
    states = run(model, [IDS, IDS[:3]], list(range(LAYERS + 1)))
    for row, ids in enumerate([IDS, IDS[:3]]):
        for layer, expected in enumerate(numpy_bert(bert, ids)):
            np.testing.assert_allclose(
                states[layer][row, : len(ids)], expected, atol=2e-5, err_msg=f"layer {layer}"
            )


def test_the_context_ends_where_the_position_table_does(model: LoadedModel) -> None:
    assert model.manifest.max_context_size == POSITIONS
    assert model.manifest.pad_token_id == PAD
    assert model.manifest.architecture == "bert"


def test_a_pad_token_inside_a_prompt_is_placed_as_transformers_places_it(
    model: LoadedModel, bert: dict[str, np.ndarray]
) -> None:
    # create_position_ids_from_input_ids: the pad keeps position PAD, the tokens after it count
    # on from the ones before.
    ids = [2, 4, PAD, 9, 3]
    positions = [PAD + 1, PAD + 2, PAD, PAD + 3, PAD + 4]
    table = roberta_weights(bert)["embeddings.position_embeddings.weight"]
    summed = (
        bert["embeddings.word_embeddings.weight"][ids]
        + bert["embeddings.token_type_embeddings.weight"][0]
        + table[positions]
    )
    expected = layer_norm(
        summed, bert["embeddings.LayerNorm.weight"], bert["embeddings.LayerNorm.bias"]
    )
    np.testing.assert_allclose(run(model, [ids], [0])[0][0], expected, atol=2e-5)


def test_a_checkpoint_without_token_types_adds_none(
    tmp_path: Path, bert: dict[str, np.ndarray]
) -> None:
    weights = roberta_weights(bert)
    del weights["embeddings.token_type_embeddings.weight"]
    state = run(convert(tmp_path, weights), [IDS], [0])[0][0]
    summed = (
        bert["embeddings.word_embeddings.weight"][IDS]
        + weights["embeddings.position_embeddings.weight"][PAD + 1 : PAD + 1 + len(IDS)]
    )
    expected = layer_norm(
        summed, bert["embeddings.LayerNorm.weight"], bert["embeddings.LayerNorm.bias"]
    )
    np.testing.assert_allclose(state, expected, atol=2e-5)


@pytest.mark.parametrize("architecture", ["RobertaForMaskedLM", "XLMRobertaForMaskedLM"])
def test_masked_lm_checkpoints_convert_from_under_their_prefix(
    tmp_path: Path, bert: dict[str, np.ndarray], architecture: str
) -> None:
    rng = np.random.default_rng(3)
    head = {name: rng.standard_normal(4).astype(np.float32) for name in LM_HEAD}
    weights = {**{f"roberta.{k}": v for k, v in roberta_weights(bert).items()}, **head}
    model = convert(tmp_path, weights, architectures=[architecture])
    np.testing.assert_allclose(
        run(model, [IDS], [LAYERS])[LAYERS][0], numpy_bert(bert, IDS)[-1], atol=2e-5
    )


def test_missing_tensors_are_listed(tmp_path: Path, bert: dict[str, np.ndarray]) -> None:
    weights = roberta_weights(bert)
    del weights["encoder.layer.2.attention.self.key.bias"]
    with pytest.raises(ValueError, match=r"missing: encoder\.layer\.2\.attention\.self\.key\.bias"):
        convert(tmp_path, weights)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("is_decoder", True, r"is_decoder True is not supported; only the bidirectional"),
        ("add_cross_attention", True, r"add_cross_attention True is not supported"),
        (
            "position_embedding_type",
            "relative_key",
            r"position_embedding_type 'relative_key' is not supported; only 'absolute' is",
        ),
        ("hidden_act", "silu", r"hidden_act 'silu' is not supported; expected one of"),
        ("pad_token_id", None, r"pad_token_id None is not supported"),
        ("max_position_embeddings", 2, r"max_position_embeddings 2 leaves no position past"),
    ],
)
def test_unsupported_options_are_refused_by_name(option: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RobertaConfig.from_hf({**ROBERTA_CONFIG, option: value})


def test_an_unsupported_option_fails_the_conversion(
    tmp_path: Path, bert: dict[str, np.ndarray]
) -> None:
    with pytest.raises(ValueError, match="is_decoder True is not supported"):
        convert(tmp_path, roberta_weights(bert), is_decoder=True)


def test_positions_default_past_padding_index_1() -> None:
    config = {k: v for k, v in ROBERTA_CONFIG.items() if k != "pad_token_id"}
    assert RobertaConfig.from_hf(config).padding_idx == 1
