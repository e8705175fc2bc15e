"""TLS, mutual TLS and bearer tokens on a real server, with certificates made for the test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from lamina.client import AsyncClient, LaminaError, Security
from lamina.client.cli import main as client_main
from lamina.server import security
from lamina.server.cli import main as server_main
from lamina.server.security import TlsFiles
from lamina.server.server import LaminaServer
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import MINILM, free_port
from tests.integration.support import settings_for

SERVING = health_pb2.HealthCheckResponse.SERVING
GOOD, OTHER = "token-alpha-7f3c", "token-beta-91d2"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path  # signed the server's certificate
    server_cert: Path
    server_key: Path
    client_ca: Path  # signed the good client's certificate
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from an unrelated CA
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()

    def write(name: str, blob: trustme.Blob) -> Path:
        path = folder / name
        blob.write_to_path(str(path))
        return path

    server = server_ca.issue_cert("localhost", "127.0.0.1")
    client = client_ca.issue_cert("client.lamina.test")
    stranger = stranger_ca.issue_cert("stranger.lamina.test")
    return Pki(
        ca=write("ca.pem", server_ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_ca=write("client-ca.pem", client_ca.cert_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        stranger_cert=write("stranger.pem", stranger.cert_chain_pems[0]),
        stranger_key=write("stranger.key", stranger.private_key_pem),
    )


@pytest.fixture(scope="module")
def minilm_only(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository serving MiniLM alone: these servers start quickly."""
    repository = tmp_path_factory.mktemp("repository")
    (repository / MINILM).symlink_to(model_repository / MINILM, target_is_directory=True)
    return repository


@contextlib.asynccontextmanager
async def running(server: LaminaServer) -> AsyncIterator[str]:
    port = await server.start()
    await server.load_models()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace_seconds=1)


async def embeds(target: str, security: Security) -> bool:
    """Whether an embed call through a client with these credentials is answered."""
    async with AsyncClient(target, security=security, timeout=10) as client:
        try:
            result = await client.embed(MINILM, "Hello")
        except LaminaError:
            return False
        return len(result.embeddings[6]["mean"]) == 384


async def refusal(target: str, security: Security) -> LaminaError:
    async with AsyncClient(target, security=security, timeout=10) as client:
        with pytest.raises(LaminaError) as error:
            await client.models()
    return error.value


async def test_tls_serves_a_client_that_trusts_its_ca_only(pki: Pki, minilm_only: Path) -> None:
    tls = TlsFiles(pki.server_cert, pki.server_key)
    settings = dataclasses.replace(settings_for(minilm_only), tls=tls)
    async with running(LaminaServer(settings)) as target:
        assert await embeds(target, Security.from_files(ca_file=pki.ca))
        # Another CA's roots, and plaintext, never get an answer.
        assert not await embeds(target, Security.from_files(ca_file=pki.client_ca))
        assert (await refusal(target, Security())).code == "UNAVAILABLE"


async def test_mutual_tls_requires_a_client_certificate_from_its_ca(
    pki: Pki, minilm_only: Path
) -> None:
    tls = TlsFiles(pki.server_cert, pki.server_key, client_ca=pki.client_ca)
    settings = dataclasses.replace(settings_for(minilm_only), tls=tls)
    async with running(LaminaServer(settings)) as target:
        good = Security.from_files(
            ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key
        )
        assert await embeds(target, good)
        assert not await embeds(target, Security.from_files(ca_file=pki.ca))
        stranger = Security.from_files(
            ca_file=pki.ca, cert_file=pki.stranger_cert, key_file=pki.stranger_key
        )
        assert not await embeds(target, stranger)


async def test_bearer_tokens_accept_refuse_and_reload_without_secrets_in_the_log(
    minilm_only: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The tokens file is looked at on every call, not at most once a second: a change is in
    # force from the next call on (the throttle itself: tests/server/test_security.py).
    monkeypatch.setattr(security, "RECHECK_SECONDS", 0.0)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# rotated 2026-11\n{GOOD}\n\n")
    settings = dataclasses.replace(settings_for(minilm_only), auth_tokens_file=tokens)
    server = LaminaServer(settings)
    async with running(server) as target:
        assert await embeds(target, Security(token=GOOD))
        missing = await refusal(target, Security())
        assert missing.code == "UNAUTHENTICATED" and "Bearer" in missing.message
        wrong = await refusal(target, Security(token=OTHER))
        assert wrong.code == "UNAUTHENTICATED" and "not accepted" in wrong.message
        async with grpc.aio.insecure_channel(target) as channel:
            # Health needs no token; reflection does, like every other RPC.
            health = health_pb2_grpc.HealthStub(channel)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING
            assert await reflected_services(channel, ()) is None
            assert "lamina.v1.EmbedService" in (
                await reflected_services(channel, (("authorization", f"Bearer {GOOD}"),)) or []
            )

        tokens.write_text(f"{OTHER}\n")  # the Secret rotates
        assert await embeds(target, Security(token=OTHER))
        assert (await refusal(target, Security(token=GOOD))).code == "UNAUTHENTICATED"

        tokens.unlink()  # unreadable: the tokens in force stay
        assert await embeds(target, Security(token=OTHER))
        assert "cannot read the auth tokens file" in caplog.text  # it was looked at
    refused = server.metrics.auth_refused._value.get()
    assert refused >= 4
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "token(s) from" in logged
    assert GOOD not in logged and OTHER not in logged


async def reflected_services(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> list[str] | None:
    """The services reflection lists, or None when the call is refused as UNAUTHENTICATED."""
    call = channel.stream_stream(
        REFLECTION,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    try:
        async for reply in call(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata,
            timeout=5,
        ):
            return [service.name for service in reply.list_services_response.service]
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return None
        raise
    return []


async def test_reflection_can_be_switched_off(minilm_only: Path) -> None:
    settings = dataclasses.replace(settings_for(minilm_only), reflection=False)
    async with (
        running(LaminaServer(settings)) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await reflected_services(channel, ())
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_served_cli_with_tls_tokens_and_a_health_port(
    pki: Pki, minilm_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lamina serve` with the flags the Kubernetes manifests use, and `lamina-client` with its
    own TLS and token flags."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{GOOD}\n")
    port, health_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamina.server",
        "serve",
        *("--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"),
        *("--model-repository", str(minilm_only), "--threads", "1"),
        *("--health-port", str(health_port), "--auth-tokens-file", str(tokens)),
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Probes reach the plaintext health port; it offers nothing else.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(600):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the health port never reported SERVING")
            stub = pb_grpc.EmbedServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.ModelsAvailable(pb.ModelsAvailableRequest(), timeout=5)
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED

        token_file = tmp_path / "client-token"
        token_file.write_text(f"{GOOD}\n")
        target = ["--target", f"127.0.0.1:{port}", "--tls-ca", str(pki.ca)]
        code = await asyncio.to_thread(
            client_main, [*target, "--token-file", str(token_file), "models"]
        )
        assert code == 0 and MINILM in capsys.readouterr().out
        code = await asyncio.to_thread(client_main, [*target, "models"])
        assert code == 1 and "UNAUTHENTICATED" in capsys.readouterr().err

        # The load generator through the same TLS and token flags, with a shipped ghz config.
        config = Path(__file__).parents[2] / "deploy" / "ghz" / "embed.json"
        load = ["load", "--config", str(config), "--host", f"127.0.0.1:{port}", "-n", "6"]
        code = await asyncio.to_thread(
            client_main, [*target, "--token-file", str(token_file), *load, "-c", "2", "-O", "json"]
        )
        report = json.loads(capsys.readouterr().out)
        assert code == 0 and report["count"] == 6
        assert report["statusCodeDistribution"] == {"OK": 6}
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert "TLS, bearer tokens, health also on" in log and GOOD not in log


def test_serve_refuses_half_a_tls_key_pair(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        server_main(["serve", "--tls-cert", str(tmp_path / "missing.pem")])
    assert stopped.value.code == 2


def test_serve_refuses_a_key_that_is_not_its_certificates(
    pki: Pki, minilm_only: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Caught at start, not at the first client's handshake.
    with pytest.raises(SystemExit) as stopped:
        server_main(
            [
                "serve",
                *("--model-repository", str(minilm_only)),
                *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)),
            ]
        )
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert str(pki.server_cert) in error and str(pki.client_key) in error and "do not load" in error
