"""Helpers for tests that run a real server."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamina.server.config import Settings
from lamina.server.server import LaminaServer


@dataclass(frozen=True)
class RunningServer:
    instance: LaminaServer
    target: str  # host:port of the gRPC listener
    metrics_port: int


def settings_for(
    repository: Path, *, metrics_port: int = 0, hostings: tuple[str, ...] = ()
) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=metrics_port,
        model_repository=repository,
        threads=2,
        providers=("CPUExecutionProvider",),
        hostings=hostings,
        max_batch_tokens=16384,
        max_batch_rows=64,
        max_batch_wait_ms=5,
        drain_seconds=5,
        repository_poll_seconds=0.2,
        max_message_bytes=64 * 1024 * 1024,
        log_level="INFO",
    )


async def wait_until_serving(target: str, timeout: float) -> None:
    """Poll grpc.health.v1 until the server at `target` reports SERVING."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the server at {target} was not serving within {timeout} s")
