"""Helpers for tests that run a real server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        max_message_bytes=64 * 1024 * 1024,
        log_level="INFO",
    )
