"""`mcp-guard approvals [list [--json] | show ID [--json] | approve ID | deny ID]`: pending
escalations, one request whole, and the operator's decision on them. Every decision is a ledger
entry naming who decided (the operating-system user running the command). Reads and appends
through the LedgerStore protocol."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import anyio

from mcp_guard.cli.ledger import hold_window, printable, read_window, until_interrupted
from mcp_guard.config import LedgerConfig
from mcp_guard.errors import LedgerError
from mcp_guard.ledger import ApprovalEvent, Window, open_ledger
from mcp_guard.ledger.entries import format_ts
from mcp_guard.policy import approvals

ID_PATTERN = r"^[0-9a-f]{16}$"
LIST_ARGUMENTS_CHARS = 120
"""The arguments column of the table is cut to this; `approvals show ID` prints them whole."""


def add_approvals_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "approvals",
        help="pending escalations and their decision",
        description="Pending approval requests (a table, or --json); approve or deny one by id.",
    )
    commands = p.add_subparsers(dest="approvals_command", metavar="COMMAND")
    listing = commands.add_parser("list", help="pending requests")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument(
        "-f", "--follow", action="store_true", help="then print each new request as it is filed (Ctrl-C ends)"
    )
    show = commands.add_parser("show", help="one request with its whole arguments and their digest")
    show.add_argument("id", help="the request id")
    show.add_argument("--json", action="store_true", help="one JSON object")
    for verb in ("approve", "deny"):
        cmd = commands.add_parser(verb, help=f"{verb} a pending request")
        cmd.add_argument("id", help="the request id")


def run_approvals(args: argparse.Namespace, ledger: LedgerConfig | Path, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    command = args.approvals_command or "list"
    config = ledger if isinstance(ledger, LedgerConfig) else LedgerConfig(path=Path(ledger))
    try:
        if command == "list":
            rows = anyio.run(read_window, config, _pending)
            _print(rows, getattr(args, "json", False), out)
            if getattr(args, "follow", False):
                anyio.run(until_interrupted, _follow, config, {row["id"] for row in rows}, args.json, out)
            return 0
        if command == "show":
            request = anyio.run(read_window, config, lambda w: _request(w, args.id))
            if request is None:
                print(
                    f"mcp-guard: approvals show: no approval request {printable(args.id)!r}", file=sys.stderr
                )
                return 1
            _show(request, args.json, out)
            return 0
        result = anyio.run(hold_window, config, lambda w: _decide(w, args.id, command, getpass.getuser()))
    except LedgerError as exc:
        print(f"mcp-guard: {exc}", file=sys.stderr)
        return 1
    if result:
        print(f"mcp-guard: approvals {command}: {result}", file=sys.stderr)
        return 1
    out.write(f"{'approved' if command == 'approve' else 'denied'}: {args.id}\n")
    return 0


FOLLOW_POLL = 0.5
"""Seconds between looks at the ledger for new requests (`list -f`)."""


async def _follow(config: LedgerConfig, shown: set[str], as_json: bool, out: TextIO) -> int:
    """Print each pending request not shown yet, as the guards file them, until interrupted."""
    async with await open_ledger(config, readonly=True) as ledger:
        while True:
            await anyio.sleep(FOLLOW_POLL)
            fresh = [row for row in await ledger.read(_pending) if row["id"] not in shown]
            shown.update(row["id"] for row in fresh)
            if fresh:
                _print(fresh, as_json, out, header=False)
                out.flush()


def _pending(window: Window) -> list[dict[str, Any]]:
    found = approvals.pending(_all_events(window), format_ts(window.now))
    return [dict(e) for e in found.values()]


def _all_events(window: Window) -> list[Mapping[str, Any]]:
    return [{**e.payload, "agent": e.agent, "server": e.server, "tool": e.tool} for e in window.approvals()]


def _request(window: Window, request_id: str) -> dict[str, Any] | None:
    """The request with this id, whatever became of it, with its status now."""
    events = _all_events(window)
    found = next(
        (e for e in events if e.get("action") == approvals.REQUEST and e.get("id") == request_id), None
    )
    if found is None:
        return None
    state = approvals.latest([e for e in events if e.get("id") == request_id], str(found.get("digest")))
    assert state is not None
    now = format_ts(window.now)
    status = state.status
    if status in ("pending", "approved") and state.lapsed(now):
        status = "expired"
    return {**found, "status": status, "decided_by": state.decided_by}


def _decide(window: Window, request_id: str, command: str, who: str) -> str | None:
    """Record the decision; returns why it cannot be made, or None."""
    pending = approvals.pending(_all_events(window), format_ts(window.now))
    request = pending.get(request_id)
    if request is None:
        return f"no pending request {printable(request_id)!r} (unknown, already decided, or expired)"
    action = approvals.APPROVE if command == "approve" else approvals.DENY
    window.append(
        ApprovalEvent(
            payload={"id": request_id, "action": action, "by": who},
            agent=request["agent"],
            server=request["server"],
            tool=request["tool"],
        )
    )
    return None


def _print(rows: list[dict[str, Any]], as_json: bool, out: TextIO, *, header: bool = True) -> None:
    fields = ("id", "agent", "server", "tool", "arguments", "requested_at", "expires_at")
    if as_json:
        for row in rows:
            out.write(json.dumps({k: row.get(k) for k in fields}, ensure_ascii=True) + "\n")
        return
    if not rows:
        out.write("no pending approval requests\n")
        return
    if header:
        out.write(f"{'ID':16}  {'AGENT':16}  {'TOOL':28}  {'EXPIRES':24}  ARGUMENTS\n")
    cut = False
    for row in rows:
        tool = printable(f"{row['server']}.{row['tool']}")
        arguments = printable(json.dumps(row.get("arguments"), ensure_ascii=False))
        if len(arguments) > LIST_ARGUMENTS_CHARS:
            arguments, cut = arguments[: LIST_ARGUMENTS_CHARS - 1] + "…", True
        agent = printable(str(row["agent"]))
        out.write(f"{row['id']:16}  {agent:16}  {tool:28}  {row['expires_at']:24}  {arguments}\n")
    if cut:
        out.write("… arguments cut short: `mcp-guard approvals show ID` prints them whole\n")


def _show(request: Mapping[str, Any], as_json: bool, out: TextIO) -> None:
    """One request: the redacted arguments whole, and the SHA-256 of the exact arguments that an
    approval covers."""
    fields = ("id", "status", "agent", "server", "tool", "arguments", "digest", "requested_at", "expires_at")
    if as_json:
        row = {k: request.get(k) for k in fields}
        out.write(json.dumps({**row, "decided_by": request.get("decided_by")}, ensure_ascii=True) + "\n")
        return
    decided = f" by {printable(str(request['decided_by']))}" if request.get("decided_by") else ""
    out.write(f"id:           {request['id']}\n")
    out.write(f"status:       {request['status']}{decided}\n")
    out.write(f"agent:        {printable(str(request['agent']))}\n")
    tool = printable(f"{request['server']}.{request['tool']}")
    out.write(f"tool:         {tool}\n")
    out.write(f"requested at: {request['requested_at']}\n")
    out.write(f"expires at:   {request['expires_at']}\n")
    out.write(f"digest:       sha256:{request.get('digest')} (of the exact arguments, before redaction)\n")
    out.write("arguments (secrets redacted):\n")
    text = json.dumps(request.get("arguments"), ensure_ascii=False, indent=2, sort_keys=True)
    for line in text.splitlines():
        out.write(f"  {printable(line)}\n")
