"""Domain errors as gRPC sees them: a status code for each neutral code, and field paths written
as the protobuf fields the caller set (`prompt.items[0].text.controls[1].factor`)."""

from __future__ import annotations

import grpc

from lamina.server.calls import STATUS_NAMES
from lamina.server.errors import FieldPath, InvalidArgument, LaminaError, path_parts

GRPC_STATUS = {code: grpc.StatusCode[name] for code, name in STATUS_NAMES.items()}


def protobuf_field(path: FieldPath) -> str:
    """A prompt's items are its `items` field, each item one field of the `item` oneof:
    ("prompts", 2, 0, "image", "crop") -> `prompts[2].items[0].image.crop`."""
    text = ""
    for role, segment in path_parts(path):
        if role == "item":
            text += f".items[{segment}]"
        elif role == "index":
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else str(segment)
    return text


def status_of(error: LaminaError) -> tuple[grpc.StatusCode, str]:
    """The status code and details a domain error is answered with."""
    message = error.message
    if isinstance(error, InvalidArgument):
        message = f"{protobuf_field(error.field)}: {error.problem}"
    return GRPC_STATUS[error.code], message
