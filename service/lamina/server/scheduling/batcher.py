"""Choosing which queued jobs run together: a token budget over the padded batch."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lamina.server.scheduling.job import Job


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_tokens: int = 16384  # rows x padded length of one graph run
    max_batch_rows: int = 64
    max_wait_seconds: float = 0.002  # how long a partial batch waits for company


def take_batch(queue: deque[Job], policy: BatchPolicy) -> list[Job]:
    """Pop jobs from the front, first come first served, while rows x longest fits the budget.

    The first job always runs, even alone over budget: it was admitted, so it must be served.
    """
    batch: list[Job] = []
    longest = 0
    while queue and len(batch) < policy.max_batch_rows:
        job = queue[0]
        if job.abandoned:
            queue.popleft()
            continue
        widest = max(longest, job.prompt.length)
        if batch and widest * (len(batch) + 1) > policy.max_batch_tokens:
            break
        batch.append(queue.popleft())
        longest = widest
    return batch
