"""The HTTP listener: uvicorn serving the gateway's app on the gRPC server's event loop.

uvicorn's h11 protocol, with the connection hygiene it lacks by default (`_GuardedProtocol`):

- a request head (the request line and headers) must be in within the header timeout of the
  connection opening, or of its first byte on a kept-alive connection (an idle one is closed
  after uvicorn's keep-alive of 5 s as before);
- a body must be in within the body timeout of its head;
- a connection that misses either is answered 408 (unless the app has begun answering that
  request) and closed;
- an answer the caller stops reading (the write buffer full, and not drained below its low mark
  for the body timeout) ends the connection with a reset, so neither it nor its buffer is held;
- beyond the connection cap, a new connection is answered 503 at once and closed;
- a request framed two ways (Content-Length and Transfer-Encoding, which RFC 9112 says a server
  must not read both of, nor keep the connection of) is answered 400 and closed, as is anything
  h11 cannot read (uvicorn's own plain-text 400 for these becomes the gateway's JSON body).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import socket
import struct
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, ClassVar, Literal

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from lamina.server.errors import ErrorCode
from lamina.server.gateway.errors import HTTP_STATUS
from lamina.server.security import ServingCertificate

log = logging.getLogger(__name__)

# The longest request head h11 buffers (its default): beyond, 400 and closed.
MAX_HEAD_BYTES = 16 * 1024
# A refused connection's answer is written, then its input read and dropped for up to this long
# until the caller closes, so that closing does not reset the connection under the answer.
REFUSAL_LINGER_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_seconds: float = 10
    body_timeout_seconds: float = 30
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout_seconds", "body_timeout_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                flag = "--http-" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a number of seconds > 0, not {value}")
        if self.max_connections < 1:
            raise ValueError(f"--http-max-connections must be >= 1, not {self.max_connections}")


def _answer(status: int, code: str, message: str, retry_after_seconds: int | None = None) -> bytes:
    """A whole response in the gateway's error body, closing the connection, for the listener's
    own answers (written past h11, as the connection ends with it)."""
    body = json.dumps({"error": message[:256], "code": code}).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after_seconds is not None:
        head.append(f"retry-after: {retry_after_seconds}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class _StrictConnection(h11.Connection):
    """h11, refusing what it would read leniently, failing only with RemoteProtocolError (whose
    text it keeps), and telling whether a request's body is being read."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size)
        self.reading_body = False  # between a request's head and its end
        self.refusal = ""

    def next_event(self) -> Any:
        try:
            event = self._next_event()
        except h11.RemoteProtocolError as error:
            self.refusal = str(error)
            raise
        if isinstance(event, h11.Request):
            self.reading_body = True
        elif isinstance(event, h11.EndOfMessage):
            self.reading_body = False
        return event

    def _next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError:
            raise
        except Exception as error:  # h11 should never; if it does, the request is still bad
            raise h11.RemoteProtocolError(f"unreadable request ({type(error).__name__})") from None
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                raise h11.RemoteProtocolError(
                    "both Content-Length and Transfer-Encoding: the body's length is ambiguous"
                )
        return event


class _GuardedProtocol(H11Protocol):
    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn: _StrictConnection = _StrictConnection(MAX_HEAD_BYTES)
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for: Literal["head", "body"] | None = None
        self._unread: asyncio.TimerHandle | None = None  # while the caller reads none of an answer
        self._refused = False

    # -- the connection cap ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            self.transport = transport
            transport.write(
                _answer(
                    503,
                    HTTP_STATUS[ErrorCode.UNAVAILABLE][1],
                    f"the HTTP gateway has {len(self.connections)} connections open, its most; "
                    "try again later",
                    retry_after_seconds=1,
                )
            )
            if transport.can_write_eof():
                transport.write_eof()
            self._timer = self.loop.call_later(REFUSAL_LINGER_SECONDS, transport.close)
            log.debug("refused an HTTP connection: %d open", len(self.connections))
            return
        super().connection_made(transport)
        self._expect("head", self.limits.header_timeout_seconds)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped, see connection_made
        super().data_received(data)

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._unread is not None:
            self._unread.cancel()
        if self._refused:
            return  # never counted, never served
        super().connection_lost(exc)

    # -- header and body timeouts ---------------------------------------------------------------

    def handle_events(self) -> None:
        super().handle_events()
        if self.transport.is_closing():
            self._stop_timer()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # Waiting for a head: timed from the connection's start (armed then) or, on a kept-
            # alive connection, from the head's first byte; until then, keep-alive's timer runs.
            if self._waiting_for != "head" and self.conn.trailing_data[0]:
                self._expect("head", self.limits.header_timeout_seconds)
        elif state is h11.SEND_BODY:
            if self._waiting_for != "body":
                self._expect("body", self.limits.body_timeout_seconds)
        else:
            self._stop_timer()  # the request is in (or the connection is ending)

    def _expect(self, part: Literal["head", "body"], seconds: float) -> None:
        self._stop_timer()
        self._waiting_for = part
        self._timer = self.loop.call_later(seconds, self._timed_out, part, seconds)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._waiting_for = None

    def _timed_out(self, part: Literal["head", "body"], seconds: float) -> None:
        self._timer = None
        self._waiting_for = None
        if self.transport.is_closing():
            return
        log.debug("closing an HTTP connection: its request %s took over %s s", part, seconds)
        message = f"the request {part} did not arrive within {seconds:g} s"
        self._end(_answer(*HTTP_STATUS[ErrorCode.DEADLINE], message))

    # -- a caller that does not read its answer ------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._unread is None:
            seconds = self.limits.body_timeout_seconds
            self._unread = self.loop.call_later(seconds, self._not_reading, seconds)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._unread is not None:
            self._unread.cancel()
            self._unread = None

    def _not_reading(self, seconds: float) -> None:
        self._unread = None
        log.debug("resetting an HTTP connection: its answer unread for %s s", seconds)
        # A plain close would wait for the unread answer to drain; a reset frees it at once.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    # -- framing errors -------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn for anything h11 refuses: the gateway's body, and closed."""
        refusal = self.conn.refusal or "not HTTP/1.1"
        message = f"the request could not be read: {refusal}"
        self._end(_answer(*HTTP_STATUS[ErrorCode.INVALID], message))

    def _end(self, answer: bytes) -> None:
        """Answer (unless the app has begun answering the request whose body this is) and
        close; the app, if it is still reading that body, sees the caller gone."""
        cycle = self.cycle
        if not (self.conn.reading_body and cycle is not None and cycle.response_started):
            self.transport.write(answer)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def _protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    return type("GuardedH11Protocol", (_GuardedProtocol,), {"limits": limits})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGTERM belongs to LaminaServer, which drains gRPC and HTTP together.
        yield


class HttpListener:
    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        certificate: ServingCertificate | None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.limits = limits or ConnectionLimits()
        config = uvicorn.Config(
            app,
            # h11, not httptools even where installed: the guards above are h11's.
            http=_protocol(self.limits),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            ws="none",  # no upgrade hands a connection to a protocol without these guards
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
        # Accepted sockets inherit TCP_NODELAY from the listener (Linux). asyncio sets it only on
        # sockets made with IPPROTO_TCP, and create_server's are not: without it, Nagle's
        # algorithm and delayed ACKs add about 40 ms to every answer on a kept-alive connection.
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
