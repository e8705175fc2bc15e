"""Who may call: TLS (optionally mutual) on the gRPC port, and bearer tokens on every RPC but
grpc.health.v1 (and on the HTTP gateway's routes), read from a file that is re-read when it
changes (a mounted Secret updates in place). Tokens are never logged: only the file's path and how
many it holds."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"

if TYPE_CHECKING:  # generic in the type stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path  # PEM chain the server presents
    private_key: Path
    client_ca: Path | None = None  # when set, clients must present a certificate it signed (mTLS)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key.read_bytes(), self.certificate.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


class TokenFile:
    """The accepted bearer tokens: one per line; blank lines and lines starting with # ignored.

    The file is checked for changes at most every `recheck_seconds`, on the calls themselves, so a
    rotated Secret takes effect without a restart. If the file cannot be read, the tokens read last
    stay in force (a Secret update swaps a symlink, and a half-written file must not lock all
    callers out); with none ever read, every call is refused.
    """

    def __init__(self, path: Path, *, recheck_seconds: float = 1.0) -> None:
        self.path = path
        self.recheck_seconds = recheck_seconds
        self._tokens: tuple[bytes, ...] = ()
        self._seen: tuple[int, int, int] | None = None
        self._checked_at = -float("inf")
        self._reload()

    def accepts(self, token: str) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= self.recheck_seconds:
            self._reload()
        offered = token.encode()
        # Every token is compared, in constant time each, so timing tells nothing of which or how
        # much matched.
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(offered, known)
        return matched

    def _reload(self) -> None:
        self._checked_at = time.monotonic()
        try:
            stat = os.stat(self.path)
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if seen == self._seen:
                return
            lines = self.path.read_text().splitlines()
        except OSError as error:
            log.warning("cannot read the auth tokens file %s: %s", self.path, error.strerror)
            return
        self._tokens = tuple(
            line.strip().encode()
            for line in lines
            if line.strip() and not line.strip().startswith("#")
        )
        self._seen = seen
        log.info("auth: %d token(s) from %s", len(self._tokens), self.path)
        if not self._tokens:
            log.warning("auth: %s holds no token, so every call is refused", self.path)


class BearerTokenInterceptor(_ServerInterceptor):
    """UNAUTHENTICATED for any RPC without an accepted `authorization: Bearer <token>`, except
    health checks, which load balancers and kubelets make without credentials."""

    def __init__(self, tokens: TokenFile, on_refused: Callable[[], None] = lambda: None) -> None:
        self.tokens = tokens
        self.on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        problem = self._problem(details.invocation_metadata)
        if problem is None:
            return handler
        self.on_refused()
        return _refusal(handler, problem)

    def _problem(self, metadata: Any) -> str | None:
        values = [value for key, value in metadata or () if key == "authorization"]
        return bearer_problem(self.tokens, str(values[0]) if values else None)


def bearer_problem(tokens: TokenFile, authorization: str | None) -> str | None:
    """Why an `authorization` value (gRPC metadata or HTTP header) is refused; None: accepted."""
    if authorization is None:
        return "missing credentials: send 'authorization: Bearer <token>'"
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "the authorization must be 'Bearer <token>'"
    if not tokens.accepts(token.strip()):
        return "the bearer token is not accepted"
    return None


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], problem: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same streaming shape as `handler` that only aborts."""

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

    async def abort_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        yield  # makes this an async generator, as a streaming handler must be

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **codec)
    return grpc.stream_stream_rpc_method_handler(abort_stream, **codec)
