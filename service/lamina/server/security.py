"""Who may call: TLS (optionally mutual) on the gRPC and HTTP ports, and bearer tokens on every
RPC but grpc.health.v1 (and on the HTTP gateway's routes). Certificates and tokens are read from
files that are re-read when they change (a mounted Secret updates in place), so rotating either
needs no restart. Secrets are never logged: only the files' paths and how many tokens they hold."""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# How often, at most, a watched file is looked at (FileWatch), unless a caller says otherwise:
# read when each watch is made, so a test can lower it before starting a server.
RECHECK_SECONDS = 1.0

if TYPE_CHECKING:  # generic in the type stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class FileWatch:
    """Whether any of some files changed since last asked, looking at most every
    `recheck_seconds` (default RECHECK_SECONDS) on `clock`: cheap enough to ask on every call or
    connection.

    A change is a new inode, mtime, ctime or size; a Secret's update swaps a symlink, which gives
    new inodes. A file that cannot be looked at counts as changed, so the reader tries it and
    says why it fails. The first question always answers yes.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        recheck_seconds: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = tuple(paths)
        self.recheck_seconds = RECHECK_SECONDS if recheck_seconds is None else recheck_seconds
        self._clock = clock
        self._seen: tuple[tuple[int, int, int, int], ...] | None = None
        self._checked_at = -float("inf")

    def changed(self) -> bool:
        now = self._clock()
        if now - self._checked_at < self.recheck_seconds:
            return False
        self._checked_at = now
        try:
            stats = [os.stat(path) for path in self.paths]
        except OSError:
            self._seen = None
            return True
        seen = tuple((s.st_ino, s.st_mtime_ns, s.st_ctime_ns, s.st_size) for s in stats)
        if seen == self._seen:
            return False
        self._seen = seen
        return True


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path  # PEM chain the server presents
    private_key: Path
    client_ca: Path | None = None  # when set, clients must present a certificate it signed (mTLS)

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.certificate, self.private_key) + ((self.client_ca,) if self.client_ca else ())

    def load(self) -> TlsIdentity:
        """The files' contents, checked: a ValueError names the file that does not load."""
        try:
            chain = self.certificate.read_bytes()
            key = self.private_key.read_bytes()
            client_ca = self.client_ca.read_bytes() if self.client_ca else None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            # Checks that the key is the certificate's: gRPC would only find out at a handshake.
            # (ssl reads files only, hence the second read.)
            context.load_cert_chain(self.certificate, self.private_key)
            if client_ca is not None:
                context.load_verify_locations(cadata=client_ca.decode("ascii"))
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ValueError, ssl.SSLError) as error:
            raise ValueError(
                f"TLS: {self.certificate} with {self.private_key}"
                + (f" and client CA {self.client_ca}" if self.client_ca else "")
                + f" do not load: {error}"
            ) from error
        return TlsIdentity(chain, key, client_ca, context)


@dataclass(frozen=True)
class TlsIdentity:
    """What the TLS files held when last read: PEM bytes for gRPC, a context for HTTP."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    ssl_context: ssl.SSLContext

    def grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.certificate_chain)], root_certificates=self.client_ca
        )


class ServingCertificate:
    """The server's TLS identity, re-read when its files change: a renewed certificate (say
    cert-manager rewriting the mounted Secret) is presented from the next new connection on, on
    the gRPC and the HTTP port alike, with no restart. Connections already open keep theirs.

    Files that do not load, as while a certificate and its key are rewritten one after the other,
    leave the last good identity in force. Whether clients must present a certificate is fixed
    at start; the client CA it is checked against is reloaded like the rest.
    """

    def __init__(self, files: TlsFiles, *, recheck_seconds: float | None = None) -> None:
        self.files = files
        self._watch = FileWatch(files.paths, recheck_seconds)
        self._watch.changed()
        self._identity = files.load()  # bad files at start: the ValueError stops the server
        self._given_to_grpc = self._identity
        # gRPC asks for the identity from its own threads, HTTP from the event loop.
        self._lock = threading.Lock()

    @property
    def mutual(self) -> bool:
        return self.files.client_ca is not None

    def current(self) -> TlsIdentity:
        with self._lock:
            if self._watch.changed():
                try:
                    self._identity = self.files.load()
                except ValueError as error:
                    log.warning("keeping the TLS certificate in use: %s", error)
                else:
                    log.info("TLS: new certificate from %s", self.files.certificate)
            return self._identity

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._identity.grpc_configuration(),
            # gRPC documents None as "keep the current one"; the type stubs leave it out.
            self._grpc_configuration_if_new,  # type: ignore[arg-type]
            require_client_authentication=self.mutual,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The HTTP listener's context: the identity loaded at start, which fixes whether client
        certificates are required, handing each new connection, at its ClientHello, the current
        identity's context."""
        front = self._identity.ssl_context
        front.sni_callback = self._on_client_hello
        return front

    def _grpc_configuration_if_new(self) -> grpc.ServerCertificateConfiguration | None:
        """Asked by gRPC before every TLS handshake; None keeps the configuration it has."""
        identity = self.current()
        with self._lock:
            if identity is self._given_to_grpc:
                return None
            self._given_to_grpc = identity
        return identity.grpc_configuration()

    def _on_client_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # The verify mode stays the front context's; certificate, key and CA store are swapped.
        connection.context = self.current().ssl_context


class TokenFile:
    """The accepted bearer tokens: one per line; blank lines and lines starting with # ignored.

    The file is checked for changes at most every `recheck_seconds` (default RECHECK_SECONDS), on
    the calls themselves, so a rotated Secret takes effect without a restart. If the file cannot
    be read, the tokens read last stay in force (a Secret update swaps a symlink, and a
    half-written file must not lock all callers out); with none ever read, every call is refused.
    """

    def __init__(self, path: Path, *, recheck_seconds: float | None = None) -> None:
        self.path = path
        self._watch = FileWatch((path,), recheck_seconds)
        self._tokens: tuple[bytes, ...] = ()
        self._refresh()

    def accepts(self, token: str) -> bool:
        self._refresh()
        offered = token.encode()
        # Every token is compared, in constant time each, so timing tells nothing of which or how
        # much matched.
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(offered, known)
        return matched

    def _refresh(self) -> None:
        if not self._watch.changed():
            return
        try:
            lines = self.path.read_text().splitlines()
        except OSError as error:
            log.warning("cannot read the auth tokens file %s: %s", self.path, error.strerror)
            return
        self._tokens = tuple(
            line.strip().encode()
            for line in lines
            if line.strip() and not line.strip().startswith("#")
        )
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
