"""How Lamina's cost grows with the work: throughput and the server's peak RSS against prompt
length and against concurrency, over gRPC, for the plots of `make bench` (tests/bench/plots.py
draws them beside the fastest peer's, which tests/bench/peers.py measures the same way)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from tests.bench.load import MakeRequest, closed_loop, lamina_server, request_of
from tests.bench.soak import rss_bytes

MIB = 1024 * 1024
LENGTHS = (4, 16, 64, 128, 256, 512)
CLIENTS = (1, 2, 4, 8, 16, 32, 64, 128)
LENGTH_CLIENTS = 32  # concurrency of the by-length phases
CONCURRENCY_LENGTH = 128  # prompt length of the by-concurrency phases

Point = dict[str, float]  # ints for the x values


async def _phase(target: str, make: MakeRequest, clients: int, seconds: float, pid: int) -> Point:
    """tokens/s of one closed-loop phase, and the server's RSS peak while it ran."""
    peak = rss_bytes(pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    await closed_loop(target, make, clients, min(0.5, seconds / 4))  # warm this shape
    started = time.perf_counter()
    outcome = await closed_loop(target, make, clients, seconds)
    rate = outcome.tokens / (time.perf_counter() - started)
    done.set()
    await sampler
    return {"tokens_per_second": rate, "peak_rss_mib": peak / MIB}


def lamina_curves(
    repository: Path, model: str, seconds: float, progress: Callable[[str], None]
) -> dict[str, list[Point]]:
    def of_length(length: int) -> MakeRequest:
        return lambda rng: request_of(model, length, rng)

    by_length, by_concurrency = [], []
    with lamina_server(repository) as server:
        for length in LENGTHS:
            progress(f"curves: {LENGTH_CLIENTS} clients of {length} tokens")
            point = asyncio.run(
                _phase(server.target, of_length(length), LENGTH_CLIENTS, seconds, server.pid)
            )
            by_length.append({"tokens": length, **point})
        for clients in CLIENTS:
            progress(f"curves: {clients} clients of {CONCURRENCY_LENGTH} tokens")
            make = of_length(CONCURRENCY_LENGTH)
            point = asyncio.run(_phase(server.target, make, clients, seconds, server.pid))
            by_concurrency.append({"clients": clients, **point})
    return {"by_length": by_length, "by_concurrency": by_concurrency}


__all__ = ["CLIENTS", "LENGTHS", "lamina_curves"]
