"""Yielding between segments, as units: the pool loop over a fake clock, with batches that run a
given number of segments and log each one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from lamina.server.domain import Pooling
from lamina.server.runtime.device import PoolSpec
from lamina.server.runtime.memory import BatchMemory
from lamina.server.scheduling.job import Embeddings, Job, JobResult
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.scheduling.pool import Active, PoolRunner
from lamina.server.scheduling.queue import RequestQueue
from tests.jobs import NamedModel, make_job
from tests.server.test_scheduler import ANYWHERE, OURS, FakeClock, InlineExecutor

SEGMENT = 0.01  # fake seconds each segment takes
MODEL = NamedModel("m")


@dataclass
class Segments:
    """A batch that takes `count` segments (the longest of its jobs' lengths), each logged as
    (label, segment number, pool) for each of its jobs; `hooks` run after the n-th segment of the
    whole test."""

    harness: Harness
    jobs: Sequence[Job]
    pool: str
    count: int
    done: int = 0

    def advance(self, seconds: float | None) -> bool:
        h = self.harness
        h.asked.append(seconds)
        steps = self.count - self.done if seconds is None else 1
        for _ in range(steps):
            h.clock.now += SEGMENT
            self.done += 1
            h.log += [(h.labels[id(job)], self.done, self.pool) for job in self.jobs]
            h.segments += 1
            hook = h.hooks.pop(h.segments, None)
            if hook is not None:
                hook()
        return self.done >= self.count

    @property
    def held_bytes(self) -> int:
        return 1000 * len(self.jobs)

    def results(self) -> list[Embeddings]:
        return [{1: {Pooling.MEAN: np.array([float(job.tokens)])}} for job in self.jobs]


@dataclass
class Seen:
    preemptions: list[str] = field(default_factory=list)
    parked_reports: list[dict[str, tuple[int, int]]] = field(default_factory=list)

    def batch_ran(self, pool: PoolSpec, jobs: Sequence[Job], seconds: float) -> None:
        pass

    def segment_ran(self, pool: PoolSpec, model: str, seconds: float) -> None:
        pass

    def preempted(self, pool: PoolSpec, model: str) -> None:
        self.preemptions.append(pool.name)

    def parked(self, pool: PoolSpec, held: Mapping[str, tuple[int, int]]) -> None:
        self.parked_reports.append(dict(held))


class Harness:
    def __init__(
        self,
        policy: SchedulingPolicy,
        pools: Sequence[PoolSpec] = (PoolSpec("p", "cpu", 1, ANYWHERE),),
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.clock = FakeClock()
        self.queue = RequestQueue(policy)
        self.log: list[tuple[str, int, str]] = []
        self.labels: dict[int, str] = {}
        self.hooks: dict[int, Callable[[], None]] = {}
        self.segments = 0
        self.asked: list[float | None] = []  # the segment length each advance was given
        self.seen = Seen()
        self.runners = [
            PoolRunner(
                spec,
                self.queue,
                lambda pool, jobs: Segments(self, jobs, pool.name, max(j.tokens for j in jobs)),
                InlineExecutor(),
                clock=self.clock,
                observer=self.seen,
            )
            for spec in pools
        ]

    def submit(
        self, label: str, segments: int, *, nice: bool = False, hosting: str | None = None
    ) -> Job:
        job = make_job(
            self.loop, length=segments, nice=nice, hosting=hosting, at=self.clock.now, model=MODEL
        )
        self.labels[id(job)] = label
        self.queue.admit(job)
        for runner in self.runners:
            runner.notify()
        return job

    def after(self, segments: int, action: Callable[[], object]) -> None:
        """Run `action` once `segments` segments (of any batch) have run."""
        self.hooks[segments] = lambda: (action(), None)[1]

    async def drain(self) -> None:
        """Run until every arrival due has come and all is answered. A pool closes only after
        the last arrival (as a server drains only once it takes no more requests)."""
        tasks = [asyncio.ensure_future(runner.run()) for runner in self.runners]
        await asyncio.sleep(0)
        while self.hooks and self.busy():
            await asyncio.sleep(0)
        for runner in self.runners:
            runner.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    def busy(self) -> bool:
        """Work is queued, running or parked: more segments, so more arrivals, may come."""
        return len(self.queue) > 0 or any(r.running or r.parked for r in self.runners)

    def order(self) -> list[str]:
        return [f"{label}{n}" for label, n, _ in self.log]


YIELDING = SchedulingPolicy(
    max_wait_seconds=0, max_batch_rows=1, segment_seconds=SEGMENT, long_batch_seconds=100.0
)


async def test_normal_work_arriving_during_a_nice_batch_runs_before_its_next_segment() -> None:
    h = Harness(YIELDING)
    nice = h.submit("A", 5, nice=True)
    normal: list[Job] = []
    h.after(2, lambda: normal.append(h.submit("B", 2)))
    await h.drain()
    assert h.order() == ["A1", "A2", "B1", "B2", "A3", "A4", "A5"]
    parked: JobResult = await nice.future
    assert parked.parked_seconds == pytest.approx(2 * SEGMENT)
    assert parked.inference_seconds == pytest.approx(5 * SEGMENT)  # parked time not counted
    assert (await normal[0].future).queue_seconds == pytest.approx(0)
    assert h.seen.preemptions == ["p"]
    assert h.seen.parked_reports == [{"m": (1, 1000)}, {}]


async def test_without_yielding_a_nice_batch_runs_to_its_end() -> None:
    h = Harness(SchedulingPolicy(max_wait_seconds=0, max_batch_rows=1, segment_seconds=0))
    h.submit("A", 5, nice=True)
    h.after(1, lambda: h.submit("B", 2))
    await h.drain()
    assert h.order() == ["A1", "A2", "A3", "A4", "A5", "B1", "B2"]
    assert h.seen.preemptions == []


async def test_with_the_parking_limit_reached_the_running_batch_runs_on() -> None:
    h = Harness(SchedulingPolicy(max_wait_seconds=0, max_batch_rows=1, max_parked_batches=0))
    h.submit("A", 4, nice=True)
    h.after(1, lambda: h.submit("B", 1))
    await h.drain()
    assert h.order() == ["A1", "A2", "A3", "A4", "B1"]


async def test_the_starvation_bound_holds_within_one_segment() -> None:
    bound = 0.1  # ten segments
    policy = SchedulingPolicy(
        max_wait_seconds=0, max_batch_rows=1, nice_max_wait_seconds=bound, long_batch_seconds=100
    )
    h = Harness(policy)
    h.submit("N", 3)
    nice = h.submit("X", 1, nice=True)
    # A normal flood: each normal request arrives while the one before runs, and is long.
    for n in range(1, 40, 3):
        h.after(n, lambda: h.submit("N", 30))
    await h.drain()
    waited = (await nice.future).queue_seconds
    assert bound <= waited <= bound + SEGMENT + 1e-9
    assert h.order().index("X1") < len(h.log) - 30  # it went before the flood was done


async def test_a_parked_batch_whose_callers_are_gone_is_dropped() -> None:
    h = Harness(YIELDING)
    nice = h.submit("A", 5, nice=True)
    h.after(1, lambda: h.submit("B", 2))
    h.after(2, lambda: nice.future.cancel())  # while it is parked
    await h.drain()
    assert h.order() == ["A1", "B1", "B2"]
    assert h.seen.parked_reports[-1] == {}


async def test_closing_finishes_parked_work_first() -> None:
    h = Harness(YIELDING)
    nice = h.submit("A", 3, nice=True)
    normal: list[Job] = []
    h.after(1, lambda: normal.append(h.submit("B", 2)))
    await h.drain()  # closes at once: A is parked during B, and still finishes
    assert h.order() == ["A1", "B1", "B2", "A2", "A3"]
    assert (await nice.future).embeddings[1][Pooling.MEAN][0] == 3.0
    assert (await normal[0].future).embeddings[1][Pooling.MEAN][0] == 2.0


async def test_a_long_batch_takes_turns_with_requests_of_its_tier() -> None:
    policy = SchedulingPolicy(
        max_wait_seconds=0, max_batch_rows=1, long_batch_seconds=3 * SEGMENT - 1e-9
    )
    h = Harness(policy)
    h.submit("L", 6)
    h.after(1, lambda: h.submit("S", 2))
    h.after(2, lambda: h.submit("T", 1))
    await h.drain()
    # L yields once it has run three segments; after S it goes behind T, which was queued
    # before it yielded, and takes a turn of one segment after each.
    assert h.order() == ["L1", "L2", "L3", "S1", "S2", "T1", "L4", "L5", "L6"]


async def test_a_long_batch_under_a_stream_of_short_requests_still_progresses() -> None:
    policy = SchedulingPolicy(max_wait_seconds=0, max_batch_rows=1, long_batch_seconds=SEGMENT)
    h = Harness(policy)
    long = h.submit("L", 4)
    for n in range(1, 30):
        h.after(n, lambda: h.submit("S", 1))
    await h.drain()
    order = h.order()
    # One segment of L between short requests, never a run of short ones that starves it.
    assert order.index("L4") < 2 * 4 + 2
    assert (await long.future).parked_seconds > 0


@pytest.mark.parametrize("seed", range(150))
async def test_hosting_and_resumption_hold_over_random_interleavings(seed: int) -> None:
    rng = random.Random(seed)
    pools = (PoolSpec("ours", "cpu", 1, OURS), PoolSpec("any", "cpu", 1, ANYWHERE))
    policy = SchedulingPolicy(
        max_wait_seconds=0,
        max_batch_rows=rng.choice([1, 3]),
        nice_max_wait_seconds=rng.choice([0.02, 0.2, 5.0]),
        long_batch_seconds=rng.choice([SEGMENT, 0.05, 100.0]),
        max_parked_batches=rng.choice([0, 1, 2, 4]),
    )
    h = Harness(policy, pools)
    jobs: list[Job] = []

    def arrive() -> None:
        pinned = "aleph-alpha" if rng.random() < 0.4 else None
        label = f"j{len(jobs)}"
        jobs.append(h.submit(label, rng.randint(1, 5), nice=rng.random() < 0.5, hosting=pinned))

    arrive()
    for n in sorted(rng.sample(range(1, 40), 14)):
        h.after(n, arrive)
    await h.drain()
    assert not h.hooks or min(h.hooks) > h.segments  # the rest never came due
    ran_on: dict[str, set[str]] = {}
    for label, _, pool in h.log:
        ran_on.setdefault(label, set()).add(pool)
    for job in jobs:
        result = await job.future
        label = h.labels[id(job)]
        assert len(ran_on[label]) == 1  # a parked batch resumes on its own pool
        if job.hosting is not None:
            assert result.pool == "ours" and ran_on[label] == {"ours"}
    assert all(not runner.parked for runner in h.runners)


async def test_a_batch_is_no_larger_than_one_block_runs_in_a_segment() -> None:
    loop = asyncio.get_running_loop()
    timed = NamedModel("timed", block_seconds_per_position=1e-4)  # 100 positions: 10 ms
    for segment, rows in ((0.025, 2), (0.035, 3), (0.0, 6)):
        q = RequestQueue(SchedulingPolicy(max_wait_seconds=0, segment_seconds=segment))
        for _ in range(6):
            q.admit(make_job(loop, length=100, model=timed, at=1.0))
        batch = q.next_batch(ANYWHERE, 2.0, "p")
        assert isinstance(batch, list) and len(batch) == rows
    # Not measured yet: only the other budgets.
    q = RequestQueue(SchedulingPolicy(max_wait_seconds=0, segment_seconds=0.025))
    new = NamedModel("new")
    for _ in range(6):
        q.admit(make_job(loop, length=100, model=new, at=1.0))
    batch = q.next_batch(ANYWHERE, 2.0, "p")
    assert isinstance(batch, list) and len(batch) == 6


async def test_a_nice_batch_keeps_to_short_segments_while_normal_requests_arrive() -> None:
    h = Harness(
        SchedulingPolicy(
            max_wait_seconds=0,
            max_batch_rows=1,
            segment_seconds=0.025,
            nice_segment_seconds=0.005,
            nice_contended_seconds=1.0,
            nice_alone_segment_seconds=0.2,
            long_batch_seconds=100.0,
        )
    )
    h.submit("A", 4, nice=True)
    h.after(1, lambda: h.submit("B", 1))
    await h.drain()
    assert h.order() == ["A1", "B1", "A2", "A3", "A4"]
    assert h.asked[0] == 0.2  # alone: long segments
    assert h.asked[2:] == [0.005] * 3  # after a normal arrival: the nice segment


async def test_nice_batches_are_small_only_while_normal_requests_arrive_for_their_pool() -> None:
    loop = asyncio.get_running_loop()
    timed = NamedModel("timed", block_seconds_per_position=1e-4)  # a row of 100: 10 ms a block
    policy = SchedulingPolicy(
        max_wait_seconds=0,
        segment_seconds=0.025,
        nice_segment_seconds=0.010,
        nice_contended_seconds=2.0,
    )

    def nice_batch(
        normal_at: float | None, now: float, pool: frozenset[str], *, pin: str | None = None
    ) -> int:
        q = RequestQueue(policy)
        if normal_at is not None:
            q.admit(make_job(loop, length=100, model=timed, at=normal_at, hosting=pin))
            if pin is None or pin in pool:
                first = q.next_batch(pool, now, "p")
                assert isinstance(first, list) and not first[0].nice  # the normal one goes first
        for _ in range(6):
            q.admit(make_job(loop, length=100, model=timed, at=now - 0.1, nice=True))
        batch = q.next_batch(pool, now, "p")
        assert isinstance(batch, list) and all(job.nice for job in batch)
        return len(batch)

    assert nice_batch(None, 10.0, ANYWHERE) == 6  # alone: only the other budgets
    assert nice_batch(9.0, 10.0, ANYWHERE) == 1  # a normal request 1 s ago: 10 ms blocks
    assert nice_batch(7.5, 10.0, ANYWHERE) == 6  # 2.5 s ago: alone again
    # A normal request pinned to our hosting contends only for the pools that carry it.
    assert nice_batch(9.0, 10.0, OURS, pin="aleph-alpha") == 1
    assert nice_batch(9.0, 10.0, ANYWHERE, pin="aleph-alpha") == 6
    # Normal batches keep to one block per segment, contended or not.
    q = RequestQueue(policy)
    for _ in range(6):
        q.admit(make_job(loop, length=100, model=timed, at=1.0))
    batch = q.next_batch(ANYWHERE, 2.0, "p")
    assert isinstance(batch, list) and len(batch) == 2


async def test_parked_memory_counts_against_the_batch_budget() -> None:
    loop = asyncio.get_running_loop()
    memory = BatchMemory(per_position=1000)  # 100 positions: 100,000 bytes a row
    q = RequestQueue(
        SchedulingPolicy(max_wait_seconds=0, max_batch_memory_bytes=400_000, segment_seconds=0)
    )
    jobs = [make_job(loop, length=100, at=1.0) for _ in range(8)]
    for job in jobs:
        job.memory = memory
        q.admit(job)
    first = q.next_batch(ANYWHERE, 2.0, "p")
    assert isinstance(first, list) and len(first) == 4
    second = q.next_batch(ANYWHERE, 2.0, "p", reserved_bytes=250_000)
    assert isinstance(second, list) and len(second) == 1  # the head runs, whatever is parked
    third = q.next_batch(ANYWHERE, 2.0, "p", reserved_bytes=150_000)
    assert isinstance(third, list) and len(third) == 2


class CountingExecutor(InlineExecutor):
    def __init__(self) -> None:
        self.calls = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


async def test_with_nothing_more_urgent_the_thread_runs_segments_without_coming_back() -> None:
    h = Harness(YIELDING)
    counting = CountingExecutor()
    h.runners[0]._executor = counting  # test-only: count the hops to the pool's thread
    h.submit("A", 6, nice=True)
    await h.drain()
    assert h.order() == [f"A{n}" for n in range(1, 7)]
    assert counting.calls == 1  # starting the batch and all six segments: one hop


async def test_nice_work_aging_past_its_bound_stops_the_running_batch_with_no_arrival() -> None:
    bound = 0.05
    policy = SchedulingPolicy(
        max_wait_seconds=0, max_batch_rows=1, nice_max_wait_seconds=bound, long_batch_seconds=100
    )
    h = Harness(policy)
    nice = h.submit("X", 1, nice=True)  # nothing else arrives after these two
    h.clock.now += 0.001
    h.submit("N", 20)  # normal, 20 segments: it goes first
    await h.drain()
    order = h.order()
    # Urgent from its bound on, and older than N: it runs at the first boundary after.
    assert order.index("X1") == round(bound / SEGMENT)
    assert (await nice.future).queue_seconds == pytest.approx(bound, abs=SEGMENT + 1e-9)


async def test_work_arriving_while_a_batch_starts_goes_first() -> None:
    # notify() then finds no batch running to stop: the pool decides before the first segment.
    h = Harness(YIELDING)
    runner = h.runners[0]
    start = runner._start_batch
    arrivals: list[Job] = []

    def starting(pool: PoolSpec, jobs: Sequence[Job]) -> Segments:
        if not arrivals:
            arrivals.append(h.submit("B", 1))
        started = start(pool, jobs)
        assert isinstance(started, Segments)
        return started

    runner._start_batch = starting  # test-only: an arrival during the start
    h.submit("A", 3, nice=True)
    await h.drain()
    assert h.order() == ["B1", "A1", "A2", "A3"]


async def test_a_batch_whose_callers_left_before_it_started_harms_no_arrival() -> None:
    # Its pool's thread empties the batch as it starts; an arrival then asks the pool whether
    # to stop it, and must be admitted as ever (the fuzz suite found this one).
    h = Harness(YIELDING)
    runner = h.runners[0]
    start = runner._start_batch
    arrivals: list[Job] = []
    gone = h.submit("A", 3, nice=True)
    gone.future.cancel()

    def starting(pool: PoolSpec, jobs: Sequence[Job]) -> Segments:
        raise AssertionError("a batch with no caller left is never started")

    runner._start_batch = starting  # test-only
    task = asyncio.ensure_future(runner.run())
    await asyncio.sleep(0)
    runner._running = Active([], None, h.clock.now)  # test-only: the emptied batch, running
    arrivals.append(h.submit("B", 1))  # notify() asks about it
    runner._running = None
    runner._start_batch = start
    runner.close()
    await asyncio.wait_for(task, 5)
    assert (await arrivals[0].future).embeddings[1][Pooling.MEAN][0] == 1.0


async def test_taking_turns_leaves_the_last_parking_place_to_urgent_work() -> None:
    # Long nice batches take turns; with every parking place taken by turns, the one running
    # would run on past a normal arrival. A turn never takes the last place.
    h = Harness(
        SchedulingPolicy(
            max_wait_seconds=0,
            max_batch_rows=1,
            segment_seconds=SEGMENT,
            long_batch_seconds=0.015,  # long after two segments
            max_parked_batches=2,
        )
    )
    for label in "ABC":
        h.submit(label, 6, nice=True)
    h.after(5, lambda: h.submit("D", 1))
    await h.drain()
    order = h.order()
    # A takes its turn behind B and C; B would behind C, but that would take the last place.
    assert order[:5] == ["A1", "A2", "B1", "B2", "B3"]
    assert order[5] == "D1", order  # the segment after it arrived
