"""The queue's rules the scheduler tests leave loose, with a fake clock (explicit `now`): the nice
tier measured from each job's own arrival, depth and oldest waits as the gauges read them, batch
filling past a job that does not fit, the padding bound inclusive, and the token bound exact."""

from __future__ import annotations

import asyncio

import pytest

from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.scheduling.queue import NICE, URGENT, AdmissionRefused, Depth, RequestQueue
from tests.jobs import make_job

ANYWHERE: frozenset[str] = frozenset()


def lengths(batch: object) -> list[int]:
    assert isinstance(batch, list)
    return [job.tokens for job in batch]


async def test_a_nice_job_is_promoted_by_its_own_wait_not_the_clock() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(SchedulingPolicy(nice_max_wait_seconds=5.0))
    job = make_job(loop, nice=True, at=100.0)
    assert q.tier(job, 104.9) == NICE
    assert q.tier(job, 105.0) == URGENT
    assert q.tier(make_job(loop, nice=False, at=100.0), 100.0) == URGENT


async def test_depth_counts_every_job_of_a_tier_and_hosting_and_skips_callers_gone() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(SchedulingPolicy())
    gone = make_job(loop, length=50, at=0.0)
    q.admit(gone)
    for length in (3, 4):
        q.admit(make_job(loop, length=length, at=0.0))
    q.admit(make_job(loop, length=5, nice=True, hosting="aleph-alpha", at=0.0))
    gone.future.cancel()
    assert q.depth(1.0) == {
        ("normal", "any"): Depth(requests=2, tokens=7),
        ("nice", "aleph-alpha"): Depth(requests=1, tokens=5),
    }
    # A nice job waiting past the bound is counted as normal.
    assert q.depth(10.0) == {
        ("normal", "any"): Depth(requests=2, tokens=7),
        ("normal", "aleph-alpha"): Depth(requests=1, tokens=5),
    }


async def test_a_job_over_the_token_budget_is_passed_over_for_one_that_fits() -> None:
    loop = asyncio.get_running_loop()
    policy = SchedulingPolicy(
        max_wait_seconds=0, max_batch_tokens=60, max_batch_rows=8, length_grouping=False
    )
    q = RequestQueue(policy)
    for i, length in enumerate((10, 50, 20)):
        q.admit(make_job(loop, length=length, at=float(i)))
    # 10 + 50: 2 x 50 = 100 > 60, skipped; 10 + 20: 2 x 20 = 40 fits.
    assert lengths(q.next_batch(ANYWHERE, 9.0)) == [10, 20]


async def test_a_job_that_would_pad_too_much_is_passed_over_for_one_that_does_not() -> None:
    loop = asyncio.get_running_loop()
    policy = SchedulingPolicy(max_wait_seconds=0, max_batch_rows=8, max_padding_ratio=0.25)
    q = RequestQueue(policy)
    for i, length in enumerate((10, 14, 6, 15)):
        q.admit(make_job(loop, length=length, at=float(i)))
    # Nearest first: 14 (padding 1 - 24/28 = 0.14), then 6 (1 - 30/42 = 0.29, too much),
    # then 15 (1 - 39/45 = 0.13).
    assert lengths(q.next_batch(ANYWHERE, 9.0)) == [10, 14, 15]
    assert lengths(q.next_batch(ANYWHERE, 9.0)) == [6]


async def test_padding_exactly_at_the_bound_is_allowed() -> None:
    loop = asyncio.get_running_loop()
    policy = SchedulingPolicy(max_wait_seconds=0, max_batch_rows=8, max_padding_ratio=0.125)
    q = RequestQueue(policy)
    q.admit(make_job(loop, length=3, at=0.0))
    q.admit(make_job(loop, length=4, at=1.0))
    assert lengths(q.next_batch(ANYWHERE, 9.0)) == [3, 4]  # 1 - 7/8 = 0.125


async def test_company_is_the_nearest_length_not_the_shortest() -> None:
    loop = asyncio.get_running_loop()
    policy = SchedulingPolicy(max_wait_seconds=0, max_batch_rows=2, max_padding_ratio=1.0)
    q = RequestQueue(policy)
    for i, length in enumerate((100, 50, 99)):
        q.admit(make_job(loop, length=length, at=float(i)))
    assert lengths(q.next_batch(ANYWHERE, 9.0)) == [100, 99]


async def test_an_empty_queue_holds_no_tokens_and_takes_a_job_of_exactly_the_bound() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(SchedulingPolicy(max_queue_tokens=10))
    assert q.tokens == 0 and len(q) == 0
    q.admit(make_job(loop, length=10))
    assert q.tokens == 10
    with pytest.raises(AdmissionRefused):
        q.admit(make_job(loop, length=1))
