"""The report of a `lamina-client load` run, shaped like ghz's: a text summary and JSON.

As in ghz, the count, average and rate cover every call, while fastest, slowest, the histogram
and the latency distribution cover the successful ones (a fast refusal is not a fast answer).
Percentiles are nearest-rank and computed without numpy, which the bare client lacks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PERCENTAGES = (10, 25, 50, 75, 90, 95, 99)
_HISTOGRAM_BUCKETS = 10


@dataclass(frozen=True)
class CallRecord:
    latency: float  # seconds from sending the request to its reply or error
    status: str  # the gRPC code as ghz names it: OK, NotFound, InvalidArgument, ...
    error: str = ""  # "rpc error: code = ... desc = ..." when not OK


@dataclass(frozen=True)
class Bucket:
    mark: float  # upper edge in seconds
    count: int
    frequency: float  # share of the successful calls


@dataclass(frozen=True)
class Report:
    count: int
    total: float  # wall-clock seconds of the whole run
    average: float
    fastest: float
    slowest: float
    rps: float
    latency_distribution: tuple[tuple[int, float], ...]  # (percentage, seconds)
    histogram: tuple[Bucket, ...]
    status_codes: dict[str, int]
    errors: dict[str, int]
    end_reason: str = "normal"
    options: dict[str, Any] = field(default_factory=dict)
    date: str = ""

    @staticmethod
    def of(
        records: Sequence[CallRecord],
        total: float,
        *,
        end_reason: str = "normal",
        options: dict[str, Any] | None = None,
    ) -> Report:
        ok = sorted(r.latency for r in records if r.status == "OK")
        count = len(records)
        return Report(
            count=count,
            total=total,
            average=sum(r.latency for r in records) / count if count else 0.0,
            fastest=ok[0] if ok else 0.0,
            slowest=ok[-1] if ok else 0.0,
            rps=count / total if total > 0 else 0.0,
            latency_distribution=tuple((p, percentile(ok, p)) for p in PERCENTAGES) if ok else (),
            histogram=histogram(ok),
            status_codes=dict(Counter(r.status for r in records).most_common()),
            errors=dict(Counter(r.error for r in records if r.error).most_common()),
            end_reason=end_reason,
            options=dict(options or {}),
            date=datetime.now().astimezone().isoformat(timespec="seconds"),
        )

    def to_json(self) -> dict[str, Any]:
        """ghz's JSON report keys; durations in integer nanoseconds as ghz writes them."""
        return {
            "date": self.date,
            "endReason": self.end_reason,
            "options": self.options,
            "count": self.count,
            "total": _ns(self.total),
            "average": _ns(self.average),
            "fastest": _ns(self.fastest),
            "slowest": _ns(self.slowest),
            "rps": self.rps,
            "errorDistribution": self.errors,
            "statusCodeDistribution": self.status_codes,
            "latencyDistribution": [
                {"percentage": p, "latency": _ns(s)} for p, s in self.latency_distribution
            ],
            "histogram": [
                {"mark": b.mark, "count": b.count, "frequency": b.frequency} for b in self.histogram
            ],
        }

    def summary(self) -> str:
        lines = [
            "",
            "Summary:",
            f"  Count:        {self.count}",
            f"  Total:        {format_seconds(self.total)}",
            f"  Slowest:      {format_seconds(self.slowest)}",
            f"  Fastest:      {format_seconds(self.fastest)}",
            f"  Average:      {format_seconds(self.average)}",
            f"  Requests/sec: {self.rps:.2f}",
        ]
        if self.histogram:
            most = max(b.count for b in self.histogram) or 1
            lines += ["", "Response time histogram:"]
            lines += [
                f"  {b.mark * 1000:9.3f} [{b.count}]\t|{'∎' * round(40 * b.count / most)}"
                for b in self.histogram
            ]
        if self.latency_distribution:
            lines += ["", "Latency distribution:"]
            lines += [f"  {p} % in {format_seconds(s)}" for p, s in self.latency_distribution]
        lines += ["", "Status code distribution:"]
        width = max((len(code) for code in self.status_codes), default=2) + 2
        lines += [
            f"  {f'[{code}]':<{width}}  {n} responses" for code, n in self.status_codes.items()
        ]
        if self.errors:
            lines += ["", "Error distribution:"]
            lines += [f"  [{n}]\t{error}" for error, n in self.errors.items()]
        return "\n".join(lines) + "\n"


def percentile(ordered: Sequence[float], percentage: float) -> float:
    """Nearest rank: the smallest value with at least `percentage` % of values at or below it."""
    if not ordered:
        return math.nan
    rank = math.ceil(percentage / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def histogram(ordered: Sequence[float]) -> tuple[Bucket, ...]:
    """ghz's 10 equal-width buckets from fastest to slowest, each labelled by its upper edge."""
    if not ordered:
        return ()
    fastest, slowest = ordered[0], ordered[-1]
    width = (slowest - fastest) / _HISTOGRAM_BUCKETS
    marks = [fastest + width * i for i in range(_HISTOGRAM_BUCKETS)] + [slowest]
    counts = [0] * len(marks)
    bucket = 0
    for value in ordered:
        while value > marks[bucket] and bucket < len(marks) - 1:
            bucket += 1
        counts[bucket] += 1
    return tuple(Bucket(mark, n, n / len(ordered)) for mark, n in zip(marks, counts, strict=True))


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.2f} ms"


def progress_line(elapsed: float, calls: int, errors: int) -> str:
    """One line of progress while a run goes on, e.g. '12.0s  1,234 calls  102.3 rps  3 errors'."""
    rate = calls / elapsed if elapsed > 0 else 0.0
    return f"{elapsed:.1f}s  {calls:,} calls  {rate:.1f} rps  {errors:,} errors"


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)
