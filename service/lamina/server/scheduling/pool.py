"""Worker pools: each a device with its hosting labels, taking batches from the shared queue.

A pool runs one batch at a time on its own inference thread (ONNX Runtime spreads that run over
the pool's threads). Its loop only coordinates: it asks the queue for the most urgent eligible
batch, runs it off the event loop segment by segment, and answers each request's future.

Yielding (policy.segment_seconds > 0): between two segments the loop looks at what else the pool
could run, and parks the batch (its state kept, to resume on this pool only) when
- a queued request, or a batch parked here, is more urgent: of a better tier (normal over nice),
  or older in the same one (nice work that waited its bound counts as normal from its arrival,
  so it goes before the normal work that came after it);
- or the batch has run `long_batch_seconds` and a request of its own tier is queued. It then
  goes behind its tier's queued work, as if it had arrived when it parked: a very long batch
  takes turns of one segment with the requests that queue behind it.
At most `max_parked_batches` are parked per pool; with as many, the running batch runs on, so a
turn never takes the last place (it stays free for more urgent work). A free
pool resumes the most urgent parked batch when it is more urgent than all queued work (a batch
that yielded goes behind what it yielded to). A parked batch whose callers are all gone is
dropped; closing the pool finishes the others first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from lamina.server.errors import DeadlineExceeded
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import Embeddings, Job, JobResult, RunningBatch
from lamina.server.scheduling.queue import NICE, RequestQueue, Urgency

log = logging.getLogger(__name__)


StartBatch = Callable[[PoolSpec, Sequence[Job]], RunningBatch]


def start_on_model(pool: PoolSpec, jobs: Sequence[Job]) -> RunningBatch:
    """The pools' way to start a batch: through the one model version its jobs share."""
    return jobs[0].model.start_batch(pool.name, jobs)


class PoolObserver(Protocol):
    """What a pool reports (the engine turns it into metrics)."""

    def batch_ran(self, pool: PoolSpec, jobs: Sequence[Job], seconds: float) -> None: ...

    def segment_ran(self, pool: PoolSpec, model: str, seconds: float) -> None: ...

    def preempted(self, pool: PoolSpec, model: str) -> None: ...

    def parked(self, pool: PoolSpec, held: Mapping[str, tuple[int, int]]) -> None:
        """Now parked on `pool`, by model: (batches, bytes held)."""
        ...


class Unobserved:
    def batch_ran(self, pool: PoolSpec, jobs: Sequence[Job], seconds: float) -> None:
        pass

    def segment_ran(self, pool: PoolSpec, model: str, seconds: float) -> None:
        pass

    def preempted(self, pool: PoolSpec, model: str) -> None:
        pass

    def parked(self, pool: PoolSpec, held: Mapping[str, tuple[int, int]]) -> None:
        pass


class Yield(Enum):
    URGENT = "urgent"  # more urgent work waits
    TURN = "turn"  # a long batch lets its tier's queued work take a turn


@dataclass(eq=False)
class Active:
    """A batch the pool started: running, or parked between two of its segments."""

    jobs: list[Job]  # the live ones, once started
    run: RunningBatch | None  # None until the pool's thread starts it
    started: float
    ran_seconds: float = 0.0
    parked_seconds: float = 0.0
    pooling_seconds: float = 0.0  # its results, once its last segment ran
    parked_at: float | None = None
    # Set when it yielded to queued work of its own tier: it ranks as if it arrived then.
    requeued_at: float | None = None

    @property
    def model(self) -> str:
        return self.jobs[0].model.name

    @property
    def gone(self) -> bool:
        return all(job.abandoned for job in self.jobs)

    @property
    def held_bytes(self) -> int:
        return 0 if self.run is None else self.run.held_bytes


class PoolRunner:
    def __init__(
        self,
        spec: PoolSpec,
        queue: RequestQueue,
        start_batch: StartBatch,
        executor: Executor,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: PoolObserver | None = None,
    ) -> None:
        self.spec = spec
        self._queue = queue
        self._policy = queue.policy
        self._start_batch = start_batch
        self._executor = executor
        self._clock = clock
        self._observer = observer or Unobserved()
        self._arrived = asyncio.Event()
        self._closing = False
        self._parked: list[Active] = []
        self._running: Active | None = None
        self._running_since = 0.0  # when its segments now on the thread began
        # Set on the loop, read on the pool's thread between segments: return to the loop now,
        # or once the clock passes `_stop_at`.
        self._stop_asked = threading.Event()
        self._stop_at: float | None = None

    def notify(self) -> None:
        """Work arrived (or the queue changed): look again, and have the running batch stop at
        its next segment boundary if what arrived goes before it."""
        self._arrived.set()
        running = self._running
        if running is None or self._stop_asked.is_set():
            return
        if self._yield_reason(running) is not None:
            self._stop_asked.set()
        else:  # a nice arrival may age past the running batch before it ends
            self._stop_at = self._next_change(running)

    def close(self) -> None:
        """Stop once nothing this pool may run is queued or parked."""
        self._closing = True
        self._arrived.set()

    @property
    def parked(self) -> tuple[Active, ...]:
        return tuple(self._parked)

    @property
    def running(self) -> Active | None:
        """The batch whose segments run on the pool's thread now."""
        return self._running

    async def run(self) -> None:
        while True:
            self._arrived.clear()
            now = self._clock()
            for job in self._queue.remove_gone(now):
                job.future.set_exception(DeadlineExceeded(now - job.enqueued_at))
            self._drop_gone()
            parked = self._most_urgent_parked(now)
            queued = self._queue.most_urgent(self.spec.hostings, now)
            # Strictly more urgent: a batch that yielded goes behind what it yielded to.
            if parked is not None and (queued is None or self._urgency(parked, now) < queued):
                await self._resume(parked)
                continue
            pick = self._queue.next_batch(
                self.spec.hostings, now, self.spec.name, self._parked_bytes()
            )
            if isinstance(pick, list):
                await self._start(pick)
                continue
            if parked is not None:  # the queued batch is still filling: use the time
                await self._resume(parked)
                continue
            if pick is None and self._closing:
                return
            timeout = None if pick is None else max(0.0, pick.when - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)

    async def _start(self, jobs: list[Job]) -> None:
        await self._execute(Active(jobs, None, self._clock()))

    async def _resume(self, active: Active) -> None:
        self._parked.remove(active)
        assert active.parked_at is not None
        active.parked_seconds += self._clock() - active.parked_at
        active.parked_at = None
        self._report_parked()
        await self._execute(active)

    async def _execute(self, active: Active) -> None:
        """Start (on the first call) and run segments until the batch finishes, its callers are
        gone, or it yields.

        The pool's thread runs segment after segment without coming back to the loop (a hop
        costs more than the check) until the loop asks it to stop (`notify`: an arrival that goes
        first) or the time comes when queued or parked work would age past it (`_next_change`);
        then the loop decides, and parks the batch or sends it on. The batch counts as running
        from before it starts, so an arrival during the start is seen too."""
        loop = asyncio.get_running_loop()
        yielding = self._policy.segment_seconds > 0
        seconds: float | None = None
        durations: list[float] = []
        expired: list[Job] = []

        def segments() -> list[Embeddings] | None:
            if active.run is None:
                # Checked again on the pool's thread, which may have been busy since the pick:
                # a caller gone or out of time by now costs no compute.
                now = self._clock()
                expired.extend(
                    j for j in active.jobs if j.deadline is not None and j.deadline <= now
                )
                active.jobs = [j for j in active.jobs if not j.abandoned and j not in expired]
                if not active.jobs:
                    return None
                active.run = self._start_batch(self.spec, active.jobs)
                if self._stop_asked.is_set():
                    return None
            while True:
                began = self._clock()
                finished = active.run.advance(seconds)
                durations.append(self._clock() - began)
                if finished:
                    pooling_from = self._clock()
                    results = active.run.results()
                    active.pooling_seconds = self._clock() - pooling_from
                    return results
                if self._stop_asked.is_set() or active.gone:
                    return None
                stop_at = self._stop_at
                if stop_at is not None and self._clock() >= stop_at:
                    return None

        while True:
            self._stop_asked.clear()
            self._running, self._running_since = active, self._clock()
            self._stop_at = self._next_change(active) if yielding else None
            seconds = self._segment_seconds(active) if yielding else None
            try:
                results = await loop.run_in_executor(self._executor, segments)
            except Exception as error:
                self._fail(active.jobs, error)
                return
            finally:
                self._running = None
                for took in durations:
                    active.ran_seconds += took
                    self._observer.segment_ran(self.spec, active.model, took)
                durations.clear()
                for job in expired:
                    if not job.future.done():
                        job.future.set_exception(DeadlineExceeded(active.started - job.enqueued_at))
                expired.clear()
            if results is not None:
                self._answer(active, results)
                return
            if not active.jobs or active.gone:  # every caller left: nothing to compute for
                return
            reason = self._yield_reason(active)
            if reason is not None:
                self._park(active, reason)
                return

    def _segment_seconds(self, active: Active) -> float:
        """How long each segment of the next dispatch runs. A nice batch, or a long one taking
        turns, yields to arrivals, which come at any time: short segments (a nice batch's the
        shortest while normal requests keep arriving, `nice_segment_seconds`; alone, long ones,
        `nice_alone_segment_seconds`: nobody to yield to but a first arrival). A normal one yields
        only to what ages past it, at `_stop_at`: one segment up to then, since every segment
        costs a session call and a hop for the GIL (on SmolLM2's 2 x 128 batches, 1-block
        segments ran 15% slower than whole runs)."""
        p, now = self._policy, self._clock()
        short = p.segment_seconds
        tier, _ = self._urgency(active, now)
        if tier == NICE:
            if self._queue.contended(self.spec.hostings, now):
                return min(short, p.nice_segment_seconds)
            return max(short, p.nice_alone_segment_seconds)
        if self._ran(active, now) >= p.long_batch_seconds:
            return short
        return short if self._stop_at is None else max(short, self._stop_at - now)

    def _next_change(self, active: Active) -> float | None:
        """The earliest time the decision to yield could change with no arrival: a nice job
        queued or parked reaching its bound, or the batch becoming long."""
        bound = self._policy.nice_max_wait_seconds
        waiting = [
            job.enqueued_at + bound
            for job in self._queue.eligible(self.spec.hostings)
            + [job for parked in self._parked for job in parked.jobs]
            if job.nice
        ]
        now = self._clock()
        long_at = now + self._policy.long_batch_seconds - self._ran(active, now)
        return min((t for t in (*waiting, long_at) if t > now), default=None)

    def _ran(self, active: Active, now: float) -> float:
        """How long `active` has run, its segments on the thread now included."""
        if active is self._running:
            return active.ran_seconds + now - self._running_since
        return active.ran_seconds

    def _yield_reason(self, active: Active) -> Yield | None:
        now = self._clock()
        mine = self._urgency(active, now)
        parked = self._most_urgent_parked(now)
        if parked is not None and self._urgency(parked, now) < mine:
            return Yield.URGENT  # a swap: as many stay parked
        if len(self._parked) >= self._policy.max_parked_batches:
            return None
        queued = self._queue.most_urgent(self.spec.hostings, now)
        if queued is None:
            return None
        # More urgent: a better tier, or older in the same one (nice work past its bound, which
        # counts as normal from when it arrived).
        if queued < mine:
            return Yield.URGENT
        long = self._ran(active, now) >= self._policy.long_batch_seconds
        # A turn never takes the last parking place: with every place taken by turns, the batch
        # running would run on past a normal arrival, for as long as it has left.
        last_place = len(self._parked) + 1 >= self._policy.max_parked_batches > 1
        if long and queued[0] == mine[0] and not last_place:
            return Yield.TURN
        return None

    def _park(self, active: Active, reason: Yield) -> None:
        if reason is Yield.TURN:
            active.requeued_at = self._clock()
        active.parked_at = self._clock()
        self._parked.append(active)
        self._observer.preempted(self.spec, active.model)
        self._report_parked()

    def _answer(self, active: Active, results: list[Embeddings]) -> None:
        self._observer.batch_ran(self.spec, active.jobs, active.ran_seconds)
        for job, embeddings in zip(active.jobs, results, strict=True):
            # A caller that is gone (cancelled, deadline) has a done future: its reply is dropped.
            if not job.future.done():
                job.future.set_result(
                    JobResult(
                        embeddings,
                        queue_seconds=active.started - job.enqueued_at,
                        inference_seconds=active.ran_seconds,
                        pool=self.spec.name,
                        parked_seconds=active.parked_seconds,
                        pooling_seconds=active.pooling_seconds,
                    )
                )

    def _fail(self, jobs: Sequence[Job], error: Exception) -> None:
        """A failed batch fails its requests, not the pool."""
        log.exception("batch of %d on pool %s failed", len(jobs), self.spec.name, exc_info=error)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _urgency(self, active: Active, now: float) -> Urgency:
        # The pool's thread may empty `jobs` as it starts the batch (all callers gone): such a
        # batch is the least urgent, never a reason to fail the arrival that asked.
        jobs = active.jobs
        live = [job for job in jobs if not job.abandoned] or jobs
        if not live:
            return NICE + 1, float("inf")
        tier, arrived = min(self._queue.urgency(job, now) for job in live)
        return tier, arrived if active.requeued_at is None else active.requeued_at

    def _most_urgent_parked(self, now: float) -> Active | None:
        return min(self._parked, key=lambda a: self._urgency(a, now), default=None)

    def _parked_bytes(self) -> int:
        return sum(active.held_bytes for active in self._parked)

    def _drop_gone(self) -> None:
        gone = [active for active in self._parked if active.gone]
        if gone:
            self._parked = [active for active in self._parked if not active.gone]
            self._report_parked()

    def _report_parked(self) -> None:
        held: dict[str, tuple[int, int]] = {}
        for active in self._parked:
            batches, size = held.get(active.model, (0, 0))
            held[active.model] = (batches + 1, size + active.held_bytes)
        self._observer.parked(self.spec, held)
