"""The manifest's semantic section: parsed strictly, written by the converter from a
sentence-transformers config or by prepare from the package pin, and its instruction placed as an
item of its own."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lamina.server.config import default_home
from lamina.server.convert.packages import (
    ALL_MINILM_L6_V2,
    DINOV2_SMALL,
    SMOLLM2_135M_INSTRUCT,
    fetch_checkpoint,
)
from lamina.server.convert.sentence_transformers import read_semantic
from lamina.server.domain import Pooling, Representation, TextControl, TextItem, TokenIdsItem
from lamina.server.errors import InvalidArgument
from lamina.server.models.loaded import LoadedModel
from lamina.server.repository.manifest import Manifest, SemanticConfig

BERT = Manifest(
    architecture="bert",
    num_layers=6,
    hidden_size=384,
    max_context_size=512,
    vocab_size=30522,
    pad_token_id=0,
)
MEAN_NORMALISED = SemanticConfig(layer=-1, pooling=Pooling.MEAN, normalize=True)


def written(manifest: Manifest, tmp_path: Path) -> dict[str, Any]:
    manifest.write(tmp_path)
    data: dict[str, Any] = json.loads((tmp_path / "manifest.json").read_text())
    return data


def read_with(tmp_path: Path, semantic: Any, **fields: Any) -> Manifest:
    data = written(BERT, tmp_path)
    data.update(semantic=semantic, **fields)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return Manifest.read(tmp_path)


def test_the_section_round_trips(tmp_path: Path) -> None:
    semantic = SemanticConfig(
        layer=3,
        pooling=Pooling.WEIGHTED_MEAN,
        normalize=False,
        representations={**MEAN_NORMALISED.representations, Representation.QUERY: "query: "},
    )
    data = written(replace(BERT, semantic=semantic), tmp_path)
    assert data["semantic"] == {
        "layer": 3,
        "pooling": "weighted_mean",
        "normalize": False,
        "representations": {"symmetric": "", "document": "", "query": "query: "},
    }
    back = Manifest.read(tmp_path)
    assert back.semantic == semantic
    assert back.semantic.instruction(Representation.QUERY) == "query: "
    assert back.embedding_types == ("embed", "semantic_embed")


def test_no_section_means_no_semantic_embedding(tmp_path: Path) -> None:
    manifest = read_with(tmp_path, None)
    assert manifest.semantic is None and manifest.embedding_types == ("embed",)


def test_missing_representations_have_no_instruction(tmp_path: Path) -> None:
    manifest = read_with(
        tmp_path,
        {"layer": -1, "pooling": "mean", "normalize": True, "representations": {"query": "q: "}},
    )
    assert manifest.semantic is not None
    assert manifest.semantic.instruction(Representation.DOCUMENT) == ""
    assert manifest.semantic.instruction(Representation.QUERY) == "q: "


def test_manifests_written_before_the_section_still_load(tmp_path: Path) -> None:
    data = written(BERT, tmp_path)
    del data["semantic"]
    data["embedding_types"] = ["embed"]  # what they stored then; derived now
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert Manifest.read(tmp_path).semantic is None


@pytest.mark.parametrize(
    ("semantic", "says"),
    [
        ([], "manifest semantic: expected an object"),
        ({"pooling": "mean", "normalize": True}, "semantic.layer: required"),
        ({"layer": "last", "pooling": "mean", "normalize": True}, "semantic.layer: expected an"),
        ({"layer": True, "pooling": "mean", "normalize": True}, "semantic.layer: expected an"),
        ({"layer": 7, "pooling": "mean", "normalize": True}, r"semantic.layer: 7 is outside -7..6"),
        ({"layer": -8, "pooling": "mean", "normalize": True}, "semantic.layer: -8 is outside"),
        ({"layer": -1, "pooling": "cls", "normalize": True}, "semantic.pooling: 'cls' is none"),
        ({"layer": -1, "pooling": "mean", "normalize": 1}, "semantic.normalize: expected true"),
        ({"layer": -1, "pooling": "mean"}, "semantic.normalize: required"),
        (
            {"layer": -1, "pooling": "mean", "normalize": True, "compress": 128},
            r"semantic: unknown fields \['compress'\]",
        ),
        (
            {"layer": -1, "pooling": "mean", "normalize": True, "representations": []},
            "semantic.representations: expected an object",
        ),
        (
            {"layer": -1, "pooling": "mean", "normalize": True, "representations": {"x": ""}},
            "semantic.representations: unknown 'x'",
        ),
        (
            {"layer": -1, "pooling": "mean", "normalize": True, "representations": {"query": 1}},
            "semantic.representations.query: expected a string",
        ),
    ],
)
def test_a_bad_section_is_a_clear_error(tmp_path: Path, semantic: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        read_with(tmp_path, semantic)


def test_an_image_encoder_takes_no_instruction(tmp_path: Path) -> None:
    semantic = {"layer": -1, "pooling": "mean", "normalize": True}
    assert read_with(tmp_path, semantic, tokenizer="").semantic is not None
    with pytest.raises(
        ValueError, match=r"semantic\.representations\.query: a model without a tok"
    ):
        read_with(tmp_path, {**semantic, "representations": {"query": "q"}}, tokenizer="")


def sentence_transformers_folder(
    folder: Path, modes: dict[str, bool], *, normalize: bool = True, prompts: Any = None
) -> Path:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    config = {"word_embedding_dimension": 8, "pooling_mode_cls_token": False, **modes}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    if prompts is not None:
        (folder / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    return folder


def test_the_converter_reads_the_minilm_package_config() -> None:
    folder = fetch_checkpoint(ALL_MINILM_L6_V2, default_home() / "packages")
    assert read_semantic(folder, print) == MEAN_NORMALISED


@pytest.mark.parametrize(
    ("modes", "normalize", "expected"),
    [
        ({"pooling_mode_max_tokens": True}, False, Pooling.MAX),
        ({"pooling_mode_lasttoken": True}, True, Pooling.LAST_TOKEN),
        ({"pooling_mode_weightedmean_tokens": True}, True, Pooling.WEIGHTED_MEAN),
    ],
)
def test_the_converter_maps_each_served_pooling_mode(
    tmp_path: Path, modes: dict[str, bool], normalize: bool, expected: Pooling
) -> None:
    folder = sentence_transformers_folder(tmp_path, modes, normalize=normalize)
    assert read_semantic(folder, print) == SemanticConfig(-1, expected, normalize)


def test_the_converter_takes_the_prompts_as_instructions(tmp_path: Path) -> None:
    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}
    folder = sentence_transformers_folder(
        tmp_path, {"pooling_mode_mean_tokens": True}, prompts=prompts
    )
    semantic = read_semantic(folder, print)
    assert semantic is not None
    assert semantic.representations == {
        Representation.SYMMETRIC: "",
        Representation.DOCUMENT: "passage: ",
        Representation.QUERY: "query: ",
    }


@pytest.mark.parametrize(
    "modes",
    [
        {"pooling_mode_mean_sqrt_len_tokens": True},
        {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
    ],
)
def test_a_pooling_lamina_does_not_serve_gives_no_section(
    tmp_path: Path, modes: dict[str, bool]
) -> None:
    said: list[str] = []
    assert read_semantic(sentence_transformers_folder(tmp_path, modes), said.append) is None
    assert "no semantic embedding" in said[0]


def test_extra_modules_give_no_section(tmp_path: Path) -> None:
    folder = sentence_transformers_folder(tmp_path, {"pooling_mode_mean_tokens": True})
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    assert read_semantic(folder, print) is None
    assert read_semantic(tmp_path / "1_Pooling", print) is None  # no modules.json at all


def test_the_packaged_defaults() -> None:
    assert DINOV2_SMALL.semantic == MEAN_NORMALISED  # the patch mean, normalised
    assert ALL_MINILM_L6_V2.semantic is None  # its own sentence-transformers config says it
    assert SMOLLM2_135M_INSTRUCT.semantic is None  # not trained for embeddings


def test_the_prepared_models_carry_their_sections(
    minilm: LoadedModel, dinov2: LoadedModel, smollm2: LoadedModel
) -> None:
    assert minilm.manifest.semantic == dinov2.manifest.semantic == MEAN_NORMALISED
    assert smollm2.manifest.semantic is None


def test_an_instruction_is_its_own_item_before_the_prompt(minilm: LoadedModel) -> None:
    control = TextControl(start=6, length=5, factor=0.5)
    items = (TextItem("hello world", (control,)),)
    instructed = minilm.encoder.encode(items, instruction="query:")
    by_hand = minilm.encoder.encode((TextItem("query:"), *items))
    assert instructed.ids.tolist() == by_hand.ids.tolist()
    assert instructed.control_factors.tolist() == by_hand.control_factors.tolist()
    assert instructed.control_factors.tolist()[-2] == 0.5  # "world" keeps its control
    with pytest.raises(InvalidArgument, match=r"^prompt\[0\].token_ids.data\[0\]"):
        minilm.encoder.encode((TokenIdsItem((10**9,)),), instruction="query:")
    with pytest.raises(InvalidArgument, match="prompt: the prompt is empty"):
        minilm.encoder.encode((TextItem(""),), instruction="query:")
