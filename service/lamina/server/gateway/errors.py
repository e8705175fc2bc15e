"""Errors over HTTP: a domain error's neutral code becomes an HTTP status and the body
`{"error": message, "code": name}` (docs/api.md: the names are gRPC's status names, so a
caller reads one vocabulary over both edges), field paths are written as the JSON fields the
caller sent, and retryable refusals say when to come back in Retry-After, which the official
client honours."""

from __future__ import annotations

from starlette.responses import JSONResponse

from lamina.server.calls import STATUS_NAMES
from lamina.server.errors import (
    ErrorCode,
    FieldPath,
    InvalidArgument,
    LaminaError,
    path_parts,
    shown,
)

_STATUS = {
    ErrorCode.INVALID: 400,
    ErrorCode.NOT_FOUND: 404,
    # The request cannot be served as asked (a hosting no pool honours): the caller's to change.
    ErrorCode.UNSERVABLE: 400,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.DEADLINE: 408,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
# Each neutral code's HTTP status and the name the body's `code` carries.
HTTP_STATUS = {code: (status, STATUS_NAMES[code]) for code, status in _STATUS.items()}
INVALID_ARGUMENT = HTTP_STATUS[ErrorCode.INVALID][1]
# A call's outcome, by the API's status name, as the HTTP status it was answered with.
HTTP_STATUS_BY_NAME = {name: status for status, name in HTTP_STATUS.values()} | {
    "OK": 200,
    "CANCELLED": 499,
}
UNAUTHENTICATED = "UNAUTHENTICATED"  # raised by the gateway itself, never by the domain
INTERNAL_MESSAGE = "internal error; the server logged the details"
# A caller's string quoted in an error message is cut short (errors.shown); a whole message, as a
# last resort against one a layer below builds from a caller's strings, to this many UTF-8 bytes.
MAX_MESSAGE_BYTES = 1024
# Starting up or draining carries no estimate of its own: a second is the client's first backoff.
UNAVAILABLE_RETRY_SECONDS = 1.0


def json_field(path: FieldPath) -> str:
    """A field path as the HTTP caller wrote it: a JSON prompt is the plain list of its items,
    each item's fields (an image's crop among them) inline beside its `type`:
    ("prompt", 0, "text", "data") -> `prompt[0].data`, ("prompts", 2, 0, "image", "crop") ->
    `prompts[2][0]`."""
    text = ""
    image = False  # the segment before is an image item's kind
    for role, segment in path_parts(path):
        if role in ("item", "index"):
            text += f"[{segment}]"
        elif role == "name" and not (image and segment == "crop"):
            text += f".{segment}" if text else str(segment)
        image = role == "kind" and segment == "image"
    return text


def _bounded(message: str) -> str:
    """A message any JSON encoder takes (lone surrogates escaped), of bounded size, whatever it
    quotes."""
    encoded = message.encode("utf-8", "backslashreplace")
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return encoded.decode("utf-8")
    cut = encoded[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")  # no character cut in two
    return f"{cut}... ({len(message)} characters)"


class BodyTooLarge(LaminaError):
    """A body over --max-message-mb: RESOURCE_EXHAUSTED as an oversized gRPC message, but 413,
    as no retry can help it."""

    code = ErrorCode.OVERLOADED

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"body: {size} bytes or more, more than the limit of {limit}")


class NoTokenizer(LaminaError):
    code = ErrorCode.NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(f"model: {shown(model)} is an image encoder and has no tokenizer")


def error_response(error: LaminaError) -> JSONResponse:
    status, code = HTTP_STATUS[error.code]
    if isinstance(error, BodyTooLarge):
        return error_body(413, code, error.message)
    message = error.message
    if isinstance(error, InvalidArgument):
        message = f"{json_field(error.field)}: {error.problem}"
    retry = error.retry_after_seconds
    if retry is None and error.code is ErrorCode.UNAVAILABLE:
        retry = UNAVAILABLE_RETRY_SECONDS
    return error_body(status, code, message, retry)


def error_body(
    status: int, code: str, message: str, retry_after_seconds: float | None = None
) -> JSONResponse:
    headers = {}
    if retry_after_seconds is not None:
        # Whole seconds (RFC 9110), at least one, as the gRPC retry-after trailer.
        headers["Retry-After"] = str(max(1, round(retry_after_seconds)))
    if code == UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": _bounded(message), "code": code}
    return JSONResponse(body, status_code=status, headers=headers)


def internal_error() -> JSONResponse:
    """A bug of the server's own, in the same body; the details belong in the log."""
    return error_body(500, HTTP_STATUS[ErrorCode.INTERNAL][1], INTERNAL_MESSAGE)
