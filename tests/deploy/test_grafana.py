"""deploy/grafana/lamina.json: a Grafana dashboard whose every query names only series a real
server exports, checked against a scrape of one after it has answered a request."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.integration.support import RunningServer

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "lamina.json"
# The sample names of each metric type in the text exposition.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


async def exported_series(server: RunningServer) -> set[str]:
    def fetch() -> str:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
        return body.decode()

    names: set[str] = set()
    for family in text_string_to_metric_families(await asyncio.to_thread(fetch)):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_the_dashboard_is_a_grafana_dashboard_of_distinct_panels() -> None:
    board = dashboard()
    assert board["uid"] == "lamina" and board["panels"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]


async def test_every_query_names_only_exported_series(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        request = pb.EmbedRequest(
            model="all-minilm-l6-v2",
            prompt=pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data="for the dashboard"))]),
            layers=[-1],
            pooling=["mean"],
        )
        await pb_grpc.EmbedServiceStub(channel).Embed(request, timeout=30)
    exported = await exported_series(server)
    named = {name for expr in expressions() for name in re.findall(r"\blamina_[a-z_]+", expr)}
    assert named, "no query names a lamina metric"
    assert named <= exported, f"not exported: {sorted(named - exported)}"


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    """Throughput, latency percentiles, queue by tier and hosting, batches, pool busy time,
    yielding and errors: each has a query."""
    joined = "\n".join(expressions())
    for needed in (
        "lamina_requests_total",
        "histogram_quantile(0.99, sum by (le, method) (rate(lamina_request_duration_seconds",
        "sum by (tier, hosting) (lamina_queue_depth_requests)",
        "lamina_batch_rows_bucket",
        "lamina_batch_padding_ratio_sum",
        "lamina_pool_busy_seconds_total",
        "lamina_preemptions_total",
        'code!="OK"',
    ):
        assert needed in joined, needed
