from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client import fake_server
from tests.client.fake_server import FakeServer


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server, fake = fake_server.start()
    yield fake
    server.stop(grace=None).wait()
