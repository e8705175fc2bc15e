"""Shared fixtures: the prepared model repository, a loaded model, and a real running server."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lamina.server.config import default_home
from lamina.server.models.loaded import LoadedModel
from lamina.server.models.store import list_versions
from lamina.server.server import LaminaServer
from tests.integration.support import RunningServer, settings_for

MINILM = "all-minilm-l6-v2"


def _repository() -> Path:
    return Path(os.environ.get("LAMINA_MODEL_REPOSITORY", default_home() / "models"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def model_repository() -> Path:
    repository = _repository()
    if MINILM not in list_versions(repository):
        pytest.fail(f"{MINILM} is not prepared in {repository}: run `make models` first")
    return repository


@pytest.fixture(scope="session")
def minilm(model_repository: Path) -> LoadedModel:
    newest = list_versions(model_repository)[MINILM][-1]
    return LoadedModel.load(newest, threads=2, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
async def server(model_repository: Path) -> AsyncIterator[RunningServer]:
    """One real server for the session, on ephemeral ports, with the prepared models."""
    metrics_port = free_port()
    instance = LaminaServer(settings_for(model_repository, metrics_port=metrics_port))
    port = await instance.start()
    await instance.load_models()
    yield RunningServer(instance, f"127.0.0.1:{port}", metrics_port)
    await instance.stop(grace_seconds=1)
