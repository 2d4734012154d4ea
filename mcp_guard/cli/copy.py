"""`mcp-guard ledger copy --to URL`: the ledger guard.yaml names (a SQLite file) into an empty
PostgreSQL ledger, for a move to fleet mode. Every entry is copied as it is, so the copy verifies
to the same head hash, which it prints. And `ledger init`: create or migrate the ledger's schema
and exit, run once by a database owner so the guards' own role needs no right to create tables.
Imports only ledger, config and errors."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import anyio

from mcp_guard.config import LedgerConfig
from mcp_guard.errors import ConfigError
from mcp_guard.ledger import copy_ledger, open_ledger


def add_copy_parser(commands: Any) -> None:
    copy = commands.add_parser(
        "copy",
        help="copy a SQLite ledger into an empty PostgreSQL ledger",
        description="Copy the SQLite ledger (ledger.path, or --ledger PATH) into an empty PostgreSQL "
        "ledger, every entry with its id and hashes: the copy verifies to the same head hash. The "
        "source is verified first; exit 1 if it, or the copy, does not verify.",
    )
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/database")
    commands.add_parser(
        "init",
        help="create or migrate the ledger's schema, then exit",
        description="Create the ledger (or bring its schema up to date) and exit: what a guard does "
        "when it first opens it. Run it as the database's owner; the guards' role then needs only "
        "the grants the README shows.",
    )


async def run_init(config: LedgerConfig, out: TextIO) -> int:
    async with await open_ledger(config):
        pass
    out.write(f"ledger ready: {config.where}\n")
    return 0


async def run_copy(args: argparse.Namespace, config: LedgerConfig, out: TextIO) -> int:
    try:
        target = LedgerConfig(url=args.to)
    except ValueError as exc:
        raise ConfigError("--to", "", "must be a postgresql:// URL") from exc
    assert target.url is not None
    count, head = await anyio.to_thread.run_sync(copy_ledger, config, target.url)
    out.write(f"copied {count} entries to {target.where}; head {head}\n")
    return 0
