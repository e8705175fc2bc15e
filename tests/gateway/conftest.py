"""One real Lamina with the HTTP gateway for the module tests that need the default models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.support import Gateway, threaded_server


@pytest.fixture(scope="session")
def gateway(model_repository: Path) -> Iterator[Gateway]:
    with threaded_server(model_repository) as running:
        yield running
