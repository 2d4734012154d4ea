"""The ledger: what every decision and outcome becomes, and the stores that keep it. The guard and
the CLI use the `LedgerStore` protocol (base.py) and `open_ledger`; a store's package (sqlite/) is
imported only from here."""

from __future__ import annotations

from mcp_guard.config import LedgerConfig
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
    "exists",
    "open_ledger",
]


async def open_ledger(config: LedgerConfig, *, readonly: bool = False) -> LedgerStore:
    """The store `config` names, opened for appending (created or migrated on first use), or for
    reading only (LedgerError when there is no ledger yet). Only SQLite (`ledger.path`) so far."""
    return SQLiteStore.open(config.path, config.durability, readonly=readonly)


def exists(config: LedgerConfig) -> bool:
    """Whether there is a ledger to read yet (a guard has written one)."""
    return config.path.exists()
