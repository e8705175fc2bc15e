"""Building scheduler jobs in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from lamina.server.domain import Pooling
from lamina.server.models.inference import BatchRun
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import BatchModel, Embeddings, Job, RunningBatch
from lamina.server.scheduling.pool import StartBatch


class NamedModel:
    """A model version as the queue sees one: an identity with a name, and the time one block
    takes per padded position (None: not measured). Pools in these tests start batches through a
    function of their own, never through the model."""

    def __init__(self, name: str, block_seconds_per_position: float | None = None) -> None:
        self.name = name
        self.per_position = block_seconds_per_position

    def start_batch(self, pool: str, jobs: Sequence[Job]) -> RunningBatch:
        raise AssertionError(f"{self.name}: the test's pool starts batches, not the model")

    def block_seconds(self, pool: str, positions: int) -> float | None:
        return None if self.per_position is None else self.per_position * positions


class Finished:
    """A batch computed whole when it started: its one segment has nothing left to run."""

    def __init__(self, results: list[Embeddings]) -> None:
        self._results = results

    def advance(self, seconds: float | None) -> bool:
        return True

    @property
    def held_bytes(self) -> int:
        return 0

    def results(self) -> list[Embeddings]:
        return self._results


class PoisonedRun(BatchRun):
    """A real batch whose vectors come out NaN, as a broken graph's would (fault injection)."""

    def results(self) -> list[Embeddings]:
        results = super().results()
        for embeddings in results:
            for vectors in embeddings.values():
                for pooling in vectors:
                    vectors[pooling] = np.full_like(vectors[pooling], np.nan)
        return results


def whole(run: Callable[[PoolSpec, Sequence[Job]], list[Embeddings]]) -> StartBatch:
    """A pool's way to start batches from a function that computes one whole."""
    return lambda pool, jobs: Finished(run(pool, jobs))


DEFAULT_MODEL = NamedModel("default")


def prompt_of(length: int) -> EncodedPrompt:
    return EncodedPrompt(
        np.arange(1000, 1000 + length, dtype=np.int64), np.ones(length, np.float32)
    )


def make_job(
    loop: asyncio.AbstractEventLoop,
    *,
    prompt: EncodedPrompt | None = None,
    length: int = 4,
    layers: tuple[int, ...] = (1,),
    pooling: tuple[Pooling, ...] = (Pooling.MEAN,),
    model: BatchModel = DEFAULT_MODEL,
    nice: bool = False,
    hosting: str | None = None,
    at: float = 0.0,
    deadline: float | None = None,
) -> Job:
    return Job(
        model=model,
        prompt=prompt or prompt_of(length),
        layers=layers,
        pooling=pooling,
        normalize=False,
        control_log_additive=True,
        nice=nice,
        hosting=hosting,
        enqueued_at=at,
        deadline=deadline,
        future=loop.create_future(),
    )
