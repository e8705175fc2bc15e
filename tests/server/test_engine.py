"""The engine as a unit: real model versions (the prepared MiniLM and DINOv2, loaded once) behind
a fake registry, and pools that run their batches inline on the event loop. No server, no ports:
what is checked is the engine's own work (lookup, preparation, admission, the result's shape and
its errors, with their field paths)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pytest

from lamina.server.domain import (
    EmbedRequest,
    ModelVersionState,
    Pooling,
    Representation,
    SemanticEmbedRequest,
    TextItem,
    TokenIdsItem,
    VersionState,
)
from lamina.server.engine import HEAVY_PIXELS, HEAVY_TEXT_CHARS, LIGHT_CHARS, Cost, Engine
from lamina.server.errors import (
    HostingUnavailable,
    InvalidArgument,
    ModelNotFound,
    NonFiniteResult,
    QueueFull,
)
from lamina.server.metrics import Metrics
from lamina.server.models.inference import BatchRun
from lamina.server.models.loaded import LoadedModel
from lamina.server.models.registry import ModelVersion
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import Job
from lamina.server.scheduling.policy import SchedulingPolicy
from tests.conftest import DINOV2, MINILM
from tests.jobs import PoisonedRun
from tests.server.test_scheduler import InlineExecutor

pytestmark = pytest.mark.model

POOL = PoolSpec("default", "cpu", 1, frozenset())


class FakeRegistry:
    """Serves the versions it is given; `refresh` hands over `arriving` once."""

    def __init__(self, *versions: ModelVersion) -> None:
        self.pools = (POOL,)
        self.versions = {v.name: v for v in versions}
        self.arriving: list[ModelVersion] = []
        self.failed: list[ModelVersionState] = []

    def refresh(self) -> list[ModelVersion]:
        arrived, self.arriving = self.arriving, []
        self.versions |= {v.name: v for v in arrived}
        return arrived

    def serving(self, name: str) -> ModelVersion | None:
        return self.versions.get(name)

    def served(self) -> dict[str, ModelVersion]:
        return dict(sorted(self.versions.items()))

    def states(self, name: str | None = None) -> list[ModelVersionState]:
        serving = [
            ModelVersionState(v.name, v.version, VersionState.SERVING, None)
            for v in self.served().values()
        ]
        every = sorted(serving + self.failed, key=lambda s: (s.model, s.version))
        return [s for s in every if name is None or s.model == name]


@dataclass(frozen=True, eq=False)
class PoisonedVersion(ModelVersion):
    """A real version whose vectors come out NaN, as a broken graph's would."""

    def start_batch(self, pool: str, jobs: Sequence[Job]) -> BatchRun:
        return PoisonedRun(self.per_pool[pool], jobs)


def on_pool(*models: LoadedModel) -> list[ModelVersion]:
    return [ModelVersion({POOL.name: model}) for model in models]


@pytest.fixture
async def engine(minilm: LoadedModel, dinov2: LoadedModel) -> AsyncIterator[Engine]:
    engine = make_engine(FakeRegistry(*on_pool(minilm, dinov2)))
    yield engine
    await engine.close()


def make_engine(registry: FakeRegistry, policy: SchedulingPolicy | None = None) -> Engine:
    engine = Engine(
        registry,
        policy or SchedulingPolicy(max_wait_seconds=0),
        Metrics(),
        pool_executor=lambda spec: InlineExecutor(),
    )
    engine.start()
    return engine


def embed(**fields: object) -> EmbedRequest:
    values: dict[str, object] = {
        "model": MINILM,
        "prompt": (TextItem("An apple a day"),),
        "layers": (-1,),
        "pooling": (Pooling.MEAN,),
    }
    return EmbedRequest(**(values | fields))  # type: ignore[arg-type]


def sample(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_an_embed_answers_each_layer_and_pooling_asked_once(engine: Engine) -> None:
    request = embed(layers=(-1, 6, 0), pooling=(Pooling.MEAN, Pooling.MAX), normalize=True)
    result = await engine.embed(request)
    assert result.model_version == f"{MINILM}@{engine.registry.serving(MINILM).version}"  # type: ignore[union-attr]
    assert list(result.embeddings) == [6, 0]  # -1 is layer 6: asked twice, answered once
    for vectors in result.embeddings.values():
        assert list(vectors) == [Pooling.MEAN, Pooling.MAX]
        for vector in vectors.values():
            assert vector.shape == (384,) and np.isclose(np.linalg.norm(vector), 1.0)
    assert not np.allclose(result.embeddings[6][Pooling.MEAN], result.embeddings[6][Pooling.MAX])
    assert result.num_tokens_prompt_total == 6  # [CLS] an apple a day [SEP]
    assert sample(engine, "lamina_prompt_tokens_sum", model=MINILM) == 6


async def test_the_same_prompt_gets_the_same_vector_alone_and_in_company(engine: Engine) -> None:
    alone = await engine.embed(embed())
    together = await asyncio.gather(
        engine.embed(embed()), engine.embed(embed(prompt=(TextItem("longer " * 20),)))
    )
    np.testing.assert_allclose(
        alone.embeddings[6][Pooling.MEAN], together[0].embeddings[6][Pooling.MEAN], atol=1e-6
    )


@pytest.mark.parametrize(
    ("chars", "pixels", "spreading", "cost"),
    [
        (LIGHT_CHARS, 0, False, Cost.LIGHT),
        (LIGHT_CHARS + 1, 0, False, Cost.NORMAL),
        (10, 1, False, Cost.NORMAL),  # any image is decoded off the loop
        (10, 0, True, Cost.HEAVY),
        (HEAVY_TEXT_CHARS + 1, 0, False, Cost.HEAVY),
        (10, HEAVY_PIXELS + 1, False, Cost.HEAVY),
    ],
)
def test_where_a_prompt_is_prepared(chars: int, pixels: int, spreading: bool, cost: Cost) -> None:
    assert Cost.of(chars, pixels, spreading) is cost


async def test_a_prompt_counts_as_preparing_until_it_is_queued(engine: Engine) -> None:
    """What a pool waits for company on: counted from arrival until admission, then not."""
    long_text = "an apple a day " * 100  # past LIGHT_CHARS: prepared on the CPU executor
    task = asyncio.ensure_future(engine.embed(embed(prompt=(TextItem(long_text),))))
    await asyncio.sleep(0)
    assert engine.queue.preparing == 1
    await task
    assert engine.queue.preparing == 0
    # A short prompt is prepared on the loop: it is queued before the caller first yields.
    task = asyncio.ensure_future(engine.embed(embed()))
    await asyncio.sleep(0)
    assert engine.queue.preparing == 0 and (len(engine.queue) == 1 or task.done())
    await task
    # A prompt that fails to prepare (a token id out of the vocabulary) is counted out too.
    with pytest.raises(InvalidArgument):
        await engine.embed(embed(prompt=(TokenIdsItem((10**9,) * 2000),)))
    assert engine.queue.preparing == 0


async def test_an_unknown_model_names_the_served_ones(engine: Engine) -> None:
    with pytest.raises(ModelNotFound) as error:
        await engine.embed(embed(model="nope"))
    assert error.value.message == f"model: unknown model 'nope'; available: {MINILM}, {DINOV2}"
    assert "nope" not in engine and MINILM in engine


@pytest.mark.parametrize(
    ("fields", "path", "says"),
    [
        ({"layers": ()}, ("layers",), "at least one layer"),
        ({"pooling": ()}, ("pooling",), "at least one pooling"),
        ({"layers": (0, 7)}, ("layers", 1), "7"),
        (
            {"prompt": (TokenIdsItem((1, 10**6)),)},
            ("prompt", 0, "token_ids", "data", 1),
            "outside the vocabulary",
        ),
    ],
)
async def test_bad_fields_are_named_by_their_domain_path(
    engine: Engine, fields: dict[str, object], path: tuple[object, ...], says: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        await engine.embed(embed(**fields))
    assert error.value.field == path and says in error.value.problem


async def test_a_hosting_no_pool_carries_fails_at_once(engine: Engine) -> None:
    with pytest.raises(HostingUnavailable):
        await engine.embed(embed(hosting="aleph-alpha"))
    assert engine.queue.depth(0.0) == {}


async def test_a_batch_prompts_error_is_named_under_its_prompt(engine: Engine) -> None:
    request = SemanticEmbedRequest(
        model=MINILM,
        prompts=((TextItem("fine"),), (TextItem("fine"), TokenIdsItem((10**6,)))),
        representation=Representation.QUERY,
        batch=True,
    )
    with pytest.raises(InvalidArgument) as error:
        await engine.semantic_embed(request)
    assert error.value.field == ("prompts", 1, 1, "token_ids", "data", 0)


async def test_semantic_embed_asks_for_a_model_with_a_semantic_configuration(
    minilm: LoadedModel,
) -> None:
    plain = replace(minilm, name="plain", manifest=replace(minilm.manifest, semantic=None))
    engine = make_engine(FakeRegistry(*on_pool(minilm, plain)))
    request = SemanticEmbedRequest(
        model="plain", prompts=((TextItem("x"),),), representation=Representation.QUERY
    )
    try:
        with pytest.raises(InvalidArgument) as error:
            await engine.semantic_embed(request)
        assert error.value.field == ("model",)
        assert error.value.problem.endswith(f"models with one: {MINILM}")
    finally:
        await engine.close()


async def test_a_full_queue_refuses_with_a_retry_hint(minilm: LoadedModel) -> None:
    engine = make_engine(FakeRegistry(*on_pool(minilm)), SchedulingPolicy(max_queue_requests=0))
    try:
        with pytest.raises(QueueFull) as error:
            await engine.embed(embed())
        assert error.value.retry_after_seconds is not None
        assert error.value.retry_after_seconds >= 0.1
    finally:
        await engine.close()


async def test_a_non_finite_vector_is_never_answered(minilm: LoadedModel) -> None:
    engine = make_engine(FakeRegistry(PoisonedVersion({POOL.name: minilm})))
    try:
        with pytest.raises(NonFiniteResult, match="layer 6"):
            await engine.embed(embed())
        assert sample(engine, "lamina_nonfinite_results_total", model=MINILM) == 1
    finally:
        await engine.close()


async def test_refresh_counts_what_newly_serves_and_models_describe_it(
    minilm: LoadedModel, dinov2: LoadedModel
) -> None:
    registry = FakeRegistry(*on_pool(minilm))
    engine = make_engine(registry)
    try:
        assert [m.name for m in engine.models()] == [MINILM]
        registry.arriving = on_pool(dinov2)
        registry.failed = [ModelVersionState("broken", 1, VersionState.FAILED, "ValueError: x")]
        await engine.refresh()
        assert sample(engine, "lamina_model_version", model=DINOV2) == dinov2.version
        described = {m.name: m for m in engine.models()}
        assert sorted(described) == [MINILM, DINOV2]
        assert described[DINOV2].image_support and not described[MINILM].image_support
        assert described[MINILM].versions == (
            ModelVersionState(MINILM, minilm.version, VersionState.SERVING, None),
        )
        # A model with no serving version is reported too, with why.
        assert engine.version_states() == registry.states()
        assert [s.model for s in engine.version_states()] == [MINILM, "broken", DINOV2]
    finally:
        await engine.close()


async def test_tokenize_detokenize_and_the_tokenizer_file(engine: Engine) -> None:
    pieces, ids = await engine.tokenize(MINILM, "An apple")
    assert pieces == ["an", "apple"]
    assert await engine.detokenize(MINILM, ids) == "an apple"
    text = await engine.tokenizer_json(MINILM)
    assert text is not None and '"WordPiece"' in text
    assert await engine.tokenizer_json(DINOV2) is None  # an image encoder has none
