"""Shared fixtures: the prepared model repository, a loaded model, and a real running server."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lamina.server.config import default_home
from lamina.server.models.loaded import LoadedModel
from lamina.server.repository.layout import list_versions
from lamina.server.server import LaminaServer
from tests.integration.support import RunningServer, settings_for

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"
DINOV2 = "dinov2-small"


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
    missing = {MINILM, SMOLLM2, DINOV2} - set(list_versions(repository))
    if missing:
        pytest.fail(f"{sorted(missing)} not prepared in {repository}: run `make models` first")
    return repository


def _load(repository: Path, name: str) -> LoadedModel:
    newest = list_versions(repository)[name][-1]
    return LoadedModel.load(newest, threads=2, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def minilm(model_repository: Path) -> LoadedModel:
    return _load(model_repository, MINILM)


@pytest.fixture(scope="session")
def smollm2(model_repository: Path) -> LoadedModel:
    return _load(model_repository, SMOLLM2)


@pytest.fixture(scope="session")
def dinov2(model_repository: Path) -> LoadedModel:
    return _load(model_repository, DINOV2)


@pytest.fixture(scope="session")
async def server(model_repository: Path) -> AsyncIterator[RunningServer]:
    """One real server for the session, on ephemeral ports, with the prepared models."""
    metrics_port = free_port()
    instance = LaminaServer(settings_for(model_repository, metrics_port=metrics_port))
    port = await instance.start()
    await instance.load_models()
    yield RunningServer(instance, f"127.0.0.1:{port}", metrics_port)
    await instance.stop(grace_seconds=1)
