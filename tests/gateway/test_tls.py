"""The HTTP port takes the gRPC port's TLS settings: TLS, and mutual TLS with --tls-client-ca."""

from __future__ import annotations

from pathlib import Path

import aleph_alpha_client as aa
import pytest
import requests

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
