"""Fixtures shared by every tier: the event loop backend and a deployment in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Deployment
from tests.postgres import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures: a real PostgreSQL, one database a test


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    """An empty deployment in tmp_path: add upstreams with `with_billing()` and friends."""
    return Deployment(tmp_path)
