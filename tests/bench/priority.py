"""Priority under load, for `make bench`: normal latency idle and under a saturating nice flood,
with yielding and without (`--segment-ms 0`); the nice flood's throughput both ways; and the
longest nice wait under a normal flood against its bound plus one segment."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lamina.v1 import embed_pb2 as pb
from tests.bench.load import Outcome, closed_loop, lamina_server, open_loop, request_of, scrape
from tests.integration.support import Samples

Row = tuple[str, str, str]
NORMAL_RATE = 4.0  # normal requests per second, measured while the flood runs
NO_YIELDING = ("--segment-ms", "0")
ROUNDS = 3


def isolation_rows(
    repository: Path,
    model: str,
    *,
    normal_length: int,
    nice_length: int,
    nice_clients: int,
    seconds: float,
    step: Callable[[str], None],
) -> list[Row]:
    """Normal requests of `normal_length` at NORMAL_RATE, idle and beside `nice_clients` closed-
    loop clients of nice `nice_length`-token requests, on `repository` (holding `model`)."""

    def normal(r: np.random.Generator) -> pb.EmbedRequest:
        return request_of(model, normal_length, r)

    def nice(r: np.random.Generator) -> pb.EmbedRequest:
        return request_of(model, nice_length, r, nice=True)

    with lamina_server(repository) as server:
        step(f"priority isolation, {model}: normal requests at {NORMAL_RATE:.0f}/s, idle")
        asyncio.run(open_loop(server.target, normal, NORMAL_RATE, 1.0))  # warm-up
        idle = asyncio.run(open_loop(server.target, normal, NORMAL_RATE, seconds))
    # Two rounds, alternating, so that drift of this noisy machine hits both ways alike: the
    # normal latencies of both rounds pooled, the flood's throughput their median.
    floods: dict[str, tuple[Outcome, list[float], float]] = {}
    # The flood alone, no normal requests: what the extra session calls of segments cost,
    # apart from what serving normal requests at once costs it.
    alone: dict[str, list[float]] = {}
    # The first two seconds of normal requests after the flood had the pool to itself: its nice
    # batches were full-size then (--nice-contended-seconds), so a normal request may wait for
    # one block of one. Measured apart from the steady state above.
    settling = Outcome()
    for _ in range(ROUNDS):
        for label, flags in (("yielding", ()), ("without yielding", NO_YIELDING)):
            with lamina_server(repository, *flags) as server:
                step(f"priority isolation, {model}: the nice flood alone, {label}")
                asyncio.run(closed_loop(server.target, nice, nice_clients, 1.0))  # warm-up
                started = time.perf_counter()
                only = asyncio.run(closed_loop(server.target, nice, nice_clients, seconds))
                rate = only.tokens / (time.perf_counter() - started)
                alone[label] = [*alone.get(label, []), rate]
                step(f"priority isolation, {model}: the same under a nice flood, {label}")
                before = asyncio.run(scrape(server.metrics_port))
                flood, first, under, took = asyncio.run(
                    alongside(server.target, nice, normal, nice_clients, seconds, settle=2.0)
                )
                after = asyncio.run(scrape(server.metrics_port))
            segment = histogram_quantile(
                before, after, "lamina_segment_duration_seconds", 0.99, pool="default", model=model
            )
            pooled, rates, longest = floods.get(label, (Outcome(), [], 0.0))
            pooled.latencies += under.latencies
            floods[label] = (pooled, [*rates, flood.tokens / took], max(longest, segment))
            if label == "yielding":
                settling.latencies += first.latencies
    idle_p99 = idle.percentile(99)
    rows: list[Row] = [
        (
            f"{model}: normal p50 / p99, idle ({normal_length} tokens at {NORMAL_RATE:.0f}/s)",
            f"{ms(idle.percentile(50))} / {ms(idle_p99)} ms",
            "",
        )
    ]
    for label, (under, _, segment) in floods.items():
        yielding = label == "yielding"
        rows.append(
            (
                f"{model}: normal p50 / p99 under a nice flood ({nice_clients} clients of "
                f"{nice_length} tokens), {label}",
                f"{ms(under.percentile(50))} / {ms(under.percentile(99))} ms "
                f"({under.percentile(99) / idle_p99:.1f}x idle p99; "
                + (f"segments p99 <= {ms(segment)} ms)" if yielding else "batches run whole)"),
                f"p99 <= {ms(2 * idle_p99)} ms (2x idle)" if yielding else "",
            )
        )
    rows.append(
        (
            f"{model}: normal latency in the first two seconds after the flood had the pool to "
            "itself, yielding (its nice batches full-size until then)",
            f"p50 {ms(settling.percentile(50))} / max {ms(max(settling.latencies, default=0))} ms"
            f" ({len(settling.latencies)} requests)",
            "",
        )
    )
    with_, without = (statistics.median(floods[k][1]) for k in ("yielding", "without yielding"))
    rows.append(
        (
            f"{model}: nice flood throughput beside the normal requests, yielding / without "
            f"(median of {ROUNDS} rounds)",
            f"{with_ / without:.2f}x ({with_:,.0f} / {without:,.0f} tokens/s)",
            "",
        )
    )
    with_, without = (statistics.median(alone[k]) for k in ("yielding", "without yielding"))
    rows.append(
        (
            f"{model}: nice flood throughput alone, yielding / without (median of {ROUNDS} "
            "rounds): the cost of segments",
            f"{with_ / without:.2f}x ({with_:,.0f} / {without:,.0f} tokens/s)",
            ">= 0.9x",
        )
    )
    return rows


def starvation_rows(
    repository: Path, model: str, *, bound: float, seconds: float, step: Callable[[str], None]
) -> list[Row]:
    """Nice requests at 2/s under a flood of normal 128-token ones (32 clients)."""

    def normal(r: np.random.Generator) -> pb.EmbedRequest:
        return request_of(model, 128, r)

    def nice(r: np.random.Generator) -> pb.EmbedRequest:
        return request_of(model, 128, r, nice=True)

    with lamina_server(repository, "--nice-max-wait-seconds", str(bound)) as server:
        step(f"starvation, {model}: nice requests at 2/s under a normal flood, bound {bound} s")
        before = asyncio.run(scrape(server.metrics_port))
        flood, _, starved, _ = asyncio.run(
            alongside(server.target, normal, nice, 32, seconds, rate=2)
        )
        after = asyncio.run(scrape(server.metrics_port))
    segment = histogram_quantile(
        before, after, "lamina_segment_duration_seconds", 0.99, pool="default", model=model
    )
    longest = max(starved.queue_waits, default=float("nan"))
    return [
        (
            f"{model}: longest nice queue wait under a normal flood "
            f"({len(starved.queue_waits)} nice requests)",
            f"{longest:.3f} s (normal requests' queue wait p99 "
            f"{np.percentile(flood.queue_waits, 99):.2f} s)",
            f"<= bound {bound:.1f} s + one segment (p99 <= {ms(segment)} ms)",
        )
    ]


async def alongside(
    target: str,
    flood: Callable[[np.random.Generator], pb.EmbedRequest],
    measured: Callable[[np.random.Generator], pb.EmbedRequest],
    clients: int,
    seconds: float,
    rate: float = NORMAL_RATE,
    settle: float = 0.0,
) -> tuple[Outcome, Outcome, Outcome, float]:
    """`clients` closed-loop clients of `flood` saturate the server while `measured` arrives at
    `rate`, for `settle` seconds and then `seconds` more; the flood's outcome, the measured
    ones' of both spans, and how long the flood ran."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    flooding = asyncio.ensure_future(closed_loop(target, flood, clients, settle + seconds + 1))
    await asyncio.sleep(0.5)
    settling = await open_loop(target, measured, rate, settle)
    result = await open_loop(target, measured, rate, seconds)
    flooded = await flooding
    return flooded, settling, result, loop.time() - started


def histogram_quantile(
    before: Samples, after: Samples, name: str, q: float, **labels: str
) -> float:
    """The upper edge of the bucket holding quantile `q` of what was observed in between."""
    counts = []
    for (metric, key), value in after.items():
        bucket = dict(key)
        if metric != f"{name}_bucket" or any(bucket.get(k) != v for k, v in labels.items()):
            continue
        edge = float(bucket["le"])
        counts.append((edge, value - before.get((metric, key), 0.0)))
    counts.sort()
    if not counts or counts[-1][1] <= 0:
        return float("nan")
    total = counts[-1][1]
    return next(edge for edge, seen in counts if seen >= q * total)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"
