"""Per-request overhead: what serving adds to a short request beyond its own work.

- in-process: the same tokenize + graph run + pooling as the server does, in this process, one
  request at a time (the floor a server cannot beat);
- over gRPC, one caller at a time: p50 of Embed for the same prompt;
- tiny-request throughput: many concurrent callers of two-word prompts, requests per second.

`python -m tests.bench.overhead` prints the three for the checkout it runs from (give
`--repository`); `make bench` reports them with the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from lamina.server.config import default_home
from lamina.server.domain import Pooling, TextItem
from lamina.server.models.loaded import LoadedModel
from lamina.server.pooling import normalize, pool
from lamina.server.repository.layout import list_versions
from lamina.server.runtime.batch import Batch
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.bench.load import lamina_server

SHORT = "Hello world"
TINY = ("red apple", "blue sky", "green tea", "warm bread", "cold rain", "small dog")


@dataclass(frozen=True)
class Overhead:
    in_process_p50: float
    grpc_p50: float
    tiny_requests_per_second: float
    tiny_clients: int

    @property
    def added(self) -> float:
        return self.grpc_p50 - self.in_process_p50


def in_process_p50(repository: Path, model: str, repeats: int = 300) -> float:
    """With the graph the server's default pool serves (`auto`: bf16 where it passed its gate
    and the CPU computes it), so that the difference is serving alone."""
    entry = list_versions(repository)[model][-1]
    loaded = LoadedModel.load(
        entry, threads=os.cpu_count() or 1, providers=["CPUExecutionProvider"], precision=None
    )
    last = loaded.manifest.num_layers

    def once() -> float:
        started = time.perf_counter()
        prompt = loaded.encoder.encode((TextItem(SHORT),), None, "")
        batch = Batch.pad([prompt], [True], loaded.manifest.pad_token_id)
        states = loaded.session.run(batch, [last])
        normalize(pool(states[last][0, : prompt.length], Pooling.MEAN))
        return time.perf_counter() - started

    for _ in range(20):
        once()
    return statistics.median(once() for _ in range(repeats))


def embed_request(model: str, text: str) -> pb.EmbedRequest:
    item = pb.PromptItem(text=pb.TextItem(data=text))
    return pb.EmbedRequest(
        model=model, prompt=pb.Prompt(items=[item]), layers=[-1], pooling=["mean"], normalize=True
    )


async def grpc_p50(target: str, model: str, repeats: int = 300) -> float:
    request = embed_request(model, SHORT)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedServiceStub(channel)
        for _ in range(20):
            await stub.Embed(request)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            await stub.Embed(request)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


async def tiny_throughput(target: str, model: str, clients: int, seconds: float) -> float:
    requests = [embed_request(model, text) for text in TINY]
    answered = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedServiceStub(channel)
        deadline = time.perf_counter() + seconds

        async def client(index: int) -> None:
            nonlocal answered
            while time.perf_counter() < deadline:
                await stub.Embed(requests[(index + answered) % len(requests)])
                answered += 1

        await asyncio.gather(*(client(i) for i in range(clients)))  # warm-up
        answered, started = 0, time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client(i) for i in range(clients)))
        return answered / (time.perf_counter() - started)


def measure(repository: Path, model: str, clients: int = 64, seconds: float = 8.0) -> Overhead:
    floor = in_process_p50(repository, model)
    with lamina_server(repository) as server:
        p50 = asyncio.run(grpc_p50(server.target, model))
        rate = asyncio.run(tiny_throughput(server.target, model, clients, seconds))
    return Overhead(floor, p50, rate, clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=default_home() / "models")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    figures = measure(args.repository, args.model, args.clients, args.seconds)
    print(
        f"in-process p50 {figures.in_process_p50 * 1e3:.2f} ms, gRPC p50 "
        f"{figures.grpc_p50 * 1e3:.2f} ms (+{figures.added * 1e3:.2f} ms), "
        f"{figures.tiny_clients} clients of two-word prompts: "
        f"{figures.tiny_requests_per_second:,.0f} requests/s"
    )


if __name__ == "__main__":
    main()
