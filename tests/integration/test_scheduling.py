"""Scheduling with real servers: pools and hosting, priority under a nice flood, admission and
deadlines, all checked through the gRPC API and the scraped metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.server import LaminaServer
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import MINILM, free_port
from tests.integration.support import (
    eventually,
    queued,
    sample,
    scrape,
    settings_for,
    tokenized,
)
from tests.server.test_convert_bert import random_bert_weights, write_checkpoint

OURS = PoolSpec("ours", "cpu", 1, frozenset({"aleph-alpha"}))
SHARED = PoolSpec("shared", "cpu", 1, frozenset())


def tiny_repository(tmp: Path) -> Path:
    folder = write_checkpoint(tmp / "checkpoint", random_bert_weights(7))
    convert_checkpoint(folder, tmp / "repo", "tiny", progress=lambda _: None)
    return tmp / "repo"


def embed(model: str, length: int = 3, **fields: object) -> pb.EmbedRequest:
    item = pb.PromptItem(token_ids=pb.TokenIdsItem(data=[4 + i % 20 for i in range(length)]))
    request = pb.EmbedRequest(
        model=model, prompt=pb.Prompt(items=[item]), layers=[-1], pooling=["mean"]
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


@asynccontextmanager
async def serving(
    repository: Path, **settings: object
) -> AsyncIterator[tuple[LaminaServer, pb_grpc.EmbedServiceStub, int]]:
    metrics_port = free_port()
    server = LaminaServer(settings_for(repository, metrics_port=metrics_port, **settings))  # type: ignore[arg-type]
    port = await server.start()
    await server.load_models()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield server, pb_grpc.EmbedServiceStub(channel), metrics_port
    finally:
        await server.stop(grace_seconds=5)


def hold_pools(server: LaminaServer) -> Callable[[], None]:
    """Occupy every pool's inference thread until the returned release is called."""
    release = threading.Event()
    for runner in server.engine.runners:
        runner._executor.submit(release.wait)  # test-only hold
    return release.set


async def test_pinned_requests_run_only_on_labelled_pools(tmp_path: Path) -> None:
    async with serving(tiny_repository(tmp_path), pools=(OURS, SHARED)) as (_, stub, metrics):
        pinned = [stub.Embed(embed("tiny", hosting="aleph-alpha")) for _ in range(40)]
        free = [stub.Embed(embed("tiny")) for _ in range(40)]
        await asyncio.gather(*pinned, *free)
        counts = await scrape(metrics)
    assert sample(counts, "lamina_pool_requests_total", pool="shared", hosting="aleph-alpha") == 0
    assert sample(counts, "lamina_pool_requests_total", pool="ours", hosting="aleph-alpha") == 40
    unpinned = [
        sample(counts, "lamina_pool_requests_total", pool=p, hosting="any")
        for p in ("ours", "shared")
    ]
    assert sum(unpinned) == 40


async def test_pinned_requests_fail_fast_without_a_labelled_pool(tmp_path: Path) -> None:
    async with serving(tiny_repository(tmp_path), pools=(SHARED,)) as (_, stub, _metrics):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Embed(embed("tiny", hosting="aleph-alpha"))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_full_queue_refuses_at_once_with_a_retry_hint(tmp_path: Path) -> None:
    policy = SchedulingPolicy(max_wait_seconds=0, max_queue_requests=4, max_batch_rows=64)
    async with serving(tiny_repository(tmp_path), scheduling=policy) as (server, stub, _metrics):
        release = hold_pools(server)
        running = asyncio.ensure_future(stub.Embed(embed("tiny"), timeout=30))
        # Taken by the (held) pool: admitted, and the queue is empty again.
        await eventually(lambda: tokenized(server, "tiny") == 1 and queued(server) == 0)
        waiting = [asyncio.ensure_future(stub.Embed(embed("tiny"), timeout=30)) for _ in range(4)]
        await eventually(lambda: queued(server) == 4)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Embed(embed("tiny"), timeout=30)
        release()
        replies = await asyncio.gather(running, *waiting)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue full: 4 requests" in (error.value.details() or "")
    trailers: Any = error.value.trailing_metadata()  # grpc.aio.Metadata, untyped in the stubs
    assert int(trailers["retry-after"]) >= 1
    assert all(reply.model_version == "tiny@1" for reply in replies)  # nothing accepted is lost


async def test_a_request_past_its_deadline_never_runs(tmp_path: Path) -> None:
    async with serving(tiny_repository(tmp_path)) as (server, stub, metrics):
        release = hold_pools(server)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Embed(embed("tiny"), timeout=0.3)
        release()
        await stub.Embed(embed("tiny"), timeout=30)  # the server goes on
        counts = await scrape(metrics)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sample(counts, "lamina_pool_requests_total", pool="default", hosting="any") == 1


async def test_a_nice_flood_does_not_starve_normal_requests(
    model_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / MINILM).symlink_to(model_repository / MINILM)
    policy = SchedulingPolicy(max_wait_seconds=0.002, max_batch_rows=8, nice_max_wait_seconds=60)
    async with serving(repository, scheduling=policy) as (server, stub, _metrics):
        flood = [
            asyncio.ensure_future(stub.Embed(embed(MINILM, 64, nice=True))) for _ in range(160)
        ]
        # The flood is queued (every request admitted) and running (the pool took a batch).
        await eventually(
            lambda: tokenized(server, MINILM) == len(flood) and queued(server) < len(flood)
        )
        started = time.monotonic()
        normal = await asyncio.gather(*(stub.Embed(embed(MINILM, 64)) for _ in range(4)))
        normal_seconds = time.monotonic() - started
        pending = sum(not f.done() for f in flood)
        await asyncio.gather(*flood)
    assert all(reply.num_tokens_prompt_total == 64 for reply in normal)
    # Served ahead of the flood: most of it was still queued when the normal requests were done.
    assert pending > 80, (
        f"only {pending} nice requests were still waiting after {normal_seconds:.2f} s"
    )
