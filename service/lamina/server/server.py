"""The grpc.aio server: EmbedService, grpc.health.v1, reflection, metrics, the optional HTTP
gateway on the same event loop, start-up and drain."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lamina.server.api.servicer import EmbedServicer, add_to_server
from lamina.server.calls import Calls, ServingState
from lamina.server.config import Settings
from lamina.server.engine import Engine
from lamina.server.gateway.app import Gateway
from lamina.server.gateway.listener import ConnectionLimits, HttpListener
from lamina.server.metrics import Metrics
from lamina.server.models.registry import ModelRegistry
from lamina.server.observability import tracing
from lamina.server.security import BearerTokenInterceptor, ServingCertificate, TokenFile
from lamina.v1 import embed_pb2

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
        self.engine = Engine(
            self.registry, settings.scheduling, self.metrics, limits=settings.limits
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._watcher: asyncio.Task[None] | None = None
        self.port = 0
        self.health_port = 0
        self.http_port = 0
        # One certificate and one token file for gRPC and HTTP: a rotation reaches both at once.
        self.certificate = ServingCertificate(settings.tls) if settings.tls is not None else None
        tokens = (
            TokenFile(settings.auth_tokens_file) if settings.auth_tokens_file is not None else None
        )
        # Both edges answer through the same calls: one conversion, one count, one state.
        calls = Calls(self.engine, self.state, self.metrics)
        interceptors = []
        if tokens is not None:
            interceptors.append(BearerTokenInterceptor(tokens, self.metrics.auth_refused.inc))
        self._server = grpc.aio.server(
            interceptors=interceptors, options=_channel_options(settings)
        )
        add_to_server(
            EmbedServicer(calls),
            self._server,
            lambda method: self.metrics.undecodable_requests.labels(method).inc(),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if settings.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
            )
        # Kubelet gRPC probes speak plaintext only, so with TLS they need a port of their own,
        # which offers nothing but health.
        self._health_server: grpc.aio.Server | None = None
        if settings.health_port:
            self._health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        # The Aleph Alpha REST API, answered by the same engine under the same serving state.
        self._gateway: HttpListener | None = None
        if settings.http_port:
            gateway = Gateway(
                calls,
                tokens=tokens,
                max_body_bytes=settings.max_message_bytes,
            )
            self._gateway = HttpListener(
                gateway.app(),
                settings.host,
                settings.http_port,
                certificate=self.certificate,
                limits=ConnectionLimits(
                    header_timeout_seconds=settings.http_header_timeout_seconds,
                    body_timeout_seconds=settings.http_body_timeout_seconds,
                    max_connections=settings.http_max_connections,
                ),
            )

    async def start(self) -> int:
        """Listen and answer health checks (NOT_SERVING); returns the bound port."""
        await self._set_health(NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        certificate = self.certificate
        self.port = (
            self._server.add_secure_port(address, certificate.grpc_credentials())
            if certificate is not None
            else self._server.add_insecure_port(address)
        )
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await self._server.start()
        if self._health_server is not None:
            health_address = f"{self.settings.host}:{self.settings.health_port}"
            self.health_port = self._health_server.add_insecure_port(health_address)
            if self.health_port == 0:
                raise OSError(f"could not bind {health_address}")
            await self._health_server.start()
        if self._gateway is not None:
            self.http_port = await self._gateway.start()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.host, self.settings.metrics_port)
        self.metrics.track(self.engine.queue, lambda: self.state.in_flight)
        log.info(
            "listening on %s:%d (%s%s%s; not serving until models are loaded)",
            self.settings.host,
            self.port,
            "plaintext" if certificate is None else "mutual TLS" if certificate.mutual else "TLS",
            ", bearer tokens" if self.settings.auth_tokens_file else ", no authentication",
            f", health also on :{self.health_port}" if self.health_port else "",
        )
        if self.http_port:
            log.info("HTTP gateway on %s:%d", self.settings.host, self.http_port)
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
        # In flight on either edge finish; new calls get UNAVAILABLE (HTTP 503) meanwhile.
        stopping = [self._server.stop(grace_seconds)]
        if self._gateway is not None:
            stopping.append(self._gateway.stop(grace_seconds))
        await asyncio.gather(*stopping)
        await self.engine.close()
        if self._health_server is not None:
            await self._health_server.stop(0)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)


def _channel_options(settings: Settings) -> list[tuple[str, int]]:
    limit = settings.max_message_bytes
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Close connections now and then so clients re-resolve and rebalance across pods; a call
        # in flight gets as long as a drain would give it.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.drain_seconds * 1000)),
    ]


async def serve(settings: Settings) -> None:
    provider = tracing.install(
        settings.otlp_endpoint, settings.otlp_protocol, importlib.metadata.version("lamina")
    )
    if provider is not None:
        log.info("tracing: OpenTelemetry spans exported over OTLP")
    try:
        await _serve_until_stopped(settings)
    finally:
        if provider is not None:
            provider.shutdown()  # exports what is still buffered


async def _serve_until_stopped(settings: Settings) -> None:
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
