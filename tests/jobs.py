"""Building scheduler jobs in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from lamina.server.domain import Pooling
from lamina.server.prompt import EncodedPrompt
from lamina.server.scheduling.job import BatchModel, Embeddings, Job


class NamedModel:
    """A model version as the queue sees one: an identity with a name. Pools in these tests run
    batches through a function of their own, never through the model."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run_batch(self, pool: str, jobs: Sequence[Job]) -> list[Embeddings]:
        raise AssertionError(f"{self.name}: the test's pool runs batches, not the model")


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
