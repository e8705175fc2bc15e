"""The grpc.aio server: EmbedService, grpc.health.v1, reflection, metrics, start-up and drain."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lamina.server.api.servicer import EmbedServicer, ServingState
from lamina.server.config import Settings
from lamina.server.engine import Engine
from lamina.server.metrics import Metrics
from lamina.server.models.registry import ModelRegistry
from lamina.v1 import embed_pb2, embed_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = embed_pb2.DESCRIPTOR.services_by_name["EmbedService"].full_name
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


class LaminaServer:
    """Binds first and reports NOT_SERVING, loads models, then reports SERVING.

    Kubernetes probes and clients can reach the port during start-up and learn to wait.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.state = ServingState()
        self.registry = ModelRegistry(
            settings.model_repository, settings.pools, on_reject=self.metrics.model_rejected
        )
        self.engine = Engine(self.registry, settings.scheduling, self.metrics)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._watcher: asyncio.Task[None] | None = None
        self.port = 0
        limits = settings.max_message_bytes
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limits),
                ("grpc.max_receive_message_length", limits),
                # Close connections now and then so clients re-resolve and rebalance across pods.
                ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                ("grpc.max_connection_age_grace_ms", 30 * 1000),
            ]
        )
        embed_pb2_grpc.add_EmbedServiceServicer_to_server(
            EmbedServicer(self.engine, self.state, self.metrics), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    async def start(self) -> int:
        """Listen and answer health checks (NOT_SERVING); returns the bound port."""
        await self._set_health(NOT_SERVING)
        self.port = self._server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise OSError(f"could not bind {self.settings.host}:{self.settings.port}")
        await self._server.start()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.host, self.settings.metrics_port)
        self.metrics.track(self.engine.queue, lambda: self.state.in_flight)
        log.info(
            "listening on %s:%d (not serving until models are loaded)",
            self.settings.host,
            self.port,
        )
        return self.port

    async def load_models(self) -> None:
        """Serve what the repository holds, then keep watching it for new versions."""
        await self.engine.refresh()
        self.engine.start()
        self.state.reason = None
        self.metrics.ready.set(1)
        await self._set_health(SERVING)
        names = ", ".join(m.model_version for m in self.engine.models()) or "none"
        log.info("serving: %s", names)
        if self.settings.repository_poll_seconds > 0:
            self._watcher = asyncio.create_task(self._watch_repository(), name="repository-watch")

    async def _watch_repository(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_seconds)
            try:
                await self.engine.refresh()
            except Exception:  # a broken repository must not stop serving what already loaded
                log.exception("scanning %s failed", self.settings.model_repository)

    async def stop(self, grace_seconds: float) -> None:
        """Drain: report NOT_SERVING, refuse new RPCs, let in-flight ones finish, then close."""
        if self._watcher is not None:
            self._watcher.cancel()
        self.state.reason = "draining: the server is shutting down"
        self.metrics.ready.set(0)
        await self._set_health(NOT_SERVING)
        await self._server.stop(grace_seconds)
        await self.engine.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)


async def serve(settings: Settings) -> None:
    server = LaminaServer(settings)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await server.load_models()
    await stopping.wait()
    log.info("draining for at most %.0f s", settings.drain_seconds)
    await server.stop(settings.drain_seconds)
    log.info("stopped")
