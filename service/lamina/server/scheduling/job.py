"""One request's unit of work inside the scheduler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from lamina.server.domain import Pooling
from lamina.server.prompt import EncodedPrompt

Embeddings = dict[int, dict[Pooling, np.ndarray]]


@dataclass(frozen=True)
class JobResult:
    embeddings: Embeddings
    queue_seconds: float
    inference_seconds: float
    batch_rows: int


@dataclass(eq=False)
class Job:
    prompt: EncodedPrompt
    layers: tuple[int, ...]  # absolute indices
    pooling: tuple[Pooling, ...]
    normalize: bool
    control_log_additive: bool
    future: asyncio.Future[JobResult]
    enqueued_at: float

    @property
    def abandoned(self) -> bool:
        """The caller went away (cancelled) before the job ran: it costs no compute."""
        return self.future.done()
