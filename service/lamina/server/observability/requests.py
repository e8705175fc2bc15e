"""The request being answered: its id and what its access log line says of it.

Each edge opens one scope per call (calls.Calls.answering); a context variable carries it to every
log line written while the call runs (logs.py) and to the engine, which notes the request's
timing on it. The id is the caller's `x-request-id` when it is a sensible one, else a new one;
either way it goes back in the reply's metadata or headers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from lamina.server.domain import Timing

REQUEST_ID_HEADER = "x-request-id"
# Printable and short: an id goes into every log line and a reply header as it came.
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id_from(headers: Mapping[str, str]) -> str:
    given = headers.get(REQUEST_ID_HEADER)
    if given is not None and _ACCEPTED_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def _no_attributes(status: str) -> dict[str, str | int]:
    return {}


@dataclass(frozen=True)
class Incoming:
    """What an edge read off the wire before the call: its headers (gRPC metadata or HTTP
    headers, keys in lower case) and how it names the call in a span."""

    edge: str  # "grpc" or "http"
    request_id: str  # request_id_from(headers), which the edge also returns
    headers: Mapping[str, str] = field(default_factory=dict)
    span_name: str = ""
    attributes: Mapping[str, str | int] = field(default_factory=dict)
    # The edge's own rendering of the outcome (a gRPC status number, an HTTP status code), for
    # the span: each edge maps the API's status names in its own convention.
    status_attributes: Callable[[str], dict[str, str | int]] = _no_attributes


@dataclass
class RequestScope:
    request_id: str
    edge: str
    method: str
    trace_id: str = ""  # 32 hex digits while traced, else empty
    timing: Timing | None = None  # set by the engine once the request's batch has run
    tokens: int | None = None  # the prompt's, once tokenized


current: ContextVar[RequestScope | None] = ContextVar("lamina_request", default=None)


def note_timing(timing: Timing, tokens: int) -> None:
    """The engine's report on the request being answered (if any: some run outside a call)."""
    scope = current.get()
    if scope is not None:
        scope.timing, scope.tokens = timing, tokens
