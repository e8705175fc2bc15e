"""Domain errors. Each carries the gRPC status name it maps to; the api layer does the mapping."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


# How much of a caller's string an error message repeats: enough to recognise it, never so much
# that the message outgrows what a client accepts as metadata.
SHOWN_CHARS = 64


def shown(value: str) -> str:
    """A caller's string as an error message quotes it: repr, cut to SHOWN_CHARS."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


class LaminaError(Exception):
    code = ErrorCode.INTERNAL
    retry_after_seconds: float | None = None  # set where retrying later can succeed

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LaminaError):
    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def moved(self, root: str, to: str) -> InvalidArgument:
        """The same error with its field path under `to` where it was under `root`, e.g. a
        batch's `prompt.items[0]` read as `prompts[3].items[0]`."""
        if self.field != root and not self.field.startswith((f"{root}.", f"{root}[")):
            return self
        return InvalidArgument(to + self.field.removeprefix(root), self.problem)


class ModelNotFound(LaminaError):
    code = ErrorCode.NOT_FOUND

    def __init__(self, model: str, available: list[str]) -> None:
        listed = ", ".join(available) or "none"
        super().__init__(f"model: unknown model {shown(model)}; available: {listed}")


class Unavailable(LaminaError):
    code = ErrorCode.UNAVAILABLE


class HostingUnavailable(LaminaError):
    code = ErrorCode.FAILED_PRECONDITION

    def __init__(self, hosting: str, available: tuple[str, ...]) -> None:
        labels = ", ".join(available) or "none"
        super().__init__(
            f"hosting: no worker pool may process a request with hosting {shown(hosting)} "
            f"(this server's pool hostings: {labels})"
        )


class DeadlineExceeded(LaminaError):
    code = ErrorCode.DEADLINE_EXCEEDED

    def __init__(self, waited_seconds: float) -> None:
        super().__init__(
            f"the deadline passed after {waited_seconds:.3f} s in the queue, before the request ran"
        )


class QueueFull(LaminaError):
    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, requests: int, tokens: int, limits: str, retry_after_seconds: float) -> None:
        super().__init__(
            f"queue full: {requests} requests / {tokens} tokens waiting ({limits}); "
            f"retry after {retry_after_seconds:.1f} s"
        )
        self.retry_after_seconds = retry_after_seconds


class NonFiniteResult(LaminaError):
    """The graph produced NaN or infinity: never answered as if it were an embedding."""

    code = ErrorCode.INTERNAL

    def __init__(self, model_version: str, layer: int, pooling: str) -> None:
        super().__init__(
            f"the {pooling} embedding of layer {layer} from {model_version} is not finite; "
            "nothing was returned (the server counted it in lamina_nonfinite_results_total)"
        )
