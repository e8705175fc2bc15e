"""The memory budget of batch selection: fake jobs carrying a BatchMemory, a fake clock, and the
estimates the prepared models' sessions give."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest

from lamina.server.models.loaded import LoadedModel
from lamina.server.runtime import session as session_module
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.memory import BatchMemory
from lamina.server.runtime.session import OUTPUT_COPIES, PAIR_TENSORS, POSITION_TENSORS
from lamina.server.scheduling.job import Job
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.scheduling.queue import RequestQueue, WaitUntil
from tests.jobs import make_job, prompt_of

ANYWHERE: frozenset[str] = frozenset()
# One byte per (query, key) pair: a batch of r rows padded to n costs r * n * n.
PAIRS = BatchMemory(per_pair=1)


def job(
    loop: asyncio.AbstractEventLoop,
    length: int,
    memory: BatchMemory = PAIRS,
    layers: tuple[int, ...] = (1,),
    at: float = 0.0,
) -> Job:
    return dataclasses.replace(make_job(loop, length=length, layers=layers, at=at), memory=memory)


def policy(budget: int, **knobs: object) -> SchedulingPolicy:
    return SchedulingPolicy(max_wait_seconds=0, max_batch_memory_bytes=budget, **knobs)  # type: ignore[arg-type]


def batches(queue: RequestQueue, now: float = 100.0) -> list[list[int]]:
    taken = []
    while (batch := queue.next_batch(ANYWHERE, now)) is not None:
        assert isinstance(batch, list)
        taken.append([j.tokens for j in batch])
    return taken


def test_the_estimate_grows_with_the_square_of_the_padded_length() -> None:
    memory = BatchMemory(per_pair=36, per_position=100, per_output=10)
    assert memory.batch_bytes(1, 1000, 1) == 1000 * (36 * 1000 + 100 + 10)
    assert memory.batch_bytes(3, 1000, 4) == 3 * memory.batch_bytes(1, 1000, 4)
    assert memory.batch_bytes(1, 2000, 1) > 3.9 * memory.batch_bytes(1, 1000, 1)
    assert BatchMemory().batch_bytes(64, 8192, 31) == 0


async def test_a_batch_takes_requests_while_its_estimate_fits_the_budget() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(policy(3 * 100 * 100))
    for i in range(5):
        q.admit(job(loop, 100, at=float(i)))
    # Tokens (500 x 100 padded) would allow all five in one batch; memory allows three.
    assert batches(q) == [[100, 100, 100], [100, 100]]


async def test_a_request_over_the_budget_alone_still_runs_alone() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(policy(100 * 100))
    for i, length in enumerate((300, 200, 300)):
        q.admit(job(loop, length, at=float(i)))
    # Each needs 4 to 9 times the budget: none is refused, none shares a batch, in arrival order.
    assert batches(q) == [[300], [200], [300]]


async def test_a_shorter_request_further_on_may_still_join() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(policy(2 * 100 * 100, length_grouping=False))
    for i, length in enumerate((100, 150, 40, 100)):
        q.admit(job(loop, length, at=float(i)))
    # 150 would pad the batch to 2 x 150 x 150; 40 fits beside 100, then the second 100 does too.
    assert batches(q) == [[100, 40], [150], [100]]


async def test_the_returned_hidden_states_count_once_per_layer_of_the_batch() -> None:
    loop = asyncio.get_running_loop()
    outputs = BatchMemory(per_output=1)  # r rows x n positions x layers returned
    q = RequestQueue(policy(2 * 10 * 3))
    q.admit(job(loop, 10, outputs, layers=(1, 2), at=0.0))
    q.admit(job(loop, 10, outputs, layers=(2, 3), at=1.0))  # together: 3 layers, fits
    q.admit(job(loop, 10, outputs, layers=(4, 5, 6), at=2.0))  # with the first: 5 layers
    q.admit(job(loop, 10, outputs, layers=(7,), at=3.0))  # with the third: 4 layers
    q.admit(job(loop, 10, outputs, layers=(6,), at=4.0))  # with the third: still 3
    assert [[j.layers for j in b] for b in _raw_batches(q)] == [
        [(1, 2), (2, 3)],
        [(4, 5, 6), (6,)],
        [(7,)],
    ]


def _raw_batches(queue: RequestQueue) -> list[list[Job]]:
    taken = []
    while (batch := queue.next_batch(ANYWHERE, 100.0)) is not None:
        assert isinstance(batch, list)
        taken.append(batch)
    return taken


async def test_a_batch_held_back_by_memory_runs_without_waiting_for_company() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(SchedulingPolicy(max_wait_seconds=5, max_batch_memory_bytes=100 * 100))
    q.admit(job(loop, 100, at=0.0))
    q.preparing = 1
    assert isinstance(q.next_batch(ANYWHERE, 0.1), WaitUntil)  # alone: it may wait for company
    q.admit(job(loop, 100, at=0.05))
    # The second cannot join, so more company could not either: the first runs now.
    batch = q.next_batch(ANYWHERE, 0.1)
    assert isinstance(batch, list) and [j.tokens for j in batch] == [100]


async def test_jobs_without_an_estimate_batch_by_rows_and_tokens_alone() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(policy(1))
    for i in range(4):
        q.admit(job(loop, 1000, BatchMemory(), at=float(i)))
    assert batches(q) == [[1000] * 4]


@pytest.mark.parametrize(
    ("name", "heads", "hidden", "image_tokens"),
    [("minilm", 12, 384, 0), ("smollm2", 9, 576, 0), ("dinov2", 6, 384, 16 * 16 + 1)],
)
def test_each_session_estimates_with_its_graphs_heads_and_width(
    name: str, heads: int, hidden: int, image_tokens: int, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(name)
    per_pair, per_position = heads * 4 * PAIR_TENSORS, hidden * 4 * POSITION_TENSORS
    # A vision encoder attends over each image's patches (and class token) on its own.
    pixels = 3 * 224 * 224 * 4 if image_tokens else 0
    assert model.session.memory == BatchMemory(
        per_pair=per_pair,
        per_position=per_position,
        per_output=hidden * 4 * OUTPUT_COPIES,
        per_image=pixels + image_tokens * (per_pair * image_tokens + per_position),
    )


async def test_the_default_budget_keeps_long_prompts_apart_and_batches_short_ones(
    smollm2: LoadedModel,
) -> None:
    loop = asyncio.get_running_loop()
    memory = smollm2.session.memory
    q = RequestQueue(SchedulingPolicy(max_wait_seconds=0))
    for i in range(4):
        q.admit(job(loop, 3000, memory, layers=(30,), at=float(i)))
    # The four prompts of issue 13 (5.2 GB as one batch) run one by one.
    assert batches(q) == [[3000]] * 4
    for i in range(64):
        q.admit(job(loop, 128, memory, layers=(30,), at=float(i)))
    assert batches(q) == [[128] * 64]
    assert memory.batch_bytes(64, 128, 1) < SchedulingPolicy().max_batch_memory_bytes


def test_the_arena_is_released_when_idle_and_before_a_larger_batch(
    minilm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Releasing changes no answer; it happens once the session is idle, and before a batch
    larger than any since the last release (so that the arena grows from nothing)."""
    monkeypatch.setattr(session_module, "RELEASE_ABOVE_BYTES", 0)
    monkeypatch.setattr(session_module, "IDLE_RELEASE_SECONDS", 0.05)
    session = minilm.session

    def batch_of(*lengths: int) -> Batch:
        prompts = [prompt_of(length) for length in lengths]
        return Batch.pad(prompts, [True] * len(prompts), minilm.manifest.pad_token_id)

    def released_since(count: int) -> None:
        deadline = time.monotonic() + 30
        while session.releases == count:
            assert time.monotonic() < deadline, "the idle session never released its arena"
            time.sleep(0.01)

    small, large = batch_of(5, 9, 7), batch_of(40, 40, 40, 40)
    session.release_memory()
    before = session.releases
    plain = session.run(small, [0, 3, 6])
    released_since(before)

    after_idle = session.releases
    # Back-to-back runs, however slow the machine: no idle release may come between them.
    monkeypatch.setattr(session_module, "IDLE_RELEASE_SECONDS", 60.0)
    again = session.run(small, [0, 3, 6])
    for layer, states in plain.items():
        np.testing.assert_array_equal(again[layer], states)
    session.run(large, [6])  # larger than anything since the release: released first
    assert session.releases == after_idle + 1
    session.run(small, [6])  # smaller: reuses the arena
    assert session.releases == after_idle + 1
    monkeypatch.setattr(session_module, "IDLE_RELEASE_SECONDS", 0.05)
    session.run(small, [6])  # the last run before the session goes idle
    assert session.releases == after_idle + 1
    released_since(after_idle + 1)
