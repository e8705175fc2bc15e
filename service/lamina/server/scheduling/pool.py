"""Worker pools: each a device with its hosting labels, taking batches from the shared queue.

A pool runs one batch at a time on its own inference thread (ONNX Runtime spreads that run over
the pool's threads). Its loop only coordinates: it asks the queue for the most urgent eligible
batch, runs it off the event loop, and answers each request's future.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from lamina.server.errors import DeadlineExceeded
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import Embeddings, Job, JobResult
from lamina.server.scheduling.queue import RequestQueue

log = logging.getLogger(__name__)


RunBatch = Callable[[PoolSpec, Sequence[Job]], list[Embeddings]]


def run_on_model(pool: PoolSpec, jobs: Sequence[Job]) -> list[Embeddings]:
    """The pools' way to run a batch: through the one model version its jobs share."""
    return jobs[0].model.run_batch(pool.name, jobs)


BatchObserver = Callable[[PoolSpec, Sequence[Job], float], None]


class PoolRunner:
    def __init__(
        self,
        spec: PoolSpec,
        queue: RequestQueue,
        run_batch: RunBatch,
        executor: Executor,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.spec = spec
        self._queue = queue
        self._run_batch = run_batch
        self._executor = executor
        self._clock = clock
        self._on_batch = on_batch
        self._arrived = asyncio.Event()
        self._closing = False

    def notify(self) -> None:
        """Work arrived (or the queue changed): look again."""
        self._arrived.set()

    def close(self) -> None:
        """Stop once nothing this pool may run is queued."""
        self._closing = True
        self._arrived.set()

    async def run(self) -> None:
        while True:
            self._arrived.clear()
            now = self._clock()
            for job in self._queue.remove_gone(now):
                job.future.set_exception(DeadlineExceeded(now - job.enqueued_at))
            pick = self._queue.next_batch(self.spec.hostings, now)
            if isinstance(pick, list):
                await self._execute(pick)
                continue
            if pick is None and self._closing:
                return
            timeout = None if pick is None else max(0.0, pick.when - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)

    async def _execute(self, jobs: list[Job]) -> None:
        started = self._clock()
        loop = asyncio.get_running_loop()

        def work() -> tuple[list[Job], list[Job], list[Embeddings]]:
            # Checked again on the pool's thread, which may have been busy since the pick: a
            # caller gone or out of time by now costs no compute.
            now = self._clock()
            expired = [j for j in jobs if j.deadline is not None and j.deadline <= now]
            live = [j for j in jobs if not j.abandoned and j not in expired]
            return live, expired, (self._run_batch(self.spec, live) if live else [])

        try:
            live, expired, results = await loop.run_in_executor(self._executor, work)
        except Exception as error:  # a failed batch fails its requests, not the pool
            log.exception("batch of %d on pool %s failed", len(jobs), self.spec.name)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        for job in expired:
            if not job.future.done():
                job.future.set_exception(DeadlineExceeded(started - job.enqueued_at))
        elapsed = self._clock() - started
        if live and self._on_batch is not None:
            self._on_batch(self.spec, live, elapsed)
        for job, embeddings in zip(live, results, strict=True):
            # A caller that is gone (cancelled, deadline) has a done future: its reply is dropped.
            if not job.future.done():
                result = JobResult(embeddings, started - job.enqueued_at, elapsed, self.spec.name)
                job.future.set_result(result)
