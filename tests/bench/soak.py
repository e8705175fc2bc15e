"""Soak: minutes of mixed load against one server process, then its memory growth and errors.

The deploy/ghz scenarios run side by side through `lamina-client load`'s engine (normal text,
a nice flood, every layer of the decoder, images), each with a few workers so a small machine
serves them all. The server's resident memory is read from /proc after a warm-up (models
loaded, arenas grown) and again at the end; steady growth in between is what a leak looks
like. Part of `make bench`; alone: `.venv/bin/python -m tests.bench.soak --seconds 60`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lamina.client.load import LoadRun
from lamina.client.load_cli import config_options
from lamina.client.load_report import Report, format_seconds
from lamina.server.config import default_home
from tests.bench.load import lamina_server

GHZ = Path(__file__).parents[2] / "deploy" / "ghz"
# (config, workers): the flood gets the most workers, the heavy scenarios the fewest.
SCENARIOS = (
    ("embed.json", 4),
    ("nice-flood.json", 8),
    ("many-layers.json", 2),
    ("images.json", 2),
)
WARM_UP_SECONDS = 10.0
SAMPLE_SECONDS = 10.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class SoakResult:
    seconds: float
    reports: dict[str, Report]  # by scenario
    rss_start: int  # bytes, after the warm-up
    rss_end: int
    rss_peak: int

    def rows(self) -> list[tuple[str, str, str]]:
        """(measurement, figure, target) rows for docs/bench.md."""
        calls = sum(r.count for r in self.reports.values())
        statuses = Counter[str]()
        for report in self.reports.values():
            statuses.update(report.status_codes)
        errors = calls - statuses["OK"]
        growth = self.rss_end - self.rss_start
        rows = [
            (
                f"soak: {self.seconds:.0f} s of mixed load ({', '.join(self.reports)})",
                f"{calls:,} calls, {calls / self.seconds:.1f} calls/s, {errors} errors"
                + (f" ({_statuses(statuses)})" if errors else ""),
                "0 errors",
            ),
            (
                "soak: server RSS after warm-up -> end (peak)",
                f"{self.rss_start / MIB:.0f} -> {self.rss_end / MIB:.0f} MiB "
                f"({growth / MIB:+.1f} MiB, {growth / self.rss_start:+.1%}; "
                f"peak {self.rss_peak / MIB:.0f} MiB)",
                "no steady growth (< 5%)",
            ),
        ]
        for name, report in self.reports.items():
            p50, p99 = _ok_latencies(report)
            rows.append(
                (
                    f"soak: {name}",
                    f"{report.count:,} calls, {report.rps:.1f}/s, p50 {p50} / p99 {p99}, "
                    f"{_statuses(Counter(report.status_codes))}",
                    "",
                )
            )
        return rows


def _ok_latencies(report: Report) -> tuple[str, str]:
    by_percentage = dict(report.latency_distribution)
    if not by_percentage:
        return ("-", "-")
    return (format_seconds(by_percentage[50]), format_seconds(by_percentage[99]))


def _statuses(statuses: Counter[str]) -> str:
    return ", ".join(f"{code} {n:,}" for code, n in statuses.most_common())


def rss_bytes(pid: int) -> int:
    """The process's resident set size, from /proc/<pid>/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _runs(target: str, seconds: float) -> dict[str, LoadRun]:
    return {
        name: LoadRun(
            config_options(
                GHZ / name,
                target,
                duration=f"{seconds}s",
                concurrency=workers,
                connections=1,
            )
        )
        for name, workers in SCENARIOS
    }


async def _run_all(runs: dict[str, LoadRun], pid: int, label: str) -> tuple[dict[str, Report], int]:
    """Every run at once, with a progress line and an RSS sample every SAMPLE_SECONDS; the
    reports by scenario and the highest RSS seen."""
    tasks = {name: asyncio.ensure_future(run.run()) for name, run in runs.items()}
    started, peak = time.perf_counter(), rss_bytes(pid)
    while not all(task.done() for task in tasks.values()):
        await asyncio.wait(tasks.values(), timeout=SAMPLE_SECONDS)
        rss = rss_bytes(pid)
        peak = max(peak, rss)
        calls = sum(run.calls for run in runs.values())
        errors = sum(run.errors for run in runs.values())
        print(
            f"[soak] {label} {time.perf_counter() - started:5.0f} s  {calls:,} calls  "
            f"{errors} errors  server RSS {rss / MIB:.0f} MiB",
            flush=True,
        )
    return {name: task.result() for name, task in tasks.items()}, peak


def soak(repository: Path, seconds: float) -> SoakResult:
    """Start a server on `repository` (all three default models), warm it up, load it for
    `seconds`, and measure."""
    with lamina_server(repository) as server:
        asyncio.run(_run_all(_runs(server.target, WARM_UP_SECONDS), server.pid, "warm-up"))
        rss_start = rss_bytes(server.pid)
        reports, peak = asyncio.run(_run_all(_runs(server.target, seconds), server.pid, "load"))
        rss_end = rss_bytes(server.pid)
    return SoakResult(seconds, reports, rss_start, rss_end, max(peak, rss_end))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=default_home() / "models")
    parser.add_argument("--seconds", type=float, default=180.0)
    args = parser.parse_args()
    result = soak(args.model_repository, args.seconds)
    for measurement, figure, target in result.rows():
        print(f"{measurement:<64}  {figure}  {target}")


if __name__ == "__main__":
    main()
