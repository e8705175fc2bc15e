"""security.py as units: the file watch's throttle on a fake clock, the tokens file's rules, the
bearer check and its interceptor, and the reloading TLS identity (certificates from trustme)."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from lamina.server import security
from lamina.server.security import (
    HEALTH_PREFIX,
    BearerTokenInterceptor,
    FileWatch,
    ServingCertificate,
    TlsFiles,
    TokenFile,
    bearer_problem,
)

GOOD, OTHER = "token-alpha-7f3c", "token-beta-91d2"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The log lines, each exactly as an operator reads it."""
    return [record.getMessage() for record in caplog.records]


def rewrite(path: Path, text: str) -> None:
    """Replace a file whole, as a Secret update does (a new inode)."""
    path.with_suffix(".new").write_text(text)
    os.replace(path.with_suffix(".new"), path)


# --- FileWatch -----------------------------------------------------------------------------------


def test_a_watch_says_changed_first_then_only_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "watched"
    path.write_text("one")
    clock = Clock()
    watch = FileWatch((path,), 1.0, clock=clock)
    assert watch.changed()  # the first question always answers yes
    clock.now += 5
    assert not watch.changed()  # looked again: nothing new
    rewrite(path, "two")
    clock.now += 5
    assert watch.changed()
    clock.now += 5
    assert not watch.changed()


def test_a_watch_looks_at_most_once_per_recheck_interval(tmp_path: Path) -> None:
    path = tmp_path / "watched"
    path.write_text("one")
    clock = Clock()
    watch = FileWatch((path,), 1.0, clock=clock)
    assert watch.changed()
    rewrite(path, "two")
    clock.now += 0.999
    assert not watch.changed()  # changed, but not looked at yet
    clock.now += 0.001
    assert watch.changed()  # a full interval since the last look
    rewrite(path, "three")
    clock.now += 0.5
    assert not watch.changed()
    clock.now += 0.5
    assert watch.changed()


def test_a_watch_sees_any_file_of_several_and_a_missing_one_as_changed(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("a")
    second.write_text("b")
    clock = Clock()
    watch = FileWatch((first, second), 0.0, clock=clock)
    assert watch.changed() and not watch.changed()
    rewrite(second, "b2")
    assert watch.changed()
    second.unlink()
    assert watch.changed()  # cannot be looked at: the reader must try, and say why it fails
    assert watch.changed()  # and again at each look while it is missing
    second.write_text("b3")
    assert watch.changed() and not watch.changed()


def test_a_same_size_rewrite_in_place_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "watched"
    path.write_text("aaaa")
    watch = FileWatch((path,), 0.0)
    assert watch.changed()
    stat = path.stat()
    path.write_text("bbbb")  # same inode, same size: only the times tell
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert watch.changed()


def test_the_default_interval_is_read_when_a_watch_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert security.RECHECK_SECONDS == 1.0
    assert FileWatch((tmp_path,)).recheck_seconds == 1.0
    monkeypatch.setattr(security, "RECHECK_SECONDS", 0.25)
    assert FileWatch((tmp_path,)).recheck_seconds == 0.25
    assert FileWatch((tmp_path,), 3.0).recheck_seconds == 3.0
    assert FileWatch((tmp_path,), 0.0).recheck_seconds == 0.0


# --- TokenFile -----------------------------------------------------------------------------------


def test_the_tokens_file_takes_one_token_a_line_without_comments_or_blanks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "tokens"
    path.write_text(f"# rotated 2026-11\n  {GOOD}  \n\n{OTHER}\n   # {OTHER}x indented comment\n")
    tokens = TokenFile(path)
    assert tokens.accepts(GOOD) and tokens.accepts(OTHER)
    for refused in ("", "# rotated 2026-11", f"{OTHER}x", "#", GOOD[:-1], GOOD + "x"):
        assert not tokens.accepts(refused), refused
    assert logged(caplog) == [f"auth: 2 token(s) from {path}"]  # the count, never the tokens


def test_a_tokens_file_without_tokens_refuses_every_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "tokens"
    path.write_text("# nothing yet\n\n")
    tokens = TokenFile(path)
    assert not tokens.accepts("") and not tokens.accepts("# nothing yet")
    assert logged(caplog) == [
        f"auth: 0 token(s) from {path}",
        f"auth: {path} holds no token, so every call is refused",
    ]


def test_tokens_are_reloaded_and_an_unreadable_file_keeps_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{GOOD}\n")
    tokens = TokenFile(path, recheck_seconds=0.0)
    assert tokens.accepts(GOOD) and not tokens.accepts(OTHER)
    rewrite(path, f"{OTHER}\n")
    assert tokens.accepts(OTHER) and not tokens.accepts(GOOD)
    path.unlink()
    assert tokens.accepts(OTHER)  # what was read last stays in force
    assert logged(caplog)[-1] == (
        f"cannot read the auth tokens file {path}: No such file or directory"
    )


def test_a_tokens_file_never_read_refuses_every_call(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "missing")
    assert not tokens.accepts(GOOD) and not tokens.accepts("")


def test_tokens_are_not_reread_within_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(security, "RECHECK_SECONDS", 3600.0)
    path = tmp_path / "tokens"
    path.write_text(f"{GOOD}\n")
    tokens = TokenFile(path)
    rewrite(path, f"{OTHER}\n")
    assert tokens.accepts(GOOD) and not tokens.accepts(OTHER)


# --- the bearer check ----------------------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> TokenFile:
    path = tmp_path / "tokens"
    path.write_text(f"{GOOD}\n")
    return TokenFile(path)


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        (None, "missing credentials: send 'authorization: Bearer <token>'"),
        (f"Basic {GOOD}", "the authorization must be 'Bearer <token>'"),
        (GOOD, "the authorization must be 'Bearer <token>'"),
        ("Bearer", "the authorization must be 'Bearer <token>'"),
        ("Bearer    ", "the authorization must be 'Bearer <token>'"),
        (f"Bearer {OTHER}", "the bearer token is not accepted"),
        (f"Bearer {GOOD}", None),
        (f"bearer {GOOD}", None),  # the scheme is case-insensitive (RFC 9110)
        (f"BEARER  {GOOD} ", None),  # spaces around the token do not count
    ],
)
def test_bearer_problems(tokens: TokenFile, authorization: str | None, problem: str | None) -> None:
    assert bearer_problem(tokens, authorization) == problem


class AbortCalled(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise AbortCalled


class Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


async def reply(request: Any, context: Any) -> str:
    return "answered"


async def replies(request: Any, context: Any) -> Any:
    yield "answered"


def decode(data: bytes) -> str:
    return data.decode()


def encode(text: str) -> bytes:
    return text.encode()


CODEC: dict[str, Any] = {"request_deserializer": decode, "response_serializer": encode}
HANDLERS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler(reply, **CODEC),
    "unary_stream": grpc.unary_stream_rpc_method_handler(replies, **CODEC),
    "stream_unary": grpc.stream_unary_rpc_method_handler(reply, **CODEC),
    "stream_stream": grpc.stream_stream_rpc_method_handler(replies, **CODEC),
}


def intercepted(
    tokens: TokenFile,
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    method: str,
    metadata: tuple[tuple[str, str], ...],
    refused: list[int],
) -> Awaitable[grpc.RpcMethodHandler[Any, Any]]:
    interceptor = BearerTokenInterceptor(tokens, lambda: refused.append(1))
    details = Details(method, metadata)

    async def continuation(asked: Any) -> Any:
        assert asked is details  # gRPC finds the handler of this very call
        return handler

    return interceptor.intercept_service(continuation, details)  # type: ignore[arg-type]


async def test_a_call_with_an_accepted_token_keeps_its_handler(tokens: TokenFile) -> None:
    refused: list[int] = []
    handler = HANDLERS["unary_unary"]
    metadata = (("x-other", "1"), ("authorization", f"Bearer {GOOD}"))
    assert (
        await intercepted(tokens, handler, "/lamina.v1.EmbedService/Embed", metadata, refused)
        is handler
    )
    assert refused == []


async def test_health_needs_no_token_and_unknown_methods_stay_unknown(tokens: TokenFile) -> None:
    refused: list[int] = []
    handler = HANDLERS["unary_unary"]
    health = await intercepted(tokens, handler, HEALTH_PREFIX + "Check", (), refused)
    assert health is handler
    assert await intercepted(tokens, None, "/no.Such/Method", (), refused) is None
    assert refused == []


@pytest.mark.parametrize("shape", sorted(HANDLERS))
async def test_a_refused_call_aborts_unauthenticated_in_its_own_shape(
    tokens: TokenFile, shape: str
) -> None:
    refused: list[int] = []
    metadata = (("authorization", f"Bearer {OTHER}"),)
    handler = await intercepted(
        tokens, HANDLERS[shape], "/lamina.v1.EmbedService/X", metadata, refused
    )
    assert refused == [1]
    shapes = [name for name in HANDLERS if getattr(handler, name) is not None]
    assert shapes == [shape]
    # It reads and writes the method's messages as the real handler would.
    assert (handler.request_deserializer, handler.response_serializer) == (decode, encode)
    behaviour: Callable[..., Any] = getattr(handler, shape)
    context = Context()
    with pytest.raises(AbortCalled):
        outcome = behaviour(None, context)
        if shape.endswith("stream"):
            async for _ in outcome:
                pass
        else:
            await outcome
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not accepted")


async def test_a_call_without_credentials_is_told_how_to_send_them(tokens: TokenFile) -> None:
    handler = await intercepted(
        tokens, HANDLERS["unary_unary"], "/lamina.v1.EmbedService/Embed", (), []
    )
    behaviour: Any = handler.unary_unary
    context = Context()
    with pytest.raises(AbortCalled):
        await behaviour(None, context)
    assert context.aborted is not None and "missing credentials" in context.aborted[1]


# --- the serving certificate ---------------------------------------------------------------------


class Identity:
    """A certificate and key issued by a fresh CA, written where the server reads them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.certificate, self.key = folder / "tls.crt", folder / "tls.key"

    def issue(self, ca: trustme.CA, *, key: bool = True) -> trustme.LeafCert:
        leaf = ca.issue_cert("localhost")
        leaf.cert_chain_pems[0].write_to_path(str(self.certificate) + ".new")
        os.replace(str(self.certificate) + ".new", self.certificate)
        if key:
            leaf.private_key_pem.write_to_path(str(self.key) + ".new")
            os.replace(str(self.key) + ".new", self.key)
        return leaf


def test_tls_files_name_what_does_not_load(tmp_path: Path) -> None:
    identity = Identity(tmp_path)
    identity.issue(trustme.CA())
    ca = tmp_path / "ca.pem"
    assert TlsFiles(identity.certificate, identity.key).paths == (
        identity.certificate,
        identity.key,
    )
    assert TlsFiles(identity.certificate, identity.key, ca).paths == (
        identity.certificate,
        identity.key,
        ca,
    )
    with pytest.raises(ValueError) as missing:
        TlsFiles(identity.certificate, identity.key, ca).load()
    message = str(missing.value)
    assert message.startswith(f"TLS: {identity.certificate} with {identity.key} and client CA {ca}")
    assert "do not load" in message
    other = Identity(tmp_path / "other")
    other.folder.mkdir()
    other.issue(trustme.CA())
    with pytest.raises(ValueError) as mismatched:
        TlsFiles(identity.certificate, other.key).load()
    assert str(mismatched.value).startswith(
        f"TLS: {identity.certificate} with {other.key} do not load: "
    )


def test_an_identity_loads_its_pem_bytes_and_a_context(tmp_path: Path) -> None:
    identity = Identity(tmp_path)
    leaf = identity.issue(trustme.CA())
    loaded = TlsFiles(identity.certificate, identity.key).load()
    assert loaded.certificate_chain == leaf.cert_chain_pems[0].bytes()
    assert loaded.private_key == leaf.private_key_pem.bytes()
    assert loaded.client_ca is None
    assert loaded.ssl_context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert loaded.ssl_context.verify_mode == ssl.CERT_NONE
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    mutual = TlsFiles(identity.certificate, identity.key, tmp_path / "client-ca.pem").load()
    assert mutual.client_ca == client_ca.cert_pem.bytes()
    assert mutual.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_grpc_gets_the_identity_its_client_ca_and_whether_clients_must_present_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = Identity(tmp_path)
    identity.issue(trustme.CA())
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    files = TlsFiles(identity.certificate, identity.key, tmp_path / "client-ca.pem")
    serving = ServingCertificate(files)
    made: list[tuple[Any, ...]] = []

    def configuration(pairs: Any, root_certificates: Any = None) -> Any:
        made.append(("configuration", pairs, root_certificates))
        return f"configuration {len(made)}"

    def credentials(initial: Any, fetch: Any, require_client_authentication: bool) -> Any:
        made.append(("credentials", initial, fetch, require_client_authentication))
        return "credentials"

    monkeypatch.setattr(grpc, "ssl_server_certificate_configuration", configuration)
    monkeypatch.setattr(grpc, "dynamic_ssl_server_credentials", credentials)
    handed: Any = serving.grpc_credentials()
    assert handed == "credentials"  # what gRPC made, handed to the server
    current = serving.current()
    assert made == [
        (
            "configuration",
            [(current.private_key, current.certificate_chain)],
            current.client_ca,
        ),
        ("credentials", "configuration 1", serving._grpc_configuration_if_new, True),
    ]


def test_a_renewed_certificate_replaces_the_identity_and_a_broken_one_does_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    identity = Identity(tmp_path)
    first = identity.issue(trustme.CA())
    serving = ServingCertificate(TlsFiles(identity.certificate, identity.key), recheck_seconds=0.0)
    assert not serving.mutual
    start = serving.current()
    assert start.certificate_chain == first.cert_chain_pems[0].bytes()
    assert serving.current() is start  # unchanged files: the same identity, not reloaded
    assert serving._grpc_configuration_if_new() is None  # gRPC already has it

    renewed = identity.issue(trustme.CA())
    now = serving.current()
    assert now is not start and now.certificate_chain == renewed.cert_chain_pems[0].bytes()
    assert logged(caplog) == [f"TLS: new certificate from {identity.certificate}"]
    assert serving._grpc_configuration_if_new() is not None  # handed to gRPC once
    assert serving._grpc_configuration_if_new() is None

    identity.issue(trustme.CA(), key=False)  # a certificate whose key has not arrived yet
    assert serving.current() is now
    warning = logged(caplog)[-1]
    assert warning.startswith(
        f"keeping the TLS certificate in use: TLS: {identity.certificate} with {identity.key} "
        "do not load: "
    )
    assert renewed.private_key_pem.bytes().decode().splitlines()[1] not in caplog.text


def test_whether_clients_need_certificates_is_fixed_by_the_client_ca(tmp_path: Path) -> None:
    identity = Identity(tmp_path)
    identity.issue(trustme.CA())
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    files = TlsFiles(identity.certificate, identity.key, tmp_path / "client-ca.pem")
    assert ServingCertificate(files).mutual


def test_the_http_context_hands_each_connection_the_current_identity(tmp_path: Path) -> None:
    identity = Identity(tmp_path)
    identity.issue(trustme.CA())
    serving = ServingCertificate(TlsFiles(identity.certificate, identity.key), recheck_seconds=0.0)
    front = serving.ssl_context()
    assert front is serving.current().ssl_context and front.sni_callback is not None
    identity.issue(trustme.CA())

    class Connection:
        context: ssl.SSLContext | None = None

    connection = Connection()
    front.sni_callback(connection, "localhost", front)  # type: ignore[arg-type]
    assert connection.context is serving.current().ssl_context
    assert connection.context is not front


def test_bad_files_at_start_stop_the_server(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not load"):
        ServingCertificate(TlsFiles(tmp_path / "missing.crt", tmp_path / "missing.key"))
