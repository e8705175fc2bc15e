"""Load for the benchmarks: server subprocesses, closed- and open-loop clients, metric deltas."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.integration.support import Samples, scrape, wait_until_serving

MakeRequest = Callable[[np.random.Generator], pb.EmbedRequest]


@dataclass(frozen=True)
class RunningServer:
    target: str
    metrics_port: int
    pid: int  # the server process, whose memory the soak samples


@contextmanager
def lamina_server(repository: Path, *flags: str) -> Iterator[RunningServer]:
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lamina.server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--model-repository",
            str(repository),
            "--log-level",
            "WARNING",
            *flags,
        ],
    )
    target = f"127.0.0.1:{port}"
    try:
        asyncio.run(wait_until_serving(target, timeout=300))
        yield RunningServer(target, metrics_port, process.pid)
    finally:
        process.terminate()
        process.wait(60)


def request_of(
    model: str, length: int, rng: np.random.Generator, *, nice: bool = False, specials: int = 2
) -> pb.EmbedRequest:
    ids = rng.integers(1000, 20000, length - specials).tolist()
    item = pb.PromptItem(token_ids=pb.TokenIdsItem(data=ids))
    return pb.EmbedRequest(
        model=model, prompt=pb.Prompt(items=[item]), layers=[-1], pooling=["mean"], nice=nice
    )


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)
    batch_runs: list[float] = field(default_factory=list)  # each reply's batch run time
    tokens: int = 0
    errors: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


async def _one(stub: pb_grpc.EmbedServiceStub, request: pb.EmbedRequest, outcome: Outcome) -> None:
    started = time.perf_counter()
    try:
        reply = await stub.Embed(request, timeout=120)
    except grpc.aio.AioRpcError:
        outcome.errors += 1
        return
    outcome.latencies.append(time.perf_counter() - started)
    outcome.queue_waits.append(reply.timing.queue_seconds)
    outcome.batch_runs.append(reply.timing.inference_seconds)
    outcome.tokens += reply.num_tokens_prompt_total


async def closed_loop(
    target: str, make: MakeRequest, clients: int, seconds: float, seed: int = 0
) -> Outcome:
    """`clients` callers, each sending its next request as soon as the last is answered."""
    outcome = Outcome()
    rng = np.random.default_rng(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedServiceStub(channel)
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                await _one(stub, make(rng), outcome)

        await asyncio.gather(*(client() for _ in range(clients)))
    return outcome


async def open_loop(
    target: str, make: MakeRequest, rate: float, seconds: float, seed: int = 1
) -> Outcome:
    """Requests at a fixed rate, whatever the answers take."""
    outcome = Outcome()
    rng = np.random.default_rng(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedServiceStub(channel)
        calls = []
        for _ in range(int(rate * seconds)):
            calls.append(asyncio.ensure_future(_one(stub, make(rng), outcome)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*calls)
    return outcome


def histogram_mean(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = frozenset(labels.items())
    total = after.get((f"{name}_sum", key), 0.0) - before.get((f"{name}_sum", key), 0.0)
    count = after.get((f"{name}_count", key), 0.0) - before.get((f"{name}_count", key), 0.0)
    return total / count if count else float("nan")


__all__ = [
    "Outcome",
    "closed_loop",
    "histogram_mean",
    "lamina_server",
    "open_loop",
    "request_of",
    "scrape",
]
