"""`lamina-client load` as a user runs it (a separate process) against a real server on
loopback: counts add up, statuses are reported, runs end on time, every deploy/ghz config works.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.support import RunningServer

GHZ = Path(__file__).parents[2] / "deploy" / "ghz"
TEXT = {
    "model": "all-minilm-l6-v2",
    "prompt": {"items": [{"text": {"data": "load test {{.RequestNumber}} {{randomString 0}}"}}]},
    "layers": [-1],
    "pooling": ["mean"],
}

pytestmark = pytest.mark.model


@dataclass(frozen=True)
class Finished:
    code: int
    report: dict[str, Any]  # the JSON report
    stderr: str


async def load(server: RunningServer, tmp_path: Path, *args: str) -> Finished:
    """Run `lamina-client load <args> -O json` in its own process; the server keeps serving in
    this event loop meanwhile."""
    output = tmp_path / f"report-{time.monotonic_ns()}.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamina.client.cli",
        "--target",
        server.target,
        "load",
        *args,
        "-O",
        "json",
        "-o",
        str(output),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    report = json.loads(output.read_text()) if output.exists() else {}
    assert process.returncode is not None
    return Finished(process.returncode, report, stderr.decode())


async def test_a_counted_run_sends_exactly_n_calls(server: RunningServer, tmp_path: Path) -> None:
    done = await load(
        server, tmp_path, "-n", "40", "-c", "4", "--connections", "2", "-d", json.dumps(TEXT)
    )
    assert done.code == 0, done.stderr
    report = done.report
    assert report["count"] == 40
    assert report["statusCodeDistribution"] == {"OK": 40}
    assert report["errorDistribution"] == {}
    assert report["rps"] > 0 and report["total"] > 0
    assert 0 < report["fastest"] <= report["average"] <= report["slowest"]
    latencies = [d["latency"] for d in report["latencyDistribution"]]
    assert [d["percentage"] for d in report["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert latencies == sorted(latencies) and report["fastest"] <= latencies[0]
    assert sum(b["count"] for b in report["histogram"]) == 40
    assert report["options"]["connections"] == 2 and report["options"]["concurrency"] == 4
    # The last progress line on stderr (not a terminal: plain lines) counts every call.
    last_line = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+\.\ds  40 calls  [\d,.]+ rps  0 errors", last_line), last_line


async def test_a_timed_run_stops_on_time_and_counts_every_status(
    server: RunningServer, tmp_path: Path
) -> None:
    done = await load(server, tmp_path, "-z", "2s", "-c", "4", "-d", json.dumps(TEXT))
    assert done.code == 0, done.stderr
    report = done.report
    assert report["count"] > 0
    assert report["count"] == sum(report["statusCodeDistribution"].values())
    assert report["statusCodeDistribution"] == {"OK": report["count"]}
    # It sent for the two seconds asked, then stopped (the process ended, the report complete):
    # how long the calls in flight then took is the machine's business, not bounded here.
    assert report["total"] >= 2e9
    assert report["options"]["duration"] == 2e9 and report["options"]["total"] == 0


async def test_failed_calls_are_counted_by_status_not_fatal(
    server: RunningServer, tmp_path: Path
) -> None:
    unknown_model = {**TEXT, "model": "no-such-model"}
    bad_layer = {**TEXT, "layers": [99]}
    data = json.dumps([unknown_model, bad_layer, TEXT])  # round-robin: 3 of each in 9 calls
    done = await load(server, tmp_path, "-n", "9", "-c", "3", "-d", data)
    assert done.code == 0, done.stderr
    report = done.report
    assert report["count"] == 9
    assert report["statusCodeDistribution"] == {"NotFound": 3, "InvalidArgument": 3, "OK": 3}
    errors = report["errorDistribution"]
    assert sum(errors.values()) == 6
    assert any("code = NotFound" in e and "no-such-model" in e for e in errors)
    assert any("code = InvalidArgument" in e and "99" in e for e in errors)


async def test_a_rate_paces_the_run(server: RunningServer, tmp_path: Path) -> None:
    done = await load(
        server, tmp_path, "--rps", "20", "-n", "20", "-c", "4", "-d", json.dumps(TEXT)
    )
    assert done.code == 0, done.stderr
    assert done.report["count"] == 20
    # The 20th call's slot is 0.95 s in; unpaced, 20 small calls take a fraction of that.
    assert done.report["total"] >= 0.9e9


@pytest.mark.parametrize("config", sorted(GHZ.glob("*.json")), ids=lambda p: p.name)
async def test_every_ghz_config_runs(server: RunningServer, tmp_path: Path, config: Path) -> None:
    done = await load(
        server,
        tmp_path,
        "--config",
        str(config),
        "--host",
        server.target,
        "-n",
        "6",
        "-c",
        "2",
        "--connections",
        "1",
    )
    assert done.code == 0, done.stderr
    assert done.report["count"] == 6
    assert done.report["statusCodeDistribution"] == {"OK": 6}, done.report["errorDistribution"]


def _call_through_reflection(target: str, config: dict[str, Any]) -> list[Any]:
    """What ghz does with a config: descriptors from the server's reflection alone (no compiled
    stubs), the call data rendered and parsed into the method's request type, then the call."""
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    from lamina.client.load_templates import CallContext, compile_template

    service_name, _, method_name = config["call"].rpartition(".")
    with grpc.insecure_channel(target) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_type = message_factory.GetMessageClass(method.input_type)
        reply_type = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=reply_type.FromString,
        )
        data = config["data"] if isinstance(config["data"], list) else [config["data"]]
        replies = []
        for number, item in enumerate(data):
            context = CallContext.now(
                "0", number, config["call"], method.input_type.name, method.output_type.name
            )
            text = compile_template(json.dumps(item)).render(context)
            replies.append(call(json_format.Parse(text, request_type()), timeout=60))
        return replies


@pytest.mark.parametrize("config", sorted(p.name for p in GHZ.glob("*.json")))
async def test_each_ghz_config_works_through_reflection_alone(
    server: RunningServer, config: str
) -> None:
    settings = json.loads((GHZ / config).read_text())
    assert settings.get("insecure") is True and "proto" not in settings  # reflection, plaintext
    assert settings["max-recv-message-size"] == "64MiB"
    replies = await asyncio.to_thread(_call_through_reflection, server.target, settings)
    assert replies and all(reply.num_tokens_prompt_total > 0 for reply in replies)
    vectors = [
        v for r in replies for layer in r.embeddings.values() for v in layer.pooling.values()
    ]
    assert vectors and all(len(vector.values) >= 384 for vector in vectors)
