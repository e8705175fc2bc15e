"""Domain errors, in the domain's own words: a neutral code saying what kind of failure it is, and
for a bad field its path as a tuple. Each edge renders both in its own convention (api/status.py
as gRPC status codes and protobuf field paths, gateway/errors.py as HTTP statuses and the JSON
fields the caller wrote).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID = "invalid"  # the request is wrong: the caller must change it
    NOT_FOUND = "not_found"  # it names a model this server does not serve
    UNSERVABLE = "unservable"  # valid, but no part of this server may serve it as asked
    OVERLOADED = "overloaded"  # no room now: the same request can succeed later
    DEADLINE = "deadline"  # the caller's deadline passed before it ran
    UNAVAILABLE = "unavailable"  # the server is starting up or draining
    INTERNAL = "internal"  # a fault of the server's own


# Where a bad field sits in a request: attribute names and list indices, following the domain
# objects (domain.py). A prompt item's fields sit under its kind, as the API's item types name
# them: ("prompt", 0, "text", "controls", 1, "factor") is the factor of the second control of the
# first item, a text; a batch's prompts are ("prompts", 3, ...).
FieldPath = tuple[str | int, ...]
ITEM_KINDS = frozenset({"text", "token_ids", "image"})


class PromptField(str):
    """A field name that holds one whole prompt, as `prompt` does, under another name
    (InstructableEmbed's `input`): its items render as a prompt's items. A plain string of the
    same name elsewhere (OpenAI's list of inputs) keeps rendering as a plain list."""

    __slots__ = ()


# InstructableEmbed's prompt.
INPUT = PromptField("input")


def path_parts(path: FieldPath) -> Iterator[tuple[str, str | int]]:
    """Each segment of `path` with its role, for an edge to render: "item" for the index of an
    item in a prompt, "kind" for the item kind after it, "items" for a prompt's items taken as a
    list (("prompt", "items"): how many there are), "index" for any other list index, and "name"
    for an attribute."""
    prompt = False  # the segment before names one whole prompt
    item = False  # the segment before is an item's index
    previous: str | int | None = None
    for segment in path:
        if isinstance(segment, int):
            yield ("item" if prompt else "index"), segment
            item, prompt = prompt, not prompt and previous == "prompts"
        elif prompt and segment == "items":
            yield "items", segment
            item = False
        else:
            yield ("kind" if item and segment in ITEM_KINDS else "name"), segment
            item, prompt = False, segment == "prompt" or isinstance(segment, PromptField)
        previous = segment


def dotted(path: FieldPath) -> str:
    """The path as the domain writes it in logs: `prompt[0].text.controls[1].factor`."""
    text = ""
    for role, segment in path_parts(path):
        text += (
            f"[{segment}]" if role in ("item", "index") else f".{segment}" if text else str(segment)
        )
    return text


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
    code = ErrorCode.INVALID

    def __init__(self, field: FieldPath, problem: str) -> None:
        super().__init__(f"{dotted(field)}: {problem}")
        self.field = field
        self.problem = problem

    def moved(self, root: FieldPath, to: FieldPath) -> InvalidArgument:
        """The same error with its field path under `to` where it was under `root`, e.g. a
        batch's ("prompt", 0) read as ("prompts", 3, 0)."""
        if self.field[: len(root)] != root:
            return self
        return InvalidArgument(to + self.field[len(root) :], self.problem)


class ModelNotFound(LaminaError):
    code = ErrorCode.NOT_FOUND

    def __init__(self, model: str, available: list[str]) -> None:
        listed = ", ".join(available) or "none"
        super().__init__(f"model: unknown model {shown(model)}; available: {listed}")


class Unavailable(LaminaError):
    code = ErrorCode.UNAVAILABLE


class HostingUnavailable(LaminaError):
    code = ErrorCode.UNSERVABLE

    def __init__(self, hosting: str, available: tuple[str, ...]) -> None:
        labels = ", ".join(available) or "none"
        super().__init__(
            f"hosting: no worker pool may process a request with hosting {shown(hosting)} "
            f"(this server's pool hostings: {labels})"
        )


class DeadlineExceeded(LaminaError):
    code = ErrorCode.DEADLINE

    def __init__(self, waited_seconds: float) -> None:
        super().__init__(
            f"the deadline passed after {waited_seconds:.3f} s in the queue, before the request ran"
        )


class QueueFull(LaminaError):
    code = ErrorCode.OVERLOADED

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
