"""A real Lamina (gRPC and the HTTP gateway) on its own event loop in a thread, so that blocking
clients (the official client's sync Client, schemathesis) can call it from a test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from lamina.server.config import Settings
from lamina.server.server import LaminaServer
from tests.conftest import free_port
from tests.integration.support import settings_for

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Gateway:
    instance: LaminaServer
    loop: asyncio.AbstractEventLoop
    target: str  # host:port of gRPC
    url: str  # http://host:port/ of the gateway

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (e.g. to inspect or steer the server)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=120)


@contextlib.contextmanager
def threaded_server(repository: Path, *, load: bool = True, **overrides: Any) -> Iterator[Gateway]:
    """A server with the gateway on free ports; `load=False` leaves it starting up (503)."""
    settings: Settings = dataclasses.replace(
        settings_for(repository), http_port=free_port(), **overrides
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="lamina-under-test", daemon=True)
    thread.start()

    async def start() -> LaminaServer:
        instance = LaminaServer(settings)  # made on its loop: grpc.aio binds to it
        await instance.start()
        if load:
            await instance.load_models()
        return instance

    instance = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=300)
    gateway = Gateway(
        instance,
        loop,
        f"127.0.0.1:{instance.port}",
        f"http://127.0.0.1:{instance.http_port}/",
    )
    try:
        yield gateway
    finally:
        gateway.run(instance.stop(grace_seconds=1))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
