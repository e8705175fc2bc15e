"""The one exception both clients raise for a failed call."""

from __future__ import annotations

import grpc


class LaminaError(Exception):
    """A call the server (or the channel) answered with a non-OK status.

    `code` is the gRPC status name (e.g. "INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE");
    `message` is the server's explanation.
    """

    def __init__(self, code: str, message: str) -> None:
        # Both as args, so the error pickles (e.g. across a process pool) and compares by value.
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> LaminaError:
        # Both clients' errors have code() and details(), but share no class that declares them
        # (grpc.aio.AioRpcError is not a grpc.Call); a bare RpcError has neither.
        code = getattr(error, "code", None)
        details = getattr(error, "details", None)
        status = code() if callable(code) else None
        name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
        return cls(name, (details() if callable(details) else None) or str(error))
