"""ghz's call-data templates, durations and message sizes, for `lamina-client load`.

ghz renders its data and metadata through Go's text/template once per request. Only the actions
ghz documents for call data are understood here (the CallData fields, `newUUID`,
`randomString N`, `randomInt MIN MAX`); anything else, e.g. a sprig function, is an error up
front rather than a template sent to the server verbatim.
"""

from __future__ import annotations

import random
import re
import string
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime


class TemplateError(ValueError):
    """A template, duration or size that cannot be understood."""


@dataclass(frozen=True)
class CallContext:
    """The values one request's templates see: ghz's CallData."""

    worker_id: str
    request_number: int
    fully_qualified_name: str  # lamina.v1.EmbedService.Embed
    method_name: str  # Embed
    service_name: str  # EmbedService (short, as ghz has it)
    input_name: str  # EmbedRequest
    output_name: str  # EmbedResponse
    timestamp_ns: int  # wall clock when the request was made
    uuid: str  # one UUID per request; newUUID makes a fresh one at every use

    @staticmethod
    def now(
        worker_id: str,
        request_number: int,
        fully_qualified_name: str,
        input_name: str,
        output_name: str,
    ) -> CallContext:
        service, _, method = fully_qualified_name.rpartition(".")
        return CallContext(
            worker_id=worker_id,
            request_number=request_number,
            fully_qualified_name=fully_qualified_name,
            method_name=method,
            service_name=service.rpartition(".")[2],
            input_name=input_name,
            output_name=output_name,
            timestamp_ns=time.time_ns(),
            uuid=str(uuid.uuid4()),
        )


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


# The CallData fields, rendered as Go prints them (false, not False).
_FIELDS: Mapping[str, Callable[[CallContext], object]] = {
    "WorkerID": lambda c: c.worker_id,
    "RequestNumber": lambda c: c.request_number,
    "FullyQualifiedName": lambda c: c.fully_qualified_name,
    "MethodName": lambda c: c.method_name,
    "ServiceName": lambda c: c.service_name,
    "InputName": lambda c: c.input_name,
    "OutputName": lambda c: c.output_name,
    "IsClientStreaming": lambda c: "false",
    "IsServerStreaming": lambda c: "false",
    "Timestamp": lambda c: _rfc3339(c.timestamp_ns),
    "TimestampUnix": lambda c: c.timestamp_ns // 1_000_000_000,
    "TimestampUnixMilli": lambda c: c.timestamp_ns // 1_000_000,
    "TimestampUnixNano": lambda c: c.timestamp_ns,
    "UUID": lambda c: c.uuid,
}

_CHARSET = string.ascii_letters + string.digits
_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.DOTALL)
_SUPPORTED = (
    "{{.Field}} for " + ", ".join(_FIELDS) + "; {{newUUID}}; {{randomString N}}; "
    "{{randomInt MIN MAX}}"
)

Part = str | Callable[[CallContext], str]


def random_string(length: int) -> str:
    """ghz's randomString: letters and digits; a length <= 0 picks one from 2 to 16."""
    if length <= 0:
        length = random.randint(2, 16)
    return "".join(random.choices(_CHARSET, k=length))


@dataclass(frozen=True)
class Template:
    """A text compiled once into literal parts and actions, rendered once per request."""

    parts: tuple[Part, ...]

    @property
    def static(self) -> bool:
        """No actions: every request gets the same text, so it can be parsed once."""
        return all(isinstance(part, str) for part in self.parts)

    def render(self, context: CallContext) -> str:
        return "".join(part if isinstance(part, str) else part(context) for part in self.parts)


def compile_template(text: str) -> Template:
    parts: list[Part] = []
    position = 0
    for match in _ACTION.finditer(text):
        literal = text[position : match.start()]
        if match.group(1):  # "{{-" trims the whitespace before it, as in Go
            literal = literal.rstrip()
        parts.append(literal)
        parts.append(_action(match.group(2).strip(), match.group(0)))
        position = match.end()
        if match.group(3):  # "-}}" trims the whitespace after it
            position = len(text) - len(text[position:].lstrip())
    parts.append(text[position:])
    if "{{" in "".join(p for p in parts if isinstance(p, str)):
        raise TemplateError(f"unclosed template action in {_excerpt(text)}")
    return Template(tuple(p for p in parts if p != ""))


def _action(body: str, whole: str) -> Part:
    words = body.split()
    if len(words) == 1 and words[0].startswith(".") and words[0][1:] in _FIELDS:
        field = _FIELDS[words[0][1:]]
        return lambda context: str(field(context))
    if words == ["newUUID"]:
        return lambda context: str(uuid.uuid4())
    if body.startswith("/*") and body.endswith("*/"):
        return ""  # a Go template comment
    if len(words) == 2 and words[0] == "randomString":
        length = _integer(words[1], whole)
        return lambda context: random_string(length)
    if len(words) == 3 and words[0] == "randomInt":
        low, high = _integer(words[1], whole), _integer(words[2], whole)
        if high <= low:
            raise TemplateError(f"{whole}: randomInt needs MIN < MAX (it draws from [MIN, MAX))")
        return lambda context: str(random.randrange(low, high))
    raise TemplateError(f"unknown template action {whole}; supported: {_SUPPORTED}")


def _integer(word: str, whole: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise TemplateError(f"{whole}: {word!r} is not an integer") from None


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


# Go's time.ParseDuration units.
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str | float) -> float:
    """Seconds from a Go duration ("30s", "2m", "1h30m", "250ms"); a bare number is seconds."""
    if isinstance(text, int | float):
        return float(text)
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d*)?", value):
        return float(value)
    seconds, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or not value:
        raise TemplateError(f"invalid duration {text!r}: use e.g. 30s, 2m, 1h30m or 250ms")
    return seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(?:([kmgt])(i)?)?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from a size as ghz reads them: 1048576, "42 MB" (powers of 1000), "64MiB" (1024)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise TemplateError(f"invalid size {text!r}: use e.g. 64MiB, 42 MB or a number of bytes")
    number, prefix, binary = match.groups()
    power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)
