"""The HTTP port takes the gRPC port's TLS settings: TLS, mutual TLS with --tls-client-ca, and a
renewed certificate taken up by both ports without a restart."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import aleph_alpha_client as aa
import pytest
import requests
import trustme

from lamina.client import Client, LaminaError, Security
from lamina.server import security
from lamina.server.security import TlsFiles
from tests.conftest import MINILM
from tests.gateway.support import threaded_server
from tests.integration.test_security import Pki, minilm_only, pki

__all__ = ["minilm_only", "pki"]  # fixtures shared with the gRPC security tests


def test_tls_and_mutual_tls_on_the_http_port(
    minilm_only: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = TlsFiles(pki.server_cert, pki.server_key, pki.client_ca)
    with threaded_server(minilm_only, tls=tls) as gateway:
        url = gateway.url.replace("http://", "https://")
        own = (str(pki.client_cert), str(pki.client_key))
        reply = requests.get(url + "health", verify=str(pki.ca), cert=own, timeout=30)
        assert reply.status_code == 200
        # How a caller trusts a private CA with the official client (it uses requests).
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))
        client = aa.Client(token="unused", host=url, total_retries=0)
        client.session.cert = own
        assert [m["name"] for m in client.models()] == [MINILM]
        stranger = (str(pki.stranger_cert), str(pki.stranger_key))
        for cert in (None, stranger):
            with pytest.raises(requests.exceptions.ConnectionError):  # TLS 1.3: after the handshake
                requests.get(url + "health", verify=str(pki.ca), cert=cert, timeout=30)
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(gateway.url + "health", timeout=30)  # plaintext is refused


def test_a_renewed_certificate_is_served_on_both_ports_without_a_restart(
    minilm_only: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    # The files are looked at before every handshake, not at most once a second: a renewal is
    # served from the next new connection on (the throttle itself: tests/server/test_security.py).
    monkeypatch.setattr(security, "RECHECK_SECONDS", 0.0)
    old_ca, new_ca = trustme.CA(), trustme.CA()
    old_roots, new_roots = tmp_path / "old-ca.pem", tmp_path / "new-ca.pem"
    old_ca.cert_pem.write_to_path(str(old_roots))
    new_ca.cert_pem.write_to_path(str(new_roots))
    certificate, key = tmp_path / "tls.crt", tmp_path / "tls.key"

    def install(chain: trustme.Blob, private_key: trustme.Blob | None) -> None:
        # As a Secret update does: each file replaced whole, never seen half-written.
        for blob, path in ((chain, certificate), (private_key, key)):
            if blob is not None:
                blob.write_to_path(str(path) + ".new")
                os.replace(str(path) + ".new", path)

    issued = old_ca.issue_cert("localhost", "127.0.0.1")
    install(issued.cert_chain_pems[0], issued.private_key_pem)
    with threaded_server(minilm_only, tls=TlsFiles(certificate, key)) as gateway:
        https = gateway.url.replace("http://", "https://")

        def answered(roots: Path) -> tuple[bool, bool]:
            """Whether a new gRPC and a new HTTPS connection trusting `roots` get an answer."""
            try:
                with Client(
                    gateway.target, security=Security.from_files(ca_file=roots), timeout=10
                ) as client:
                    grpc_answered = bool(client.models())
            except LaminaError:
                grpc_answered = False
            try:
                http_answered = requests.get(https + "health", verify=str(roots), timeout=30).ok
            except requests.exceptions.SSLError:
                http_answered = False
            return grpc_answered, http_answered

        assert answered(old_roots) == (True, True)
        assert answered(new_roots) == (False, False)

        renewed = new_ca.issue_cert("localhost", "127.0.0.1")
        install(renewed.cert_chain_pems[0], renewed.private_key_pem)
        assert answered(new_roots) == (True, True)
        assert answered(old_roots) == (False, False)

        # A certificate whose key has not arrived yet (a rotation caught half-way) changes nothing.
        install(trustme.CA().issue_cert("localhost", "127.0.0.1").cert_chain_pems[0], None)
        assert answered(new_roots) == (True, True)
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "keeping the TLS certificate in use" in logged
        secret = renewed.private_key_pem.bytes().decode().splitlines()[1]
        assert secret not in logged
