"""One real Lamina for the whole fuzz session (gRPC and the HTTP gateway, the three default
models), and the harness that calls it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.harness import Fuzz
from tests.gateway.support import threaded_server


@pytest.fixture(scope="session")
def fuzz(model_repository: Path) -> Iterator[Fuzz]:
    with threaded_server(model_repository) as running:
        harness = Fuzz(running)
        try:
            yield harness
        finally:
            harness.close()
