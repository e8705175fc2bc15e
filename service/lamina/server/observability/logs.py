"""Log lines as text or as JSON (`--log-format`), each carrying the request id and trace id of
the request it was written for, and one access line per call on either edge (`lamina.access`).

A JSON line is one object: time (UTC, ISO 8601), level, logger, message, request_id, trace_id,
and for access lines edge, method, model, status, duration_seconds and, once the request ran,
tokens and its timing (queue, tokenization, inference, parked seconds). No prompt content is
ever logged.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from lamina.server.observability.requests import RequestScope, current

ACCESS = logging.getLogger("lamina.access")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The fields an access line adds to a JSON object (logging's `extra`, under this key).
FIELDS = "lamina"


class RequestFields(logging.Filter):
    """Puts the current request's ids on every record (None outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = current.get()
        record.request_id = scope.request_id if scope is not None else None
        record.trace_id = (scope.trace_id or None) if scope is not None else None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "trace_id": getattr(record, "trace_id", None),
        }
        entry.update(getattr(record, FIELDS, {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            return line
        trace_id = getattr(record, "trace_id", None)
        traced = f" trace_id={trace_id}" if trace_id else ""
        return f"{line} [request_id={request_id}{traced}]"


def configure(level: str, log_format: str) -> None:
    """Every logger of the process (uvicorn's and gRPC's too) through one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestFields())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def access(scope: RequestScope, model: str, status: str, seconds: float) -> None:
    """The call's access line, written while its scope is current."""
    fields: dict[str, Any] = {
        "edge": scope.edge,
        "method": scope.method,
        "model": model,
        "status": status,
        "duration_seconds": round(seconds, 6),
    }
    if scope.tokens is not None:
        fields["tokens"] = scope.tokens
    if scope.timing is not None:
        t = scope.timing
        fields |= {
            "queue_seconds": round(t.queue_seconds, 6),
            "tokenization_seconds": round(t.tokenization_seconds, 6),
            "inference_seconds": round(t.inference_seconds, 6),
            "parked_seconds": round(t.parked_seconds, 6),
        }
    ACCESS.info(
        "%s %s %s %s %.1f ms",
        scope.edge,
        scope.method,
        model or "-",
        status,
        seconds * 1000,
        extra={FIELDS: fields},
    )
