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


class RunningBatch(Protocol):
    """A batch started on a pool, run segment by segment on the pool's thread; between segments
    the pool may park it and run more urgent work."""

    def advance(self, seconds: float | None) -> bool:
        """Run about `seconds` more (None: to the end); True once nothing is left to run."""
        ...

    @property
    def held_bytes(self) -> int:
        """The memory it holds between segments (inputs, state, layers returned so far)."""
        ...

    def results(self) -> list[Embeddings]:
        """Each job's embeddings, in order, once finished."""
        ...


class BatchModel(Protocol):
    """A model version as the scheduler sees it: batches hold the jobs of one (compared by
    identity), metrics name it, and a pool's thread runs a batch of its jobs through it."""

    @property
    def name(self) -> str: ...

    def start_batch(self, pool: str, jobs: Sequence[Job]) -> RunningBatch: ...

    def block_seconds(self, pool: str, positions: int) -> float | None:
        """What one block over `positions` padded positions takes on `pool`, as measured;
        None before anything ran there."""
        ...


@dataclass(frozen=True)
class JobResult:
    embeddings: Embeddings
    queue_seconds: float  # until its batch first ran
    inference_seconds: float  # running, parked time not counted
    pool: str
    parked_seconds: float = 0.0  # its batch parked between segments while other work ran
    pooling_seconds: float = 0.0  # the batch's results (pooling) after its last segment


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
