"""Errors over HTTP: a domain error's gRPC status name becomes an HTTP status, the body is
`{"error": message, "code": status name}` (api-reference.md), and retryable refusals say when to
come back in Retry-After, which the official client honours."""

from __future__ import annotations

import re

from starlette.responses import JSONResponse

from lamina.server.errors import ErrorCode, InvalidArgument, LaminaError, shown

HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    # The request cannot be served as asked (a hosting no pool honours): the caller's to change.
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.DEADLINE_EXCEEDED: 408,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
UNAUTHENTICATED = "UNAUTHENTICATED"  # raised by the gateway itself, never by the domain
INTERNAL_MESSAGE = "internal error; the server logged the details"
# A caller's string quoted in an error message is cut short (errors.shown); a whole message, as a
# last resort against one a layer below builds from a caller's strings, to this many UTF-8 bytes.
MAX_MESSAGE_BYTES = 1024
# Starting up or draining carries no estimate of its own: a second is the client's first backoff.
UNAVAILABLE_RETRY_SECONDS = 1.0

# Error paths below the api name protobuf fields (`prompt.items[0].text.controls[1].factor`); the
# JSON prompt is a plain list of items with the item's fields (and an image's crop) inline.
_ITEM = re.compile(r"\.items(\[\d+\])(?:\.(?:text|token_ids|image))?(?:\.crop)?")
_ITEMS = re.compile(r"\.items$")


def json_field(field: str) -> str:
    """A field path as the HTTP caller wrote it: `prompt.items[0].text.data` -> `prompt[0].data`,
    `prompts[2].items[0].image.crop` -> `prompts[2][0]`."""
    return _ITEMS.sub("", _ITEM.sub(r"\1", field))


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

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"body: {size} bytes or more, more than the limit of {limit}")


class NoTokenizer(LaminaError):
    code = ErrorCode.NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(f"model: {shown(model)} is an image encoder and has no tokenizer")


def error_response(error: LaminaError) -> JSONResponse:
    if isinstance(error, BodyTooLarge):
        return error_body(413, error.code.value, error.message)
    message = error.message
    if isinstance(error, InvalidArgument):
        message = f"{json_field(error.field)}: {error.problem}"
    retry = error.retry_after_seconds
    if retry is None and error.code is ErrorCode.UNAVAILABLE:
        retry = UNAVAILABLE_RETRY_SECONDS
    return error_body(HTTP_STATUS[error.code], error.code.value, message, retry)


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
    return error_body(500, ErrorCode.INTERNAL.value, INTERNAL_MESSAGE)
