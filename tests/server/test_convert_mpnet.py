"""The MPNet converter beyond the family fixture (tests/families): its relative position buckets,
what it refuses, and its blocks against BERT's numpy forward pass.

An MPNet checkpoint holding a BERT's weights under MPNet's names (position table shifted down by
2 rows, token type 0 zero) and a bias of zero computes what that BERT computes, so
tests/server/test_convert_bert.py's numpy reference checks every layer's wiring here; the bias
itself meets transformers in the `mpnet` family fixture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from lamina.server.convert.mpnet import (
    MPNetConfig,
    build_mpnet_graph,
    relative_position_buckets,
)
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.batch import Batch
from tests.server.test_convert_bert import (
    CONFIG,
    HEADS,
    IDS,
    LAYERS,
    POSITIONS,
    numpy_bert,
    random_bert_weights,
    tiny_tokenizer,
)
from tests.tiny_models import load_version

MPNET_CONFIG = {
    **CONFIG,
    "architectures": ["MPNetModel"],
    "max_position_embeddings": POSITIONS + 2,
    "pad_token_id": 1,
    "relative_attention_num_buckets": 32,
}
RENAMED = {
    "attention.self.query": "attention.attn.q",
    "attention.self.key": "attention.attn.k",
    "attention.self.value": "attention.attn.v",
    "attention.output.dense": "attention.attn.o",
    "attention.output.LayerNorm": "attention.LayerNorm",
}


def exact_bucket(relative: int) -> int:
    """T5's bidirectional bucket of key - query in integer arithmetic: distance n >= 8 falls in
    8 + the largest j < 8 with n >= 8 * 16 ** (j / 8), that is n * n >= 64 * 2 ** j."""
    n = abs(relative)
    after = 16 if relative > 0 else 0
    if n < 8:
        return after + n
    return after + 8 + max(j for j in range(8) if n * n >= 64 * 2**j)


def test_buckets_are_t5s_with_their_edges_where_the_logarithm_puts_them() -> None:
    relative = np.arange(-1000, 1001)
    expected = [exact_bucket(int(r)) for r in relative]
    np.testing.assert_array_equal(relative_position_buckets(relative), expected)
    # Spelled out: exact below 8, edges at 12, 16, 23, 32, 46, 64, 91; keys after the query +16.
    got = relative_position_buckets(
        np.array([0, -7, -8, -11, -12, -16, -63, -64, -91, -500, 1, 64])
    )
    assert got.tolist() == [0, 7, 8, 8, 9, 10, 13, 14, 15, 15, 17, 30]


def mpnet_weights(bert: dict[str, np.ndarray], bias: np.ndarray) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for name, value in bert.items():
        if name == "embeddings.token_type_embeddings.weight":
            continue
        if name == "embeddings.position_embeddings.weight":
            rng = np.random.default_rng(5)
            value = np.concatenate([rng.standard_normal((2, value.shape[1])), value])
        for old, new in RENAMED.items():
            name = name.replace(f".{old}.", f".{new}.")
        weights[name] = value.astype(np.float32)
    weights["encoder.relative_attention_bias.weight"] = bias.astype(np.float32)
    return weights


def without_token_types(bert: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    table = bert["embeddings.token_type_embeddings.weight"]
    return {**bert, "embeddings.token_type_embeddings.weight": np.zeros_like(table)}


def convert(root: Path, weights: dict[str, np.ndarray], **config: Any) -> LoadedModel:
    prefix = config.pop("prefix", "")
    folder = root / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**MPNET_CONFIG, **config}))
    save_file({prefix + k: v for k, v in weights.items()}, str(folder / "model.safetensors"))
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    return load_version(convert_checkpoint(folder, root / "repo", "tiny", progress=lambda _: None))


def run(model: LoadedModel, ids: list[int], layers: list[int]) -> dict[int, np.ndarray]:
    prompt = EncodedPrompt(np.asarray(ids, np.int64), np.ones(len(ids), np.float32))
    return model.session.run(Batch.pad([prompt], [True], 1), layers)


@pytest.fixture(scope="module")
def bert() -> dict[str, np.ndarray]:
    return without_token_types(random_bert_weights())


def test_with_a_zero_bias_every_layer_is_bert_under_mpnets_names(
    tmp_path: Path, bert: dict[str, np.ndarray]
) -> None:
    model = convert(tmp_path, mpnet_weights(bert, np.zeros((32, HEADS))))
    states = run(model, IDS, list(range(LAYERS + 1)))
    for layer, expected in enumerate(numpy_bert(bert, IDS)):
        np.testing.assert_allclose(states[layer][0], expected, atol=2e-5, err_msg=f"layer {layer}")
    assert model.manifest.max_context_size == POSITIONS
    assert model.manifest.architecture == "bert"


def test_the_bias_acts_and_masked_lm_checkpoints_convert_from_under_their_prefix(
    tmp_path: Path, bert: dict[str, np.ndarray]
) -> None:
    bias = np.random.default_rng(1).standard_normal((32, HEADS))
    weights = {f"mpnet.{k}": v for k, v in mpnet_weights(bert, bias).items()}
    weights["lm_head.bias"] = np.zeros(4, np.float32)
    model = convert(tmp_path, weights, architectures=["MPNetForMaskedLM"])
    states = run(model, IDS, [0, 1])
    expected = numpy_bert(bert, IDS)
    np.testing.assert_allclose(states[0][0], expected[0], atol=2e-5)
    assert not np.allclose(states[1][0], expected[1], atol=1e-3), "the bias changed nothing"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "relative_attention_num_buckets",
            64,
            r"relative_attention_num_buckets 64 is not supported; .* only 32 is",
        ),
        ("hidden_act", "swish", r"hidden_act 'swish' is not supported; expected one of"),
        (
            "position_embedding_type",
            "relative_key_query",
            r"position_embedding_type 'relative_key_query' is not supported",
        ),
        ("max_position_embeddings", 2, r"max_position_embeddings 2 leaves no position past"),
    ],
)
def test_unsupported_options_are_refused_by_name(option: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MPNetConfig.from_hf({**MPNET_CONFIG, option: value})


def test_a_bias_table_of_another_shape_is_refused(bert: dict[str, np.ndarray]) -> None:
    weights = mpnet_weights(bert, np.zeros((32, HEADS + 1)))
    with pytest.raises(ValueError, match=r"has shape \(32, 4\); expected \(32, 3\)"):
        build_mpnet_graph(MPNetConfig.from_hf(MPNET_CONFIG), weights.__getitem__)


def test_missing_tensors_are_listed(tmp_path: Path, bert: dict[str, np.ndarray]) -> None:
    weights = mpnet_weights(bert, np.zeros((32, HEADS)))
    del weights["encoder.relative_attention_bias.weight"]
    with pytest.raises(ValueError, match=r"missing: encoder\.relative_attention_bias\.weight"):
        convert(tmp_path, weights)
