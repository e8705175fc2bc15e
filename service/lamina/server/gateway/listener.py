"""The HTTP listener: uvicorn serving the gateway's app on the gRPC server's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from lamina.server.security import ServingCertificate


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGTERM belongs to LaminaServer, which drains gRPC and HTTP together.
        yield


class HttpListener:
    def __init__(
        self, app: ASGIApp, host: str, port: int, *, certificate: ServingCertificate | None
    ) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the server's logging as configured, not uvicorn's
            access_log=False,
            server_header=False,
            # The gRPC port's certificate, reloaded the same way: --tls-cert/--tls-key, and
            # --tls-client-ca for mTLS.
            ssl_context_factory=(lambda *_: certificate.ssl_context()) if certificate else None,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind (an OSError if the port is taken, as for gRPC) and serve; returns the port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listening = socket.create_server((self.host, self.port), family=family)
        self.port = listening.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve([listening]), name="http-gateway")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # start-up failed: say why
                raise RuntimeError("the HTTP gateway stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting connections, close idle keep-alive ones, and let requests in flight
        finish within `grace_seconds` (then they are cancelled), as grpc.aio's stop does."""
        if self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = math.ceil(grace_seconds)
        self._server.should_exit = True
        await self._task
