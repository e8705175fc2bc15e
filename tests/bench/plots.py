"""Draws the bench curves: Lamina against the fastest peer, by prompt length and by concurrency.

Runs in the reference environment (matplotlib is not one of Lamina's dependencies):

    .venv-reference/bin/python tests/bench/plots.py --input CURVES.json --output-dir docs/

CURVES.json: {"machine": str, "series": [{"name": str, "by_length": [{"tokens", "tokens_per_second",
"peak_rss_mib"}], "by_concurrency": [{"clients", ...}]}]}. Writes bench-length.png and
bench-concurrency.png, two panels each (tokens/s, peak RSS), and prints the paths.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server or in CI

import matplotlib.pyplot as plt

FIGURES = [
    # (file, row list, x key, x label, title)
    ("bench-length.png", "by_length", "tokens", "prompt tokens", "by prompt length"),
    ("bench-concurrency.png", "by_concurrency", "clients", "concurrent clients", "by concurrency"),
]


def draw(
    series: list[dict[str, Any]], rows: str, x: str, label: str, title: str, out: Path
) -> None:
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ticks: set[float] = set()
    for entry in series:
        points = sorted(entry.get(rows, []), key=lambda row: row[x])
        if not points:
            continue
        xs = [row[x] for row in points]
        ticks.update(xs)
        speed.plot(
            xs, [row["tokens_per_second"] for row in points], marker="o", label=entry["name"]
        )
        memory.plot(xs, [row["peak_rss_mib"] for row in points], marker="o", label=entry["name"])
    for axis, ylabel in ((speed, "tokens / s"), (memory, "peak RSS (MiB)")):
        axis.set_xscale("log", base=2)  # the lengths and client counts are powers of two
        axis.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])  # 512, not 2^9
        axis.minorticks_off()
        axis.set_xlabel(label)
        axis.set_ylabel(ylabel)
        axis.set_ylim(bottom=0)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    speed.set_title("throughput")
    memory.set_title("peak resident memory")
    figure.suptitle(title)
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="the curves JSON")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the PNGs go")
    args = parser.parse_args()
    data = json.loads(args.input.read_text())
    args.output_dir.mkdir(parents=True, exist_ok=True)
    model = data.get("model", "all-MiniLM-L6-v2")  # the curves are measured on MiniLM
    for name, rows, x, label, what in FIGURES:
        out = args.output_dir / name
        draw(data["series"], rows, x, label, f"{model} {what}\n{data['machine']}", out)
        print(out)


if __name__ == "__main__":
    main()
