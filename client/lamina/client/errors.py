"""The one exception both clients raise for a failed call."""

from __future__ import annotations

import grpc


class LaminaError(Exception):
    """A call the server (or the channel) answered with a non-OK status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code  # gRPC status name, e.g. "INVALID_ARGUMENT"
        self.message = message

    @staticmethod
    def from_rpc(error: grpc.RpcError) -> LaminaError:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else None
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        return LaminaError(name, str(details or error))
