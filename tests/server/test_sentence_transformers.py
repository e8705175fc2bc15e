"""sentence-transformers folders taken over whole: every module list and option the converter
reads (CLS pooling, Dense modules, Normalize, prompts, truncate_dim, Matryoshka sizes) or refuses
with its reason, the manifest fields that carry them (strict), the projections applied to the
pooled vector, and SemanticEmbed serving them on a real model."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from lamina.server import fields
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.convert.sentence_transformers import read_semantic, read_sentence_transformers
from lamina.server.domain import (
    EMBED_POOLINGS,
    Pooling,
    Representation,
    SemanticEmbedRequest,
    TextItem,
)
from lamina.server.errors import InvalidArgument
from lamina.server.models.loaded import LoadedModel, VersionContents
from lamina.server.models.semantic_head import ACTIVATIONS, Projection, SemanticHead
from lamina.server.pooling import pool
from lamina.server.repository.layout import VersionDir
from lamina.server.repository.manifest import DenseLayer, Manifest, SemanticConfig
from lamina.server.runtime.batch import Batch

BERT = Manifest(
    architecture="bert",
    num_layers=2,
    hidden_size=8,
    max_context_size=64,
    vocab_size=100,
    pad_token_id=0,
)
ST = "sentence_transformers."


def st_folder(
    folder: Path,
    pooling: dict[str, Any] | None = None,
    dense: list[dict[str, Any]] = (),  # type: ignore[assignment]
    *,
    normalize: bool = True,
    options: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A sentence-transformers folder as 6.x saves one (module types by their full path), with
    Dense weights drawn at random; `dense` holds each Dense module's config."""
    rng = np.random.default_rng(seed)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": f"{ST}base.modules.transformer.Transformer"}
    ]
    modules.append(
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": f"{ST}sentence_transformer.modules.pooling.Pooling",
        }
    )
    (folder / "1_Pooling").mkdir()
    pooling_config = {"embedding_dimension": 8, "pooling_mode": "mean", "include_prompt": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config | (pooling or {})))
    for layer in dense:
        index = len(modules)
        path = folder / f"{index}_Dense"
        path.mkdir()
        (path / "config.json").write_text(json.dumps(layer))
        out, inp = layer["out_features"], layer["in_features"]
        tensors = {"linear.weight": rng.standard_normal((out, inp)).astype(np.float32)}
        if layer.get("bias", True):
            tensors["linear.bias"] = rng.standard_normal(out).astype(np.float32)
        save_file(tensors, str(path / "model.safetensors"))
        modules.append(
            {
                "idx": index,
                "name": str(index),
                "path": path.name,
                "type": f"{ST}base.modules.dense.Dense",
            }
        )
    if normalize:
        index = len(modules)
        (folder / f"{index}_Normalize").mkdir()
        modules.append(
            {
                "idx": index,
                "name": str(index),
                "path": f"{index}_Normalize",
                "type": f"{ST}base.modules.normalize.Normalize",
            }
        )
    (folder / "modules.json").write_text(json.dumps(modules))
    if options is not None:
        (folder / "config_sentence_transformers.json").write_text(json.dumps(options))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def dense(
    inp: int, out: int, activation: str | None = "torch.nn.modules.activation.Tanh", **more: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {"in_features": inp, "out_features": out, "bias": True, **more}
    if activation is not None:
        config["activation_function"] = activation
    return config


def refused(folder: Path) -> str:
    said: list[str] = []
    assert read_sentence_transformers(folder, said.append) is None
    return said[-1]


# --- the converter -------------------------------------------------------------------------


NEW = {"embedding_dimension": 8, "include_prompt": True}
LEGACY = {"word_embedding_dimension": 8}  # before 5.x: one boolean per mode, as bge ships


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        (NEW | {"pooling_mode": "cls"}, Pooling.FIRST_TOKEN),
        (NEW | {"pooling_mode": ["cls"]}, Pooling.FIRST_TOKEN),
        (NEW | {"pooling_mode": "lasttoken"}, Pooling.LAST_TOKEN),
        (NEW | {"pooling_mode": "weightedmean"}, Pooling.WEIGHTED_MEAN),
        (NEW | {"pooling_mode": "max"}, Pooling.MAX),
        (
            LEGACY | {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
            Pooling.FIRST_TOKEN,
        ),
        (LEGACY | {"pooling_mode_cls_token": False}, Pooling.MEAN),  # none set: mean
    ],
)
def test_every_pooling_mode_lamina_has(
    tmp_path: Path, pooling: dict[str, Any], expected: Pooling
) -> None:
    folder = st_folder(tmp_path)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert read_semantic(folder, print) == SemanticConfig(-1, expected, True)


def test_dense_modules_become_projections_with_their_weights(tmp_path: Path) -> None:
    folder = st_folder(
        tmp_path,
        {"pooling_mode": "cls"},
        [dense(8, 6, "torch.nn.modules.activation.GELU"), dense(6, 5, None, bias=False)],
        normalize=False,
    )
    modules = read_sentence_transformers(folder, print)
    assert modules is not None
    semantic = modules.semantic
    assert semantic.dense == (
        DenseLayer("semantic_dense_0.safetensors", 8, 6, True, "gelu"),
        DenseLayer("semantic_dense_1.safetensors", 6, 5, False, "tanh"),  # Dense's default
    )
    assert not semantic.normalize and semantic.output_size(8) == 5
    assert set(modules.files) == {"semantic_dense_0.safetensors", "semantic_dense_1.safetensors"}
    for index, layer in enumerate(semantic.dense):
        (tmp_path / layer.file).write_bytes(modules.files[layer.file])
        projection = Projection.read(tmp_path, layer)
        from safetensors.numpy import load_file

        source = load_file(str(folder / f"{index + 2}_Dense" / "model.safetensors"))
        np.testing.assert_array_equal(projection.weight, source["linear.weight"])
        assert (projection.bias is None) == (not layer.bias)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {"pooling": {"pooling_mode": "mean_sqrt_len_tokens"}},
            "pooling ['mean_sqrt_len_tokens'] is not served",
        ),
        ({"pooling": {"pooling_mode": ["mean", "max"]}}, "pooling ['mean', 'max'] is not served"),
        (
            {"dense": [dense(8, 4, "torch.nn.modules.activation.Softmax")]},
            "activation_function 'torch.nn.modules.activation.Softmax' is not served",
        ),
        ({"dense": [dense(8, 4, "my_package.Swish")]}, "activation_function 'my_package.Swish'"),
        ({"dense": [dense(8, 4, use_residual=True)]}, "use_residual is not served"),
        (
            {"dense": [dense(8, 4, module_input_name="token_embeddings")]},
            "on 'token_embeddings' is not served",
        ),
        ({"dense": [dense(8, 4, future_option=1)]}, "options ['future_option'] are not served"),
    ],
)
def test_what_lamina_cannot_compute_leaves_no_section_and_says_why(
    tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    assert says in refused(st_folder(tmp_path, **change))


def test_a_dense_module_with_only_a_pickle_is_refused(tmp_path: Path) -> None:
    folder = st_folder(tmp_path, dense=[dense(8, 4)])
    (folder / "2_Dense" / "model.safetensors").unlink()
    (folder / "2_Dense" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    assert "only as a pickle (pytorch_model.bin), which Lamina does not load" in refused(folder)


def test_modules_out_of_place_or_of_other_packages_are_refused(tmp_path: Path) -> None:
    folder = st_folder(tmp_path, dense=[dense(8, 4)])
    modules = json.loads((folder / "modules.json").read_text())
    modules[2], modules[3] = modules[3], modules[2]  # Normalize before Dense
    (folder / "modules.json").write_text(json.dumps(modules))
    assert "modules ['Transformer', 'Pooling', 'Normalize', 'Dense'] are not served" in refused(
        folder
    )
    modules[2]["type"] = "custom_code.Normalize"  # remote code keeps its whole name
    (folder / "modules.json").write_text(json.dumps(modules))
    assert "'custom_code.Normalize'" in refused(folder)


def test_prompts_the_way_sentence_transformers_picks_them(tmp_path: Path) -> None:
    options = {
        "prompts": {"query": "query: ", "corpus": "corpus: ", "classify": "classify: "},
        "default_prompt_name": "classify",
    }
    semantic = read_semantic(st_folder(tmp_path, options=options), print)
    assert semantic is not None and semantic.representations == {
        Representation.SYMMETRIC: "classify: ",
        Representation.DOCUMENT: "corpus: ",  # after document and passage, which it lacks
        Representation.QUERY: "query: ",
    }


def test_a_missing_prompt_falls_back_to_the_default_one(tmp_path: Path) -> None:
    options = {"prompts": {"all": "Represent: "}, "default_prompt_name": "all"}
    semantic = read_semantic(st_folder(tmp_path, options=options), print)
    assert semantic is not None
    assert set(semantic.representations.values()) == {"Represent: "}


def test_prompts_kept_out_of_the_pooling_are_refused(tmp_path: Path) -> None:
    options = {"prompts": {"query": "query: "}}
    folder = st_folder(tmp_path, {"include_prompt": False}, options=options)
    assert "include_prompt false" in refused(folder)


def test_include_prompt_false_without_prompts_changes_nothing(tmp_path: Path) -> None:
    assert read_semantic(st_folder(tmp_path, {"include_prompt": False}), print) is not None


def test_truncate_dim_and_matryoshka_sizes(tmp_path: Path) -> None:
    folder = st_folder(
        tmp_path,
        dense=[dense(8, 6)],
        options={"truncate_dim": 4},
        config={"matryoshka_dimensions": [6, 2, 4, 3]},
    )
    semantic = read_semantic(folder, print)
    assert semantic is not None
    assert semantic.dimensions == 4
    assert semantic.matryoshka_dimensions == (2, 3, 4)  # none past the truncated vector


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"modules.json": {"not": "a list"}}, "expected a list of objects"),
        (
            {"config_sentence_transformers.json": {"truncate_dim": 9}},
            "truncate_dim 9 is not an integer in 1..4",
        ),
        (
            {"config_sentence_transformers.json": {"prompts": {"q": 1}}},
            "prompts is not an object of strings",
        ),
        (
            {"config_sentence_transformers.json": {"prompts": {}, "default_prompt_name": "q"}},
            "default_prompt_name 'q'",
        ),
        ({"config.json": {"matryoshka_dimensions": "128"}}, "matryoshka_dimensions is not a list"),
        ({"2_Dense/config.json": dense(7, 4)}, "in_features 7 but it is given 8 values"),
    ],
)
def test_malformed_files_are_errors_naming_them(
    tmp_path: Path, files: dict[str, Any], says: str
) -> None:
    folder = st_folder(tmp_path, dense=[dense(8, 4)])
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    with pytest.raises(ValueError, match=re_escape(says)):
        read_sentence_transformers(folder, print)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# --- the manifest --------------------------------------------------------------------------

PROJECTED = SemanticConfig(
    layer=-1,
    pooling=Pooling.FIRST_TOKEN,
    normalize=True,
    dense=(DenseLayer("semantic_dense_0.safetensors", 8, 6, True, "tanh"),),
    dimensions=5,
    matryoshka_dimensions=(2, 4),
)


def read_back(tmp_path: Path, semantic: Any) -> Manifest:
    replace(BERT).write(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["semantic"] = semantic
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return Manifest.read(tmp_path)


def test_the_new_fields_round_trip(tmp_path: Path) -> None:
    replace(BERT, semantic=PROJECTED).write(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["semantic"]["pooling"] == "first_token"
    assert data["semantic"]["dense"] == [
        {
            "file": "semantic_dense_0.safetensors",
            "in_features": 8,
            "out_features": 6,
            "bias": True,
            "activation": "tanh",
        }
    ]
    assert data["semantic"]["dimensions"] == 5
    assert data["semantic"]["matryoshka_dimensions"] == [2, 4]
    assert Manifest.read(tmp_path).semantic == PROJECTED


BASE = {"layer": -1, "pooling": "mean", "normalize": True}
LAYER = {
    "file": "d.safetensors",
    "in_features": 8,
    "out_features": 6,
    "bias": True,
    "activation": "tanh",
}


@pytest.mark.parametrize(
    ("semantic", "says"),
    [
        (BASE | {"dense": {}}, "semantic.dense: expected a list"),
        (
            BASE | {"dense": [LAYER | {"extra": 1}]},
            r"semantic.dense\[0\]: expected an object with exactly",
        ),
        (
            BASE | {"dense": [LAYER | {"file": "../x"}]},
            r"dense\[0\].file: expected the name of a file",
        ),
        (
            BASE | {"dense": [LAYER | {"in_features": 0}]},
            r"dense\[0\].in_features: expected an integer",
        ),
        (BASE | {"dense": [LAYER | {"bias": 1}]}, r"dense\[0\].bias: expected true or false"),
        (
            BASE | {"dense": [LAYER | {"activation": "swish"}]},
            r"dense\[0\].activation: 'swish' is none",
        ),
        (
            BASE | {"dense": [LAYER | {"in_features": 7}]},
            r"dense\[0\].in_features: 7 does not match the 8",
        ),
        (
            BASE | {"dense": [LAYER, LAYER | {"in_features": 6}]},
            "each projection needs a file of its own",
        ),
        (
            BASE | {"dense": [LAYER | {"file": "model.onnx"}]},
            "each projection needs a file of its own",
        ),
        (BASE | {"dimensions": 9}, "semantic.dimensions: 9 is outside 1..8"),
        (BASE | {"dense": [LAYER], "dimensions": 7}, "semantic.dimensions: 7 is outside 1..6"),
        (BASE | {"dimensions": True}, "semantic.dimensions: expected a positive integer"),
        (BASE | {"matryoshka_dimensions": [4, 2]}, "distinct sizes, smallest first"),
        (BASE | {"matryoshka_dimensions": [2, 9]}, r"\[2, 9\] are not all in 1..8"),
        (BASE | {"dimensions": 4, "matryoshka_dimensions": [6]}, r"\[6\] are not all in 1..4"),
        (BASE | {"matryoshka_dimensions": ["4"]}, "matryoshka_dimensions: expected a list"),
        (BASE | {"pooling": "cls"}, "semantic.pooling: 'cls' is none of"),
    ],
)
def test_bad_new_fields_are_clear_errors(tmp_path: Path, semantic: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        read_back(tmp_path, semantic)


def test_first_token_is_no_embed_pooling() -> None:
    assert Pooling.FIRST_TOKEN not in EMBED_POOLINGS
    with pytest.raises(
        InvalidArgument, match="unknown pooling 'first_token'; expected one of mean,"
    ):
        fields.pooling("first_token", 0)
    assert fields.pooling("mean", 0) is Pooling.MEAN


def test_first_token_pools_the_first_position() -> None:
    states = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(pool(states, Pooling.FIRST_TOKEN), states[0])


# --- the projections -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("identity", 1.5, 1.5),
        ("tanh", 0.5, math.tanh(0.5)),
        ("relu", -2.0, 0.0),
        ("gelu", 1.0, 0.8413447460685429),  # x * Phi(x), torch.nn.GELU()
        ("gelu", -3.0, -0.004049694),
        ("sigmoid", -800.0, 0.0),  # no overflow
        ("sigmoid", 2.0, 1 / (1 + math.exp(-2.0))),
        ("silu", 2.0, 2.0 / (1 + math.exp(-2.0))),
    ],
)
def test_activations_match_their_torch_formulas(name: str, x: float, expected: float) -> None:
    value = float(ACTIVATIONS[name](np.asarray([x]))[0])
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-9)


def write_projection(tmp_path: Path, layer: DenseLayer, **tensors: np.ndarray) -> None:
    save_file(tensors, str(tmp_path / layer.file))


def test_the_head_projects_truncates_then_normalises(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weight, bias = rng.standard_normal((6, 8)), rng.standard_normal(6)
    layer = PROJECTED.dense[0]
    write_projection(
        tmp_path, layer, weight=weight.astype(np.float32), bias=bias.astype(np.float32)
    )
    head = SemanticHead.read(tmp_path, PROJECTED)
    pooled = [rng.standard_normal(8).astype(np.float32) for _ in range(3)]
    w, b = weight.astype(np.float32).astype(np.float64), bias.astype(np.float32).astype(np.float64)
    expected = [np.tanh(w @ v + b)[:4] for v in pooled]
    ours = head.apply(pooled, 4, normalized=False)
    for vector, reference in zip(ours, expected, strict=True):
        assert vector.dtype == np.float32
        np.testing.assert_allclose(vector, reference, rtol=1e-6)
    for vector, reference in zip(head.apply(pooled, 4, normalized=True), expected, strict=True):
        np.testing.assert_allclose(vector, reference / np.linalg.norm(reference), rtol=1e-6)
    assert head.apply([], 4, normalized=True) == []
    assert SemanticHead().apply(pooled, None, normalized=False)[0].tolist() == pooled[0].tolist()


@pytest.mark.parametrize(
    ("tensors", "says"),
    [
        ({"weight": np.zeros((6, 8), np.float32)}, r"expected the tensors \['bias', 'weight'\]"),
        (
            {"weight": np.zeros((8, 6), np.float32), "bias": np.zeros(6, np.float32)},
            r"weight is float32 \[8, 6\]",
        ),
        (
            {"weight": np.zeros((6, 8), np.int32), "bias": np.zeros(6, np.float32)},
            "weight is int32",
        ),
        ({"weight": np.full((6, 8), np.nan, np.float32), "bias": np.zeros(6, np.float32)}, "NaN"),
    ],
)
def test_a_projection_file_not_as_the_manifest_says_fails_to_load(
    tmp_path: Path, tensors: dict[str, np.ndarray], says: str
) -> None:
    write_projection(tmp_path, PROJECTED.dense[0], **tensors)
    with pytest.raises(ValueError, match=says):
        SemanticHead.read(tmp_path, PROJECTED)


# --- SemanticEmbed on a real model ---------------------------------------------------------


@pytest.mark.model
async def test_semantic_embed_serves_cls_pooling_projections_and_matryoshka(
    minilm: LoadedModel, tmp_path: Path
) -> None:
    """MiniLM given a CLS + Dense + truncation section by hand: SemanticEmbed equals the first
    token of its last hidden state through the same numpy projection."""
    from tests.server.test_engine import FakeRegistry, make_engine, on_pool

    hidden = minilm.manifest.hidden_size
    layer = DenseLayer("semantic_dense_0.safetensors", hidden, 40, True, "gelu")
    semantic = SemanticConfig(
        layer=-1,
        pooling=Pooling.FIRST_TOKEN,
        normalize=True,
        dense=(layer,),
        dimensions=32,
        matryoshka_dimensions=(16,),
    )
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((40, hidden)) / math.sqrt(hidden)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    write_projection(tmp_path, layer, weight=weight, bias=bias)
    projected = replace(
        minilm,
        name="projected",
        manifest=replace(minilm.manifest, semantic=semantic),
        semantic_head=SemanticHead.read(tmp_path, semantic),
    )
    engine = make_engine(FakeRegistry(*on_pool(minilm, projected)))
    texts = ["An apple a day", "keeps the doctor away, they say"]
    try:

        def request(**more: Any) -> SemanticEmbedRequest:
            prompts = tuple((TextItem(t),) for t in texts)
            return SemanticEmbedRequest(
                model="projected",
                prompts=prompts,
                representation=Representation.QUERY,
                batch=True,
                **more,
            )

        served = (await engine.semantic_embed(request())).embeddings
        raw = (await engine.semantic_embed(request(normalize=False))).embeddings
        compressed = (await engine.semantic_embed(request(compress_to_size=16))).embeddings
        with pytest.raises(InvalidArgument) as error:
            await engine.semantic_embed(request(compress_to_size=128))
        assert error.value.field == ("compress_to_size",)
        assert "the Matryoshka sizes it declares: 16" in error.value.problem
    finally:
        await engine.close()
    for index, text in enumerate(texts):
        prompt = minilm.encoder.encode((TextItem(text),))
        states = minilm.session.run(Batch.pad([prompt], [True], 0), [minilm.manifest.num_layers])
        first = states[minilm.manifest.num_layers][0][0].astype(np.float64)
        x = weight.astype(np.float64) @ first + bias
        full = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        np.testing.assert_allclose(raw[index], full[:32], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(served[index], full[:32] / np.linalg.norm(full[:32]), atol=1e-5)
        small = full[:16] / np.linalg.norm(full[:16])
        np.testing.assert_allclose(compressed[index], small, atol=1e-5)
        assert served[index].shape == (32,) and compressed[index].shape == (16,)


def test_a_version_loads_its_projection_files(tmp_path: Path) -> None:
    """The files the manifest names are read when the version loads; a missing one fails it."""
    layer = DenseLayer("semantic_dense_0.safetensors", 8, 4, False, "identity")
    semantic = SemanticConfig(-1, Pooling.MEAN, True, dense=(layer,))
    replace(BERT, semantic=semantic, tokenizer="", token_embeddings="").write(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")  # read as bytes; no session is built here
    with pytest.raises(ValueError, match=r"semantic_dense_0\.safetensors"):
        VersionContents.read(tmp_path)
    write_projection(tmp_path, layer, weight=np.eye(4, 8, dtype=np.float32))
    contents = VersionContents.read(tmp_path)
    assert len(contents.semantic_head.projections) == 1


def test_a_converted_folder_carries_its_projection_into_the_version(tmp_path: Path) -> None:
    """A tiny BERT checkpoint with CLS pooling and a Dense module, through `lamina convert`: the
    version folder holds the projection's file, and the loaded version serves it."""
    from tests.server.test_convert_bert import HIDDEN, random_bert_weights, write_checkpoint

    folder = write_checkpoint(tmp_path / "checkpoint", random_bert_weights())
    pooling = {"pooling_mode": "cls", "embedding_dimension": HIDDEN}
    st_folder(folder, pooling, [dense(HIDDEN, 10, "torch.nn.modules.activation.ReLU")])
    path = convert_checkpoint(folder, tmp_path / "repo", "tiny-st", progress=lambda _: None)
    assert (path / "semantic_dense_0.safetensors").is_file()
    loaded = LoadedModel.load(
        VersionDir("tiny-st", int(path.name), path), threads=1, providers=["CPUExecutionProvider"]
    )
    semantic = loaded.manifest.semantic
    assert semantic is not None and semantic.pooling is Pooling.FIRST_TOKEN
    assert semantic.dense[0].activation == "relu" and semantic.normalize
    (projection,) = loaded.semantic_head.projections
    assert projection.weight.shape == (10, HIDDEN)


def test_lowercasing_the_tokenizer_does_not_do_is_refused(tmp_path: Path) -> None:
    folder = st_folder(tmp_path)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"do_lower_case": True}))
    assert "lowercases the input (do_lower_case), the tokenizer does not" in refused(folder)
    normalizer = {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}
    (folder / "tokenizer.json").write_text(json.dumps({"normalizer": normalizer}))
    assert read_semantic(folder, print) is not None


def test_a_transformer_handing_on_another_output_is_refused(tmp_path: Path) -> None:
    folder = st_folder(tmp_path)
    text = {"method": "forward", "method_output_name": "pooler_output"}
    config = {"modality_config": {"text": text}, "module_output_name": "token_embeddings"}
    (folder / "sentence_bert_config.json").write_text(json.dumps(config))
    assert "hands on 'pooler_output', not the last hidden state" in refused(folder)
