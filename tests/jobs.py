"""Building scheduler jobs in tests."""

from __future__ import annotations

import asyncio

import numpy as np

from lamina.server.domain import Pooling
from lamina.server.prompt import EncodedPrompt
from lamina.server.scheduling.job import Job

DEFAULT_MODEL = object()


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
    model: object = DEFAULT_MODEL,
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
