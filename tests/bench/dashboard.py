"""The Grafana dashboard (deploy/grafana/lamina.json) rendered against a real run, for the docs:
`make dashboard`.

No Grafana here, so its panels are drawn the way Grafana would fetch them: a real Prometheus
(the `prometheus` binary, e.g. Debian's package) scrapes a real `lamina serve` every second while
a mixed load runs (normal and nice MiniLM and SmolLM2 requests, some refused ones), then every
panel's own queries go to Prometheus' query_range API unchanged ($__rate_interval set to 10 s),
and tests/bench/dashboard_plot.py (in the reference environment, where matplotlib is) draws them
in the dashboard's grid to docs/dashboard.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from lamina.server.config import default_home
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.bench.load import closed_loop, lamina_server, open_loop, request_of
from tests.conftest import free_port

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "lamina.json"
RATE_INTERVAL = "10s"
MINILM, SMOLLM2 = "all-minilm-l6-v2", "smollm2-135m-instruct"


def step(message: str) -> None:
    print(f"[dashboard] {message}", flush=True)


def prometheus(metrics_port: int, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("no `prometheus` on PATH (Debian: apt-get install prometheus)")
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: lamina\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port


async def load(target: str, seconds: float) -> None:
    """Normal MiniLM at 4/s throughout; a nice SmolLM2 flood in the middle third; a burst of
    refused requests (no such model) now and then."""

    def normal(r: np.random.Generator) -> pb.EmbedRequest:
        return request_of(MINILM, 128, r)

    def nice(r: np.random.Generator) -> pb.EmbedRequest:
        return request_of(SMOLLM2, 200, r, nice=True)

    async def refused() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            for _ in range(int(seconds / 5)):
                for _ in range(3):
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await stub.Embed(pb.EmbedRequest(model="no-such-model"))
                await asyncio.sleep(5)

    async def flood() -> None:
        await asyncio.sleep(seconds / 3)
        await closed_loop(target, nice, 4, seconds / 3)

    await asyncio.gather(open_loop(target, normal, 4, seconds), flood(), refused())


def query_range(port: int, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(
        {
            "query": expr.replace("$__rate_interval", RATE_INTERVAL),
            "start": start,
            "end": end,
            "step": 1,
        }
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query_range?{query}") as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return re.sub(r"\{\{\w+\}\}", "-", template)  # Prometheus drops empty labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=default_home() / "models")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument(
        "--reference-python", type=Path, default=ROOT / ".venv-reference/bin/python"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    dashboard = json.loads(DASHBOARD.read_text())
    with tempfile.TemporaryDirectory() as scratch, lamina_server(args.model_repository) as server:
        process, port = prometheus(server.metrics_port, Path(scratch))
        try:
            time.sleep(3)  # its first scrapes
            step(f"load for {args.seconds:.0f} s (Prometheus on :{port} scraping every second)")
            start = time.time()
            asyncio.run(load(server.target, args.seconds))
            time.sleep(3)
            end = time.time()
            panels = []
            for panel in dashboard["panels"]:
                lines = []
                for target in panel["targets"]:
                    for series in query_range(port, target["expr"], start, end):
                        points = [(float(t) - start, float(v)) for t, v in series["values"]]
                        name = legend(target["legendFormat"], series["metric"])
                        lines.append({"name": name, "points": points})
                panels.append(
                    {
                        "title": panel["title"],
                        "unit": panel["fieldConfig"]["defaults"]["unit"],
                        "lines": lines,
                    }
                )
                step(f"{panel['title']}: {len(lines)} series")
        finally:
            process.terminate()
            process.wait(30)
    source = Path(scratch + ".json")
    source.write_text(json.dumps({"title": dashboard["title"], "panels": panels}))
    command = [
        str(args.reference_python),
        str(ROOT / "tests" / "bench" / "dashboard_plot.py"),
        str(source),
        str(args.output),
    ]
    subprocess.run(command, check=True)
    step(f"wrote {args.output}")


if __name__ == "__main__":
    main()
