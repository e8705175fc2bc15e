"""Command lines and environments checked with the server's real argument parser."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest
import trustme

from lamina.server import cli
from lamina.server.config import Settings, add_serve_arguments
from lamina.server.convert import prepare

# Read by the server although no flag is named after it: the cache root (config.default_home).
NOT_FLAGS = {"LAMINA_HOME"}


def flag_variables() -> set[str]:
    """The LAMINA_* variables `lamina serve` reads, as its flags' help names them."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    names = set()
    for action in parser._actions:
        names.update(re.findall(r"\benv (LAMINA_[A-Z0-9_]+)", action.help or ""))
    assert "LAMINA_PORT" in names, "the flags' help no longer names their variables"
    return names


class _Parsed(Exception):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = args


class _Recorder:
    @staticmethod
    def from_args(args: argparse.Namespace) -> Settings:
        raise _Parsed(args)


def _prepare_recorder(repository: Path, cache: Path, **_: object) -> list[Path]:
    raise _Parsed(argparse.Namespace(model_repository=str(repository), cache=str(cache)))


def parse(
    argv: list[str], environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> argparse.Namespace:
    """What `lamina <argv>` parses to under `environment` alone, through cli.main itself; it
    stops before serving or preparing anything."""
    for name in list(os.environ):
        if name.startswith("LAMINA_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "Settings", _Recorder)
    monkeypatch.setattr(prepare, "prepare_defaults", _prepare_recorder)
    try:
        cli.main(argv)
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as error:
        raise AssertionError(f"lamina {argv} with {environment} exits with {error.code}") from None
    raise AssertionError(f"lamina {argv} neither served nor prepared")


def settings(args: argparse.Namespace, tmp_path: Path) -> Settings:
    """Settings.from_args on the parsed flags. The TLS files live in a Secret on the cluster;
    here a certificate made for the test takes their place, as from_args loads them."""
    values = vars(args).copy()
    authority = trustme.CA()
    issued = authority.issue_cert("lamina.lamina.svc")
    blobs = {
        "tls_cert": issued.cert_chain_pems[0],
        "tls_key": issued.private_key_pem,
        "tls_client_ca": authority.cert_pem,
    }
    for flag, blob in blobs.items():
        if values.get(flag):
            stand_in = tmp_path / flag
            blob.write_to_path(str(stand_in))
            values[flag] = str(stand_in)
    return Settings.from_args(argparse.Namespace(**values))
