"""The ledger: what every decision and outcome becomes, and the stores that keep it. The guard and
the CLI use the `LedgerStore` protocol (base.py) and `open_ledger`; a store's package (sqlite/,
postgres/) is imported only from here (postgres/ only when a ledger names a database: its driver
is an optional extra)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mcp_guard.config import LedgerConfig
from mcp_guard.errors import LedgerError
from mcp_guard.ledger.base import (
    ActivationEvent,
    ApprovalEvent,
    ElicitationEvent,
    Filter,
    Invocation,
    LedgerEvent,
    LedgerStore,
    LockoutEvent,
    MarkEvent,
    PinEvent,
    PolicyEvent,
    RevocationEvent,
    SamplingEvent,
    Settle,
    UnlockEvent,
    Window,
)
from mcp_guard.ledger.sqlite.store import SQLiteStore

__all__ = [
    "ActivationEvent",
    "ApprovalEvent",
    "ElicitationEvent",
    "Filter",
    "Invocation",
    "LedgerEvent",
    "LedgerStore",
    "LockoutEvent",
    "MarkEvent",
    "PinEvent",
    "PolicyEvent",
    "RevocationEvent",
    "SamplingEvent",
    "Settle",
    "UnlockEvent",
    "Window",
    "copy_ledger",
    "exists",
    "open_ledger",
    "sqlite_snapshot",
]


async def open_ledger(config: LedgerConfig, *, readonly: bool = False) -> LedgerStore:
    """The store `config` names, opened for appending (created or migrated on first use), or for
    reading only (LedgerError when there is no ledger yet): PostgreSQL at `ledger.url`, else the
    SQLite file at `ledger.path`."""
    if config.url is not None:
        opened: LedgerStore = await _postgres().PostgresStore.open(
            config.url, config.where, config.durability, readonly=readonly
        )
        return opened
    return SQLiteStore.open(config.path, config.durability, readonly=readonly)


def exists(config: LedgerConfig) -> bool:
    """Whether there is a ledger to read yet (a guard has written one); LedgerError when its
    database cannot be reached."""
    if config.url is not None:
        engine = _postgres().Engine
        try:
            engine.open(config.url, config.where, readonly=True).close()
        except LedgerError as exc:
            if "no mcp-guard ledger there yet" in str(exc):
                return False
            raise
        return True
    return config.path.exists()


def copy_ledger(source: LedgerConfig, url: str) -> tuple[int, str]:
    """Copy the SQLite ledger `source` names into the empty PostgreSQL ledger at `url`, every entry
    as it is; (entries copied, the head hash both now share). LedgerError if the source does not
    verify, the destination is not empty, or the copy does not verify to the same head."""
    if source.url is not None:
        msg = f"{source.where}: copy reads a SQLite ledger (ledger.path), not a PostgreSQL one"
        raise LedgerError(msg)
    destination = LedgerConfig(url=url)
    copied: tuple[int, str] = _postgres().copy_ledger(source.path, url, destination.where)
    return copied


def sqlite_snapshot(config: LedgerConfig, path: Path) -> Path:
    """The ledger as a SQLite file Datasette can read: the file itself, or, for a PostgreSQL ledger,
    a snapshot of it written to `path` (a new file)."""
    if config.url is None:
        return config.path
    _postgres().to_sqlite(config.url, config.where, path)
    return path


def _postgres() -> Any:
    """The PostgreSQL store's modules, imported on first use: psycopg is an optional extra."""
    try:
        from mcp_guard.ledger.postgres import copy, engine, store
    except ImportError as exc:
        msg = "ledger.url names a PostgreSQL ledger: install mcp-guard[postgres] (psycopg) to use it"
        raise LedgerError(msg) from exc
    return SimpleNamespace(
        PostgresStore=store.PostgresStore,
        Engine=engine.Engine,
        copy_ledger=copy.copy_ledger,
        to_sqlite=copy.to_sqlite,
    )
