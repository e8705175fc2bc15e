"""Batching: the token budget, and padding in a batch never reaching a result."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lamina.server.domain import Pooling, TextItem
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.scheduling.batcher import BatchPolicy, take_batch
from lamina.server.scheduling.inference import run_batch
from lamina.server.scheduling.job import Embeddings, Job
from lamina.server.scheduling.worker import ModelWorker

ALL_POOLINGS = tuple(Pooling)


def _job(length: int, loop: asyncio.AbstractEventLoop, layers: tuple[int, ...] = (1,)) -> Job:
    prompt = EncodedPrompt(np.arange(length, dtype=np.int64), np.ones(length, dtype=np.float32))
    return Job(prompt, layers, (Pooling.MEAN,), False, True, loop.create_future(), 0.0)


async def test_take_batch_respects_the_padded_token_budget() -> None:
    loop = asyncio.get_running_loop()
    queue = deque([_job(10, loop), _job(30, loop), _job(30, loop), _job(5, loop)])
    batch = take_batch(queue, BatchPolicy(max_batch_tokens=60, max_batch_rows=8))
    # 10 alone = 10; +30 -> 2 x 30 = 60 fits; +30 -> 3 x 30 = 90 does not.
    assert [job.prompt.length for job in batch] == [10, 30]
    assert [job.prompt.length for job in queue] == [30, 5]


async def test_take_batch_always_takes_the_first_job_even_over_budget() -> None:
    loop = asyncio.get_running_loop()
    queue = deque([_job(500, loop), _job(1, loop)])
    batch = take_batch(queue, BatchPolicy(max_batch_tokens=100))
    assert [job.prompt.length for job in batch] == [500]


async def test_take_batch_drops_cancelled_jobs_before_they_cost_compute() -> None:
    loop = asyncio.get_running_loop()
    cancelled = _job(3, loop)
    cancelled.future.cancel()
    queue = deque([cancelled, _job(4, loop)])
    batch = take_batch(queue, BatchPolicy())
    assert [job.prompt.length for job in batch] == [4]
    assert not queue


async def test_take_batch_respects_the_row_limit() -> None:
    loop = asyncio.get_running_loop()
    queue = deque(_job(2, loop) for _ in range(5))
    assert len(take_batch(queue, BatchPolicy(max_batch_rows=3))) == 3


async def test_worker_runs_concurrent_jobs_in_one_batch_and_answers_each() -> None:
    loop = asyncio.get_running_loop()
    seen_batches: list[int] = []

    def fake_run(jobs: Sequence[Job]) -> list[Embeddings]:
        seen_batches.append(len(jobs))
        return [{1: {Pooling.MEAN: np.array([float(job.prompt.length)])}} for job in jobs]

    with ThreadPoolExecutor(1) as executor:
        worker = ModelWorker("fake", fake_run, executor, BatchPolicy(max_wait_seconds=0.05))
        worker.start()
        jobs = [_job(n, loop) for n in (3, 5, 7)]
        for job in jobs:
            worker.submit(job)
        results = await asyncio.gather(*(job.future for job in jobs))
        await worker.close()
    assert seen_batches == [3]
    assert [r.embeddings[1][Pooling.MEAN][0] for r in results] == [3.0, 5.0, 7.0]
    assert all(r.batch_rows == 3 for r in results)


async def test_worker_fails_the_batch_requests_and_keeps_serving() -> None:
    loop = asyncio.get_running_loop()
    calls = 0

    def flaky_run(jobs: Sequence[Job]) -> list[Embeddings]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return [{1: {Pooling.MEAN: np.zeros(1)}} for _ in jobs]

    with ThreadPoolExecutor(1) as executor:
        worker = ModelWorker("fake", flaky_run, executor, BatchPolicy(max_wait_seconds=0))
        worker.start()
        first = _job(2, loop)
        worker.submit(first)
        with pytest.raises(RuntimeError, match="boom"):
            await first.future
        second = _job(2, loop)
        worker.submit(second)
        assert (await second.future).embeddings[1][Pooling.MEAN].shape == (1,)
        await worker.close()


def _encode(model: LoadedModel, text: str) -> EncodedPrompt:
    return model.prompts.encode((TextItem(text),))


def test_padding_in_a_batch_never_counts(minilm: LoadedModel) -> None:
    """A short prompt batched with a long one pools exactly as when it runs alone."""
    short = _encode(minilm, "short")
    long = _encode(minilm, "a much longer prompt that forces the short one to be padded " * 3)
    assert long.length > 3 * short.length
    loop = asyncio.new_event_loop()
    try:

        def job(prompt: EncodedPrompt) -> Job:
            return Job(prompt, (0, 3, 6), ALL_POOLINGS, False, True, loop.create_future(), 0.0)

        alone = run_batch(minilm, [job(short)])[0]
        together = run_batch(minilm, [job(long), job(short)])[1]
    finally:
        loop.close()
    for layer in (0, 3, 6):
        for pooling in ALL_POOLINGS:
            np.testing.assert_allclose(
                together[layer][pooling],
                alone[layer][pooling],
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"layer {layer} {pooling}",
            )


def test_a_batch_mixing_depths_runs_to_the_deepest_and_answers_each(minilm: LoadedModel) -> None:
    shallow_prompt = _encode(minilm, "only the first block")
    deep_prompt = _encode(minilm, "every block, please")
    loop = asyncio.new_event_loop()
    try:

        def job(prompt: EncodedPrompt, layers: tuple[int, ...]) -> Job:
            return Job(prompt, layers, (Pooling.MEAN,), False, True, loop.create_future(), 0.0)

        alone = run_batch(minilm, [job(shallow_prompt, (1,))])[0]
        shallow, deep = run_batch(minilm, [job(shallow_prompt, (1,)), job(deep_prompt, (6,))])
        deep_alone = run_batch(minilm, [job(deep_prompt, (6,))])[0]
    finally:
        loop.close()
    assert list(shallow) == [1] and list(deep) == [6]
    np.testing.assert_allclose(shallow[1][Pooling.MEAN], alone[1][Pooling.MEAN], atol=1e-5)
    np.testing.assert_allclose(deep[6][Pooling.MEAN], deep_alone[6][Pooling.MEAN], atol=1e-5)
