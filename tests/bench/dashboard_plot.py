"""Draws the dashboard's panels from what tests/bench/dashboard.py fetched, in the dashboard's
two-column grid. Runs in the reference environment (matplotlib is not one of Lamina's
dependencies):

    .venv-reference/bin/python tests/bench/dashboard_plot.py PANELS.json OUTPUT.png
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt

UNITS = {"s": "seconds", "reqps": "requests/s", "percentunit": "share", "short": ""}


def main(source: Path, output: Path) -> None:
    data = json.loads(source.read_text())
    panels = data["panels"]
    rows = math.ceil(len(panels) / 2)
    figure, axes = plt.subplots(rows, 2, figsize=(14, 2.9 * rows), constrained_layout=True)
    figure.suptitle(f"{data['title']} (Grafana panels, drawn from a real Prometheus scrape)")
    for axis, panel in zip(axes.flat, panels, strict=False):
        axis.set_title(panel["title"], fontsize=9, loc="left")
        axis.set_ylabel(UNITS.get(panel["unit"], panel["unit"]), fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        for line in panel["lines"][:8]:
            points = [(t, v) for t, v in line["points"] if math.isfinite(v)]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, linewidth=1.2, label=line["name"][:40])
        if panel["lines"]:
            axis.legend(fontsize=6, loc="upper left")
        else:
            axis.text(0.5, 0.5, "no data in this run", ha="center", va="center", fontsize=8)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    for axis in axes[-1]:
        axis.set_xlabel("seconds into the run", fontsize=8)
    figure.savefig(output, dpi=90)
    print(output)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
