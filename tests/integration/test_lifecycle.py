"""Start-up, readiness and drain of a real server."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamina.server.server import LaminaServer
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.integration.support import (
    eventually,
    sample,
    scrape,
    settings_for,
    wait_until_serving,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# 512 positions: a batch of eight takes long enough to be caught in flight.
REQUEST = pb.EmbedRequest(
    model="all-minilm-l6-v2",
    prompt=pb.Prompt(items=[pb.PromptItem(token_ids=pb.TokenIdsItem(data=[2000] * 512))]),
    layers=[-1],
    pooling=["mean"],
)


async def test_not_serving_until_models_are_loaded(model_repository: Path) -> None:
    server = LaminaServer(settings_for(model_repository))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.EmbedServiceStub(channel)
            before = await health.Check(
                health_pb2.HealthCheckRequest(service="lamina.v1.EmbedService")
            )
            assert before.status == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Embed(REQUEST)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "starting up" in (error.value.details() or "")

            await server.load_models()
            after = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert after.status == SERVING
            assert (await stub.Embed(REQUEST)).num_tokens_prompt_total > 0
    finally:
        await server.stop(grace_seconds=1)


async def test_drain_finishes_in_flight_requests(model_repository: Path) -> None:
    server = LaminaServer(settings_for(model_repository))
    port = await server.start()
    await server.load_models()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbedServiceStub(channel)
        in_flight = [asyncio.ensure_future(stub.Embed(REQUEST)) for _ in range(8)]
        while server.state.in_flight < len(in_flight):
            assert not any(call.done() for call in in_flight), "answered before the drain began"
            await asyncio.sleep(0.001)
        await server.stop(grace_seconds=10)
        replies = await asyncio.gather(*in_flight)
    assert all(reply.embeddings["layer_6"].pooling["mean"].values for reply in replies)
    assert server.state.reason is not None and "draining" in server.state.reason


async def test_sigterm_drains_and_exits_cleanly(model_repository: Path) -> None:
    port, metrics_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamina.server",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--model-repository",
        str(model_repository),
        "--threads",
        "1",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_serving(f"127.0.0.1:{port}", timeout=60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            in_flight = [asyncio.ensure_future(stub.Embed(REQUEST)) for _ in range(8)]

            async def all_received() -> bool:
                served = await scrape(metrics_port)
                return sample(served, "lamina_in_flight_requests") == len(in_flight)

            await eventually(all_received, what="the server answering all eight calls")
            # Received, not answered: eight 512-token rows take seconds on one thread.
            assert not any(call.done() for call in in_flight)
            process.send_signal(signal.SIGTERM)
            replies = await asyncio.gather(*in_flight)
            assert all(reply.num_tokens_prompt_total == 512 for reply in replies)
        code = await asyncio.wait_for(process.wait(), 30)
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
        assert code == 0, log
        assert "draining" in log and "stopped" in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
