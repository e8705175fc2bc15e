"""The queue and the pool loop as units, with a fake clock (explicit `now`) and a fake executor."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest

from lamina.server.domain import Pooling
from lamina.server.errors import DeadlineExceeded
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import Embeddings, Job
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.scheduling.pool import PoolRunner, Unobserved
from lamina.server.scheduling.queue import AdmissionRefused, RequestQueue, WaitUntil
from tests.jobs import NamedModel, make_job, whole

OURS = frozenset({"aleph-alpha"})
ANYWHERE: frozenset[str] = frozenset()
MODELS = (NamedModel("a"), NamedModel("b"))
POLICY = SchedulingPolicy(max_wait_seconds=0.0, nice_max_wait_seconds=5.0)


def queue_of(policy: SchedulingPolicy = POLICY) -> RequestQueue:
    return RequestQueue(policy)


def lengths(batch: object) -> list[int]:
    assert isinstance(batch, list)
    return [job.tokens for job in batch]


async def test_first_come_first_served_within_a_tier() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_wait_seconds=0, max_batch_rows=1))
    for i, length in enumerate((3, 4, 5)):
        q.admit(make_job(loop, length=length, at=float(i)))
    assert [lengths(q.next_batch(ANYWHERE, 10.0)) for _ in range(3)] == [[3], [4], [5]]
    assert q.next_batch(ANYWHERE, 10.0) is None


async def test_non_nice_goes_before_older_nice() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_wait_seconds=0, max_batch_rows=8))
    q.admit(make_job(loop, length=7, nice=True, at=0.0))
    q.admit(make_job(loop, length=3, at=1.0))
    q.admit(make_job(loop, length=4, at=2.0))
    # Tiers never share a batch: the two non-nice run first, together.
    assert lengths(q.next_batch(ANYWHERE, 2.5)) == [3, 4]
    assert lengths(q.next_batch(ANYWHERE, 2.5)) == [7]


async def test_nice_work_waiting_past_the_bound_is_served_as_normal() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_wait_seconds=0, max_batch_rows=1, nice_max_wait_seconds=5))
    old_nice = make_job(loop, length=9, nice=True, at=0.0)
    q.admit(old_nice)
    q.admit(make_job(loop, length=3, at=4.0))
    assert q.tier(old_nice, 4.9) == 1 and q.tier(old_nice, 5.0) == 0
    # At 5 s the nice request is as urgent as any, and older: it goes first.
    assert lengths(q.next_batch(ANYWHERE, 5.0)) == [9]


async def test_pinned_requests_only_reach_labelled_pools() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of()
    q.admit(make_job(loop, length=5, hosting="aleph-alpha", at=0.0))
    assert q.next_batch(ANYWHERE, 1.0) is None
    assert lengths(q.next_batch(OURS, 1.0)) == [5]


@pytest.mark.parametrize("seed", range(20))
async def test_hosting_holds_over_random_interleavings(seed: int) -> None:
    """Thousands of random admits and picks by a labelled and an unlabelled pool: a pinned request
    is never handed to the unlabelled pool, and every request is eventually served once."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    q = queue_of(
        SchedulingPolicy(
            max_wait_seconds=0.01, max_batch_rows=4, max_batch_tokens=64, nice_max_wait_seconds=0.5
        )
    )
    admitted: list[Job] = []
    served: list[Job] = []
    now = 0.0
    for _ in range(150):
        now += rng.random() * 0.01
        if rng.random() < 0.6:
            job = make_job(
                loop,
                length=rng.randint(1, 16),
                nice=rng.random() < 0.3,
                hosting=rng.choice([None, "aleph-alpha"]),
                at=now,
                model=rng.choice(MODELS),
            )
            q.admit(job)
            admitted.append(job)
        else:
            pool = rng.choice([OURS, ANYWHERE])
            pick = q.next_batch(pool, now)
            if isinstance(pick, list):
                assert pool == OURS or all(job.hosting is None for job in pick)
                assert len({id(job.model) for job in pick}) == 1
                served += pick
    while len(q):
        now += 0.02
        for pool in (OURS, ANYWHERE):
            pick = q.next_batch(pool, now)
            if isinstance(pick, list):
                assert pool == OURS or all(job.hosting is None for job in pick)
                served += pick
    assert sorted(map(id, served)) == sorted(map(id, admitted))


async def test_token_budget_and_row_limit() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(
        SchedulingPolicy(
            max_wait_seconds=0, max_batch_tokens=60, max_batch_rows=8, length_grouping=False
        )
    )
    for i, length in enumerate((10, 30, 30, 5)):
        q.admit(make_job(loop, length=length, at=float(i)))
    # 10 -> +30 (2 x 30 = 60 fits) -> +30 (3 x 30 = 90 does not) -> +5 (3 x 30 = 90 does not)
    assert lengths(q.next_batch(ANYWHERE, 9.0)) == [10, 30]
    q2 = queue_of(SchedulingPolicy(max_wait_seconds=0, max_batch_rows=3))
    for i in range(5):
        q2.admit(make_job(loop, length=2, at=float(i)))
    assert len(lengths(q2.next_batch(ANYWHERE, 9.0))) == 3


async def test_a_request_over_the_budget_still_runs_alone() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_wait_seconds=0, max_batch_tokens=100))
    q.admit(make_job(loop, length=500))
    assert lengths(q.next_batch(ANYWHERE, 1.0)) == [500]


async def test_length_grouping_limits_padding() -> None:
    loop = asyncio.get_running_loop()
    arrivals = (100, 8, 96, 10, 104, 9)

    def padding(grouping: bool) -> float:
        q = queue_of(
            SchedulingPolicy(max_wait_seconds=0, max_batch_rows=3, length_grouping=grouping)
        )
        for i, length in enumerate(arrivals):
            q.admit(make_job(loop, length=length, at=float(i)))
        real = padded = 0
        while (pick := q.next_batch(ANYWHERE, 10.0)) is not None:
            assert isinstance(pick, list)
            real += sum(j.tokens for j in pick)
            padded += max(j.tokens for j in pick) * len(pick)
        return 1 - real / padded

    assert padding(True) < 0.05 < padding(False)


async def test_a_partial_batch_waits_for_company_being_prepared_but_not_longer_than_max_wait() -> (
    None
):
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_wait_seconds=0.01, max_batch_rows=4))
    q.admit(make_job(loop, length=4, at=1.0))
    q.preparing = 1
    assert q.next_batch(ANYWHERE, 1.001) == WaitUntil(1.01)
    q.preparing = 0
    q.admit(make_job(loop, length=4, at=1.005))
    q.preparing = 1  # yet another on the way: the wait still ends at max_wait
    assert lengths(q.next_batch(ANYWHERE, 1.01)) == [4, 4]


async def test_a_lone_request_runs_at_once_when_no_other_is_being_prepared() -> None:
    """Waiting for company that is not on the way only adds latency."""
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_wait_seconds=10, max_batch_rows=4))
    q.admit(make_job(loop, length=4, at=1.0))
    assert lengths(q.next_batch(ANYWHERE, 1.0)) == [4]


async def test_a_full_batch_does_not_wait() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_wait_seconds=10, max_batch_rows=2))
    q.admit(make_job(loop, at=0.0))
    q.admit(make_job(loop, at=0.0))
    assert len(lengths(q.next_batch(ANYWHERE, 0.0))) == 2


async def test_batches_hold_one_model_version() -> None:
    loop = asyncio.get_running_loop()
    old, new = NamedModel("old"), NamedModel("new")
    q = queue_of()
    q.admit(make_job(loop, model=old, at=0.0))
    q.admit(make_job(loop, model=new, at=0.1))
    q.admit(make_job(loop, model=old, at=0.2))
    first = q.next_batch(ANYWHERE, 1.0)
    assert isinstance(first, list) and [j.model for j in first] == [old, old]


async def test_expired_and_cancelled_requests_leave_before_costing_compute() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of()
    expired = make_job(loop, length=3, at=0.0, deadline=1.0)
    cancelled = make_job(loop, length=4, at=0.0)
    alive = make_job(loop, length=5, at=0.0, deadline=5.0)
    for job in (expired, cancelled, alive):
        q.admit(job)
    cancelled.future.cancel()
    assert q.remove_gone(2.0) == [expired]
    assert lengths(q.next_batch(ANYWHERE, 2.0)) == [5]
    assert q.tokens == 0


async def test_admission_bounds_requests_and_tokens() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_queue_requests=2, max_queue_tokens=100))
    q.admit(make_job(loop, length=60))
    with pytest.raises(AdmissionRefused) as refused:
        q.admit(make_job(loop, length=41))
    assert (refused.value.requests, refused.value.tokens) == (1, 60)
    q.admit(make_job(loop, length=40))
    with pytest.raises(AdmissionRefused):
        q.admit(make_job(loop, length=1))
    assert len(q) == 2 and q.tokens == 100


async def test_callers_gone_hold_no_place_in_the_queue() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_queue_requests=2, max_queue_tokens=100))
    gone, waiting = make_job(loop, length=60), make_job(loop, length=30)
    q.admit(gone)
    q.admit(waiting)
    gone.future.cancel()
    q.admit(make_job(loop, length=70))  # full but for the cancelled job
    assert len(q) == 2 and q.tokens == 100
    with pytest.raises(AdmissionRefused):
        q.admit(make_job(loop, length=1))


async def test_depth_by_tier_and_hosting() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of()
    q.admit(make_job(loop, length=3, nice=True, at=0.0))
    q.admit(make_job(loop, length=4, hosting="aleph-alpha", at=0.0))
    depth = q.depth(1.0)
    assert (depth[("nice", "any")].tokens, depth[("normal", "aleph-alpha")].requests) == (3, 1)


# --- the pool loop -------------------------------------------------------------------------------


class InlineExecutor(Executor):
    """Runs the batch at once on the calling thread: the loop's logic without threads."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


def echo_lengths(pool: PoolSpec, jobs: Sequence[Job]) -> list[Embeddings]:
    return [{1: {Pooling.MEAN: np.array([float(job.tokens)])}} for job in jobs]


class CountRows(Unobserved):
    def __init__(self, rows: list[int]) -> None:
        self.rows = rows

    def batch_ran(self, pool: PoolSpec, jobs: Sequence[Job], seconds: float) -> None:
        self.rows.append(len(jobs))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class BusyThenInline(InlineExecutor):
    """A pool's thread that frees up `seconds` of the fake clock after the batch was picked."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.clock.now += self.seconds
        return super().submit(fn, *args, **kwargs)


async def test_pool_answers_each_job_and_drains_on_close() -> None:
    loop = asyncio.get_running_loop()
    clock = FakeClock()
    q = queue_of(SchedulingPolicy(max_wait_seconds=0, max_batch_rows=2))
    batches: list[int] = []
    runner = PoolRunner(
        PoolSpec("p", "cpu", 1, ANYWHERE),
        q,
        whole(echo_lengths),
        InlineExecutor(),
        clock=clock,
        observer=CountRows(batches),
    )
    jobs = [make_job(loop, length=n, at=clock.now) for n in (3, 5, 7)]
    for job in jobs:
        q.admit(job)
    runner.close()  # drain: everything queued still runs, then the loop ends
    await asyncio.wait_for(runner.run(), 5)
    assert [(await j.future).embeddings[1][Pooling.MEAN][0] for j in jobs] == [3.0, 5.0, 7.0]
    assert batches == [2, 1]
    assert (await jobs[0].future).pool == "p"


async def test_pool_fails_expired_jobs_with_deadline_exceeded() -> None:
    loop = asyncio.get_running_loop()
    clock = FakeClock()
    q = queue_of()
    runner = PoolRunner(
        PoolSpec("p", "cpu", 1, ANYWHERE), q, whole(echo_lengths), InlineExecutor(), clock=clock
    )
    late = make_job(loop, at=clock.now, deadline=clock.now + 1)
    q.admit(late)
    clock.now += 2
    runner.close()
    await asyncio.wait_for(runner.run(), 5)
    with pytest.raises(DeadlineExceeded):
        await late.future


async def test_a_failed_batch_fails_its_jobs_and_the_pool_goes_on() -> None:
    loop = asyncio.get_running_loop()
    calls = 0

    def flaky(pool: PoolSpec, jobs: Sequence[Job]) -> list[Embeddings]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return echo_lengths(pool, jobs)

    q = queue_of(SchedulingPolicy(max_wait_seconds=0, max_batch_rows=1))
    runner = PoolRunner(
        PoolSpec("p", "cpu", 1, ANYWHERE), q, whole(flaky), InlineExecutor(), clock=FakeClock()
    )
    first, second = make_job(loop, at=100.0), make_job(loop, at=100.0)
    q.admit(first)
    q.admit(second)
    runner.close()
    await asyncio.wait_for(runner.run(), 5)
    with pytest.raises(RuntimeError, match="boom"):
        await first.future
    assert (await second.future).embeddings[1][Pooling.MEAN][0] == 4.0


async def test_a_reply_to_a_caller_that_is_gone_is_dropped() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of()
    gone = make_job(loop, at=100.0)
    q.admit(gone)

    def cancel_then_run(pool: PoolSpec, jobs: Sequence[Job]) -> list[Embeddings]:
        gone.future.cancel()  # the caller leaves while its batch runs
        return echo_lengths(pool, jobs)

    runner = PoolRunner(
        PoolSpec("p", "cpu", 1, ANYWHERE),
        q,
        whole(cancel_then_run),
        InlineExecutor(),
        clock=FakeClock(),
    )
    runner.close()
    await asyncio.wait_for(runner.run(), 5)
    assert gone.future.cancelled()


def test_pool_devices_map_to_execution_providers() -> None:
    assert PoolSpec("a", "cpu", 1, ANYWHERE).providers == ["CPUExecutionProvider"]
    gpu = PoolSpec("b", "cuda:1", 1, OURS).providers
    assert gpu[0] == ("CUDAExecutionProvider", {"device_id": "1"})
    with pytest.raises(ValueError, match="'tpu' is not 'cpu' or 'cuda:<n>'"):
        PoolSpec("c", "tpu", 1, ANYWHERE).providers  # noqa: B018


async def test_grouping_keeps_a_very_different_length_for_a_later_batch() -> None:
    loop = asyncio.get_running_loop()
    q = queue_of(SchedulingPolicy(max_wait_seconds=0, max_padding_ratio=0.25))
    for i, length in enumerate((100, 96, 10, 104)):
        q.admit(make_job(loop, length=length, at=float(i)))
    assert sorted(lengths(q.next_batch(ANYWHERE, 9.0))) == [96, 100, 104]
    assert lengths(q.next_batch(ANYWHERE, 9.0)) == [10]


async def test_a_job_whose_deadline_passes_while_its_pool_is_busy_never_runs() -> None:
    loop = asyncio.get_running_loop()
    clock = FakeClock()
    ran: list[int] = []

    def slow_start(pool: PoolSpec, jobs: Sequence[Job]) -> list[Embeddings]:
        ran.extend(job.tokens for job in jobs)
        return echo_lengths(pool, jobs)

    q = queue_of()
    runner = PoolRunner(
        PoolSpec("p", "cpu", 1, ANYWHERE),
        q,
        whole(slow_start),
        BusyThenInline(clock, 5),
        clock=clock,
    )
    job = make_job(loop, length=3, at=clock.now, deadline=clock.now + 1)
    q.admit(job)
    runner.close()
    await asyncio.wait_for(runner.run(), 5)
    with pytest.raises(DeadlineExceeded):
        await job.future
    assert ran == []
