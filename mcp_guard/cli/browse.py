"""`mcp-guard ledger browse`: the ledger in Datasette (the `browse` extra), read-only, with the
guard's canned queries and facets. Datasette reads a file it may not write through `mode=ro`
connections; no canned query writes, and the write API is not there. A PostgreSQL ledger is served
as a SQLite snapshot taken when the command starts. Imports config, errors and ledger; Datasette
only when the command runs."""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from mcp_guard.config import LedgerConfig
from mcp_guard.errors import ConfigError, LedgerError
from mcp_guard.ledger import sqlite_snapshot

# Parameterless, so that each answers as it is through Datasette's JSON API (`/<db>/<name>.json`).
QUERIES: dict[str, dict[str, str]] = {
    "refusals_by_reason": {
        "title": "Refusals by reason",
        "sql": "SELECT reason, count(*) AS refusals, count(DISTINCT agent) AS agents, min(ts) AS first, "
        "max(ts) AS last FROM entries WHERE kind = 'decision' AND decision = 'deny' "
        "GROUP BY reason ORDER BY refusals DESC, reason",
    },
    "spend_per_agent_per_day": {
        "title": "Allowed calls per agent per day (and the sum of their `amount`, where they have one)",
        "sql": "SELECT substr(ts, 1, 10) AS day, agent, coalesce(server || '.', '') || tool AS target, "
        "count(*) AS calls, "
        "sum(CASE WHEN json_valid(arguments) THEN json_extract(arguments, '$.amount') END) AS amount "
        "FROM entries WHERE kind = 'decision' AND decision = 'allow' "
        "GROUP BY day, agent, target ORDER BY day DESC, agent, target",
    },
    "calls_without_outcome": {
        "title": "Allowed calls without an outcome (in flight, or the guard died mid-call)",
        "sql": "SELECT id, ts, agent, server, tool, call_id, session FROM invocations "
        "WHERE decision = 'allow' AND outcome IS NULL ORDER BY id DESC",
    },
    "approvals_pending": {
        "title": "Approval requests waiting for an operator",
        "sql": "SELECT r.id, r.ts, r.agent, r.server, r.tool, json_extract(r.payload, '$.id') AS request, "
        "json_extract(r.payload, '$.expires_at') AS expires_at FROM entries AS r "
        "WHERE r.kind = 'approval' AND json_valid(r.payload) "
        "AND json_extract(r.payload, '$.action') = 'request' "
        "AND json_extract(r.payload, '$.expires_at') > strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
        "AND NOT EXISTS (SELECT 1 FROM entries AS d WHERE d.kind = 'approval' AND d.id > r.id "
        "AND json_valid(d.payload) AND json_extract(d.payload, '$.id') = json_extract(r.payload, '$.id') "
        "AND json_extract(d.payload, '$.action') IN ('approve', 'deny', 'expired', 'use')) ORDER BY r.id",
    },
    "activations_and_lockouts": {
        "title": "Just-in-time activations, revocations, lockouts and unlocks, newest first",
        "sql": "SELECT id, ts, kind, agent, server, tool, json_extract(payload, '$.action') AS action, "
        "coalesce(json_extract(payload, '$.until'), '') AS until, json_extract(payload, '$.by') AS by, "
        "json_extract(payload, '$.reason') AS reason FROM entries "
        "WHERE kind IN ('activation', 'lockout', 'unlock') AND json_valid(payload) ORDER BY id DESC",
    },
    "policy_changes": {
        "title": "Policies put in force and reloads refused",
        "sql": "SELECT id, ts, json_extract(payload, '$.action') AS action, policy_hash, payload "
        "FROM entries WHERE kind = 'policy' ORDER BY id DESC",
    },
}
FACETS = {
    "entries": ["kind", "agent", "decision", "reason", "server", "outcome"],
    "invocations": ["agent", "decision", "reason", "server", "outcome"],
}


def add_browse_parser(commands: Any) -> None:
    browse = commands.add_parser(
        "browse",
        help="the ledger in Datasette, read-only, with canned queries (mcp-guard[browse])",
        description="Open the ledger read-only in Datasette, with the guard's canned queries and facets.",
    )
    browse.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    browse.add_argument("--port", type=int, default=8001, help="default 8001")


def metadata(name: str) -> dict[str, Any]:
    """Datasette's metadata for a ledger database called `name`."""
    tables = {table: {"facets": facets} for table, facets in FACETS.items()}
    database = {"queries": QUERIES, "tables": tables}
    return {"title": "mcp-guard ledger", "databases": {name: database}}


def build(path: Path) -> Any:
    """A Datasette on the ledger file, read-only (ConfigError when the extra is not installed)."""
    try:
        from datasette.app import Datasette
    except ImportError:
        msg = "ledger browse needs Datasette: pip install 'mcp-guard[browse]'"
        raise ConfigError("ledger browse", "", msg) from None
    if not path.is_file():
        raise LedgerError(f"{path}: no ledger file")
    settings = {"allow_download": False, "allow_csv_stream": True}
    return Datasette([str(path)], metadata=metadata(path.stem), settings=settings)


def run_browse(args: argparse.Namespace, config: LedgerConfig) -> int:
    import uvicorn

    if config.url is not None:  # Datasette reads SQLite: serve a snapshot taken now
        folder = Path(tempfile.mkdtemp(prefix="mcp-guard-browse-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        print(f"mcp-guard: a snapshot of {config.where}, taken now", file=sys.stderr)
    path = sqlite_snapshot(config, folder / "ledger.db") if config.url is not None else config.path
    datasette = build(path)
    name = path.stem
    print(f"mcp-guard: the ledger at http://{args.host}:{args.port}/{name} (read-only; Ctrl-C stops)")
    uvicorn.run(datasette.app(), host=args.host, port=args.port, log_level="warning")
    return 0
