"""Channel settings shared by the blocking and the asyncio client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Metadata = Sequence[tuple[str, str]]  # gRPC call metadata, e.g. [("authorization", "Bearer t")]
Options = Sequence[tuple[str, Any]]  # gRPC channel arguments

# Replies carry one vector per requested layer and pooling, far past gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(extra: Options | None) -> list[tuple[str, Any]]:
    """Lamina's message limits, with the caller's options taking precedence."""
    # Merged by key, since gRPC keeps the first of two equal keys rather than the last.
    merged: dict[str, Any] = {
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    }
    merged.update(extra or ())
    return list(merged.items())
