"""`mcp-guard approvals [list [--json] | approve ID | deny ID]`: pending escalations and the
operator's decision on them. Every decision is a ledger entry naming who decided (the
operating-system user running the command)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from mcp_guard.errors import LedgerError
from mcp_guard.ledger import Ledger, Window, format_ts
from mcp_guard.ledger_view import printable
from mcp_guard.policy import approvals

ID_PATTERN = r"^[0-9a-f]{16}$"


def add_approvals_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "approvals",
        help="pending escalations and their decision",
        description="Pending approval requests (a table, or --json); approve or deny one by id.",
    )
    commands = p.add_subparsers(dest="approvals_command", metavar="COMMAND")
    listing = commands.add_parser("list", help="pending requests")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for verb in ("approve", "deny"):
        cmd = commands.add_parser(verb, help=f"{verb} a pending request")
        cmd.add_argument("id", help="the request id")


def run_approvals(args: argparse.Namespace, ledger_path: Path, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    command = args.approvals_command or "list"
    try:
        if command == "list":
            with Ledger.open_readonly(ledger_path) as ledger:
                rows = ledger.peek(_pending)
            _print(rows, getattr(args, "json", False), out)
            return 0
        with Ledger.open(ledger_path) as ledger:
            result = ledger.hold(lambda w: _decide(w, args.id, command, getpass.getuser()))
    except LedgerError as exc:
        print(f"mcp-guard: {exc}", file=sys.stderr)
        return 1
    if result:
        print(f"mcp-guard: approvals {command}: {result}", file=sys.stderr)
        return 1
    out.write(f"{'approved' if command == 'approve' else 'denied'}: {args.id}\n")
    return 0


def _pending(window: Window) -> list[dict[str, Any]]:
    found = approvals.pending(_all_events(window), format_ts(window.now))
    return [dict(e) for e in found.values()]


def _all_events(window: Window) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for e in window.all_events("approval"):
        if isinstance(e.payload, Mapping):
            out.append({**e.payload, "agent": e.agent, "server": e.server, "tool": e.tool})
    return out


def _decide(window: Window, request_id: str, command: str, who: str) -> str | None:
    """Record the decision; returns why it cannot be made, or None."""
    pending = approvals.pending(_all_events(window), format_ts(window.now))
    request = pending.get(request_id)
    if request is None:
        return f"no pending request {printable(request_id)!r} (unknown, already decided, or expired)"
    action = approvals.APPROVE if command == "approve" else approvals.DENY
    window.queue_event(
        "approval",
        {"id": request_id, "action": action, "by": who},
        agent=request["agent"],
        server=request["server"],
        tool=request["tool"],
    )
    return None


def _print(rows: list[dict[str, Any]], as_json: bool, out: TextIO) -> None:
    fields = ("id", "agent", "server", "tool", "arguments", "requested_at", "expires_at")
    if as_json:
        for row in rows:
            out.write(json.dumps({k: row.get(k) for k in fields}, ensure_ascii=True) + "\n")
        return
    if not rows:
        out.write("no pending approval requests\n")
        return
    out.write(f"{'ID':16}  {'AGENT':16}  {'TOOL':28}  {'EXPIRES':24}  ARGUMENTS\n")
    for row in rows:
        tool = printable(f"{row['server']}.{row['tool']}")
        arguments = printable(json.dumps(row.get("arguments"), ensure_ascii=False))[:120]
        agent = printable(str(row["agent"]))
        out.write(f"{row['id']:16}  {agent:16}  {tool:28}  {row['expires_at']:24}  {arguments}\n")
