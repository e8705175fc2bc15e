"""One model's queue and the loop that drains it into batches on an inference thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from lamina.server.errors import Unavailable
from lamina.server.scheduling.batcher import BatchPolicy, take_batch
from lamina.server.scheduling.job import Embeddings, Job, JobResult

log = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[Job]], list[Embeddings]]
BatchObserver = Callable[[Sequence[Job], float], None]


class ModelWorker:
    """Batches run one at a time: ONNX Runtime already spreads one run over every core."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        executor: Executor,
        policy: BatchPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._executor = executor
        self._policy = policy
        self._clock = clock
        self._on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"worker:{self.name}")

    def submit(self, job: Job) -> None:
        if self._closing:
            raise Unavailable(f"model {self.name!r} is shutting down")
        self._queue.append(job)
        self._arrived.set()

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_company()
            jobs = take_batch(self._queue, self._policy)
            if jobs:
                await self._execute(jobs)

    async def _wait_for_company(self) -> None:
        """A short pause while the batch is small, so concurrent requests share a run."""
        deadline = self._clock() + self._policy.max_wait_seconds
        while len(self._queue) < self._policy.max_batch_rows and not self._closing:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _execute(self, jobs: list[Job]) -> None:
        started = self._clock()
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, jobs)
        except Exception as error:  # a failed batch fails its requests, not the loop
            log.exception("batch of %d on %s failed", len(jobs), self.name)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        elapsed = self._clock() - started
        if self._on_batch is not None:
            self._on_batch(jobs, elapsed)
        for job, embeddings in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(
                    JobResult(embeddings, started - job.enqueued_at, elapsed, len(jobs))
                )
