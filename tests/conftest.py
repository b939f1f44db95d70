"""Fixtures for unit and integration tests alike; none of them starts a service. The local stack
is `tests/integration/conftest.py`'s, the unit tests' own redis-server `tests/unit/conftest.py`'s."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from infra.stack import free_port


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (a service that is down)."""
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung service)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    port: int = s.getsockname()[1]
    yield port
    s.close()
