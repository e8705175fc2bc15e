"""The knobs of scheduling and batching, with the defaults the server documents."""

from __future__ import annotations

from dataclasses import dataclass

from lamina.server.runtime.memory import MIB


@dataclass(frozen=True)
class SchedulingPolicy:
    max_batch_tokens: int = 16384  # rows x padded length of one graph run
    # The estimated working memory (BatchMemory) one batch may take; a request that alone needs
    # more still runs, alone in its batch.
    max_batch_memory_bytes: int = 2048 * MIB
    max_batch_rows: int = 64
    # How long a partial batch waits for company, while more requests are being prepared.
    max_wait_seconds: float = 0.002
    nice_max_wait_seconds: float = 5.0  # a nice request waiting this long is served as non-nice
    max_queue_requests: int = 1024  # admission: beyond either bound, RESOURCE_EXHAUSTED at once
    max_queue_tokens: int = 262144
    length_grouping: bool = True  # batch similar lengths together to limit padding
    # With grouping: a request that would push the batch's padding past this share waits for a
    # batch nearer its own length (the most urgent request always runs).
    max_padding_ratio: float = 0.25
    # Yielding (docs/architecture.md, Priority): a batch runs in segments of about this long, and
    # between them its pool runs more urgent work first. A batch is no larger than one block of
    # it runs in this time (as measured; the most urgent request always runs). 0: every batch
    # runs whole, as large as the other budgets allow.
    segment_seconds: float = 0.025
    # A nice batch yields to normal arrivals, which come at any time: while normal requests
    # arrived on its pool within `nice_contended_seconds`, it is no larger than one block of it
    # runs in `nice_segment_seconds`, so a normal request waits about that long for the pool.
    # With no normal request in that window, nice work has the pool to itself and batches as
    # large as the other budgets allow (still parked at block boundaries): the cost of small
    # batches is paid only while someone is waiting behind them.
    nice_segment_seconds: float = 0.010
    nice_contended_seconds: float = 2.0
    # Alone, a nice batch's segments are this long: every segment is a session call, and at one
    # block a call a full-size batch ran 0.87x of whole runs (make bench, 2-core EPYC); the first
    # normal request after a quiet spell waits for at most one such segment.
    nice_alone_segment_seconds: float = 0.5
    max_parked_batches: int = 2  # per pool; with as many parked, the running batch runs on
    # A batch that has run this long yields to queued work of its own tier too, one segment at
    # a time, so a very long batch cannot hold a pool while short requests queue behind it.
    long_batch_seconds: float = 1.0
