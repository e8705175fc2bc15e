"""One request's unit of work inside the scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lamina.server.domain import Pooling
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.memory import NO_ESTIMATE, BatchMemory

Embeddings = dict[int, dict[Pooling, np.ndarray]]


class BatchModel(Protocol):
    """A model version as the scheduler sees it: batches hold the jobs of one (compared by
    identity), metrics name it, and a pool's thread runs a batch of its jobs through it."""

    @property
    def name(self) -> str: ...

    def run_batch(self, pool: str, jobs: Sequence[Job]) -> list[Embeddings]: ...


@dataclass(frozen=True)
class JobResult:
    embeddings: Embeddings
    queue_seconds: float
    inference_seconds: float
    pool: str


@dataclass(eq=False)
class Job:
    model: BatchModel
    prompt: EncodedPrompt
    layers: tuple[int, ...]  # absolute indices
    pooling: tuple[Pooling, ...]
    normalize: bool
    control_log_additive: bool
    nice: bool
    hosting: str | None  # None: any pool; else only pools carrying this label
    enqueued_at: float
    deadline: float | None  # on the scheduler's clock
    future: asyncio.Future[JobResult]
    memory: BatchMemory = NO_ESTIMATE  # its model's (the session's estimate)

    @property
    def tokens(self) -> int:
        return self.prompt.length

    @property
    def abandoned(self) -> bool:
        """The caller went away (cancelled, or answered) before the job ran: it costs no compute."""
        return self.future.done()
