"""The BERT converter beyond the default model: random checkpoints against a numpy forward pass.

The numpy reference is written here from the BERT equations, including the AtMan control
semantics of docs/api.md, so a graph bug cannot hide in shared code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.repository.layout import VersionDir
from lamina.server.runtime.batch import Batch
from tests.tiny_models import controlled_attention

HIDDEN, HEADS, LAYERS, FFN, POSITIONS, VOCAB, EPS = 36, 3, 3, 50, 40, 64, 1e-12
CONFIG = {
    "architectures": ["BertModel"],
    "hidden_size": HIDDEN,  # odd head size: 3 heads of 12
    "num_attention_heads": HEADS,
    "num_hidden_layers": LAYERS,
    "intermediate_size": FFN,
    "max_position_embeddings": POSITIONS,
    "vocab_size": VOCAB,
    "layer_norm_eps": EPS,
    "hidden_act": "gelu",
    "pad_token_id": 0,
}


def random_bert_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f = HIDDEN, FFN

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(VOCAB, h),
        "embeddings.position_embeddings.weight": r(POSITIONS, h),
        "embeddings.token_type_embeddings.weight": r(2, h),
        "embeddings.LayerNorm.weight": 1 + r(h),
        "embeddings.LayerNorm.bias": r(h),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        for name, (out, inp) in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (f, h),
            "output.dense": (h, f),
        }.items():
            w[f"{p}.{name}.weight"], w[f"{p}.{name}.bias"] = r(out, inp), r(out)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{norm}.weight"], w[f"{p}.{norm}.bias"] = 1 + r(h), r(h)
    return w


def tiny_tokenizer() -> Tokenizer:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for word in ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]:
        vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer


def write_checkpoint(folder: Path, weights: dict[str, np.ndarray], prefix: str = "bert.") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    save_file({prefix + k: v for k, v in weights.items()}, str(folder / "model.safetensors"))
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


# --- the numpy reference ------------------------------------------------------------------------

_erf = np.vectorize(math.erf)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    return (x64 - mean) / np.sqrt(var + EPS) * weight + bias


def numpy_bert(
    w: dict[str, np.ndarray],
    ids: list[int],
    factors: np.ndarray | None = None,
    log_additive: bool = True,
) -> list[np.ndarray]:
    n, h, heads = len(ids), HIDDEN, HEADS
    d = h // heads
    f = np.ones(n) if factors is None else factors.astype(np.float64)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.token_type_embeddings.weight"][0]
        + w["embeddings.position_embeddings.weight"][:n]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    states = [x]
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"

        def lin(v: np.ndarray, name: str, prefix: str = p) -> np.ndarray:
            return (
                v @ w[f"{prefix}.{name}.weight"].T.astype(np.float64) + w[f"{prefix}.{name}.bias"]
            )

        q, k, v = (
            lin(x, f"attention.self.{t}").reshape(n, heads, d).transpose(1, 0, 2)
            for t in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)  # [heads, query, key]
        probs = controlled_attention(scores, np.ones((n, n), dtype=bool), f, log_additive)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, h)
        x = _layer_norm(
            lin(context, "attention.output.dense") + x,
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
        )
        up = lin(x, "intermediate.dense")
        x = _layer_norm(
            lin(0.5 * up * (1 + _erf(up / math.sqrt(2))), "output.dense") + x,
            w[f"{p}.output.LayerNorm.weight"],
            w[f"{p}.output.LayerNorm.bias"],
        )
        states.append(x)
    return states


# --- tests --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[LoadedModel, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("bert")
    weights = random_bert_weights()
    folder = write_checkpoint(root / "checkpoint", weights)
    path = convert_checkpoint(folder, root / "repo", "tiny-bert", progress=lambda _: None)
    entry = VersionDir("tiny-bert", int(path.name), path)
    return LoadedModel.load(entry, threads=1, providers=["CPUExecutionProvider"]), weights


def _run(
    model: LoadedModel, prompts: list[EncodedPrompt], log_additive: list[bool]
) -> dict[int, np.ndarray]:
    return model.session.run(Batch.pad(prompts, log_additive, 0), range(LAYERS + 1))


def _prompt(ids: list[int], factors: list[float] | None = None) -> EncodedPrompt:
    f = np.ones(len(ids), np.float32) if factors is None else np.asarray(factors, np.float32)
    return EncodedPrompt(np.asarray(ids, np.int64), f)


IDS = [2, 4, 9, 5, 11, 7, 3]


def test_every_hidden_state_matches_numpy(
    converted: tuple[LoadedModel, dict[str, np.ndarray]],
) -> None:
    model, weights = converted
    states = _run(model, [_prompt(IDS)], [True])
    for layer, expected in enumerate(numpy_bert(weights, IDS)):
        np.testing.assert_allclose(states[layer][0], expected, atol=2e-5, err_msg=f"layer {layer}")


def test_padding_rows_do_not_change_results(
    converted: tuple[LoadedModel, dict[str, np.ndarray]],
) -> None:
    model, weights = converted
    states = _run(model, [_prompt(IDS), _prompt(IDS[:3])], [True, True])
    expected = numpy_bert(weights, IDS[:3])
    for layer in range(len(expected)):
        np.testing.assert_allclose(states[layer][1, :3], expected[layer], atol=2e-5)


@pytest.mark.parametrize("log_additive", [True, False])
def test_attention_controls_follow_the_atman_formulas(
    converted: tuple[LoadedModel, dict[str, np.ndarray]], log_additive: bool
) -> None:
    model, weights = converted
    factors = [1.0, 0.5, 3.0, 0.0, 1.0, 1.0, 1.0]
    plain = _run(model, [_prompt(IDS)], [log_additive])
    controlled = _run(model, [_prompt(IDS, factors), _prompt(IDS)], [log_additive, log_additive])
    expected = numpy_bert(weights, IDS, np.asarray(factors), log_additive)
    last = LAYERS
    np.testing.assert_allclose(controlled[last][0], expected[last], atol=5e-5)
    # A controlled row leaves its uncontrolled neighbour in the batch untouched.
    np.testing.assert_allclose(controlled[last][1], plain[last][0], atol=1e-5)
    assert not np.allclose(controlled[last][0], plain[last][0], atol=1e-3)


def test_factor_one_changes_nothing_in_multiplicative_mode(
    converted: tuple[LoadedModel, dict[str, np.ndarray]],
) -> None:
    model, weights = converted
    states = _run(model, [_prompt(IDS)], [False])
    # (s - min) * 1 is a shift per query row, which softmax ignores.
    np.testing.assert_allclose(states[3][0], numpy_bert(weights, IDS)[3], atol=2e-5)


def test_missing_tensors_are_listed(tmp_path: Path) -> None:
    weights = random_bert_weights()
    del weights["encoder.layer.1.output.dense.weight"]
    folder = write_checkpoint(tmp_path / "checkpoint", weights)
    with pytest.raises(
        ValueError,
        match=r"1 expected tensors are missing: encoder\.layer\.1\.output\.dense\.weight",
    ):
        convert_checkpoint(folder, tmp_path / "repo", "broken", progress=lambda _: None)


def test_unsupported_architecture_names_what_is_supported(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "checkpoint", random_bert_weights())
    (folder / "config.json").write_text(json.dumps({**CONFIG, "architectures": ["GPT2Model"]}))
    with pytest.raises(ValueError, match="'GPT2Model' is not supported; supported: BertModel"):
        convert_checkpoint(folder, tmp_path / "repo", "gpt2", progress=lambda _: None)


def test_checkpoints_without_a_model_prefix_convert_too(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "checkpoint", random_bert_weights(), prefix="")
    path = convert_checkpoint(folder, tmp_path / "repo", "bare", progress=lambda _: None)
    assert (path / "model.onnx").is_file() and path.name == "1"


def test_tensorflow_era_norm_names_convert_as_transformers_renames_them(tmp_path: Path) -> None:
    weights = random_bert_weights()
    legacy = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): tensor
        for name, tensor in weights.items()
    }
    assert legacy.keys() != weights.keys()
    folder = write_checkpoint(tmp_path / "checkpoint", legacy)
    path = convert_checkpoint(folder, tmp_path / "repo", "legacy", progress=lambda _: None)
    entry = VersionDir("legacy", 1, path)
    model = LoadedModel.load(entry, threads=1, providers=["CPUExecutionProvider"])
    states = _run(model, [_prompt(IDS)], [True])
    np.testing.assert_allclose(states[LAYERS][0], numpy_bert(weights, IDS)[LAYERS], atol=2e-5)
