"""Helpers for tests that run a real server."""

from __future__ import annotations

import asyncio
import inspect
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamina.server.config import Settings
from lamina.server.domain import Precision
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.server import LaminaServer


@dataclass(frozen=True)
class RunningServer:
    instance: LaminaServer
    target: str  # host:port of the gRPC listener
    metrics_port: int


def settings_for(
    repository: Path,
    *,
    metrics_port: int = 0,
    # fp32: what these tests pin (parity with transformers, exact replies); a test of another
    # precision asks for it (tests/integration/test_precision.py).
    pools: tuple[PoolSpec, ...] = (PoolSpec("default", "cpu", 2, frozenset(), Precision.FP32),),
    scheduling: SchedulingPolicy | None = None,
) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=metrics_port,
        model_repository=repository,
        pools=pools,
        scheduling=scheduling or SchedulingPolicy(max_wait_seconds=0.005),
        drain_seconds=5,
        repository_poll_seconds=0.2,
        max_message_bytes=64 * 1024 * 1024,
        log_level="INFO",
    )


async def wait_until_serving(target: str, timeout: float) -> None:
    """Poll grpc.health.v1 until the server at `target` reports SERVING."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the server at {target} was not serving within {timeout} s")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(metrics_port: int) -> Samples:
    """GET /metrics and parse the Prometheus text exposition into name+labels -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    def fetch() -> str:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
        return body.decode()

    text = await asyncio.to_thread(fetch)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one series; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


POLL_SECONDS = 0.01


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 30, what: str = ""
) -> None:
    """Wait until `condition()` holds (looked at every POLL_SECONDS; it may be a coroutine): the
    way a test waits for the server to reach a state, instead of sleeping for a guess.
    TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what or condition}")
        await asyncio.sleep(POLL_SECONDS)


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    answer = condition()
    return bool(await answer) if inspect.isawaitable(answer) else bool(answer)


def eventually_blocking(condition: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    """`eventually` for tests that drive a server on another thread (tests/gateway)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what or condition}")
        time.sleep(POLL_SECONDS)


def queued(server: LaminaServer) -> int:
    """Requests waiting in the server's queue for a batch (callers gone not counted)."""
    depth = server.engine.queue.depth(time.monotonic())
    return sum(d.requests for d in depth.values())


def tokenized(server: LaminaServer, model: str) -> int:
    """Embed requests (and semantic rows) of `model` tokenized so far: each is admitted to the
    queue, or refused, right after it is counted."""
    value = server.metrics.registry.get_sample_value(
        "lamina_tokenization_duration_seconds_count", {"model": model}
    )
    return int(value or 0)
