"""Channel settings shared by the blocking and the asyncio client: message limits, TLS and the
bearer token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

Metadata = Sequence[tuple[str, str]]  # gRPC call metadata, e.g. [("authorization", "Bearer t")]
Options = Sequence[tuple[str, Any]]  # gRPC channel arguments

# Replies carry one vector per requested layer and pooling, far past gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Security:
    """How a client proves itself and checks the server.

    `tls` turns TLS on (the system's roots unless `root_certificates` names a CA, PEM bytes);
    `certificate_chain` and `private_key` are the client's own, for servers that require mTLS;
    `server_name` overrides the name checked in the server's certificate; `token` is sent as
    `authorization: Bearer <token>` with every call.
    """

    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None
    token: str | None = None

    @staticmethod
    def from_files(
        *,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
        token_file: str | Path | None = None,
        token: str | None = None,
    ) -> Security:
        """Reads the PEM files and the token file (its first line); any file implies TLS but
        the token's."""
        if (cert_file is None) != (key_file is None):
            raise ValueError("a client certificate needs both its certificate and its key file")

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        if token_file:
            token = Path(token_file).read_text().strip().splitlines()[0].strip()
        return Security(
            tls=tls or bool(ca_file or cert_file),
            root_certificates=read(ca_file),
            certificate_chain=read(cert_file),
            private_key=read(key_file),
            server_name=server_name,
            token=token or None,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def channel_options(
    extra: Options | None, security: Security | None = None
) -> list[tuple[str, Any]]:
    """Lamina's message limits, with the caller's options taking precedence."""
    # Merged by key, since gRPC keeps the first of two equal keys rather than the last.
    merged: dict[str, Any] = {
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    }
    if security is not None and security.server_name:
        merged["grpc.ssl_target_name_override"] = security.server_name
    merged.update(extra or ())
    return list(merged.items())


def open_channel(target: str, security: Security, options: Options | None = None) -> grpc.Channel:
    """A blocking channel to `target`, over TLS when `security.tls`."""
    credentials = security.credentials()
    merged = channel_options(options, security)
    if credentials is None:
        return grpc.insecure_channel(target, options=merged)
    return grpc.secure_channel(target, credentials, options=merged)


def open_aio_channel(
    target: str, security: Security, options: Options | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to `target`, over TLS when `security.tls`."""
    credentials = security.credentials()
    merged = channel_options(options, security)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=merged)
    return grpc.aio.secure_channel(target, credentials, options=merged)
