"""`mcp-guard grants (list [--json] | activate AGENT SERVER.TOOL --for D --reason T | revoke AGENT
SERVER.TOOL)` (just-in-time grants), `mcp-guard agents unlock NAME` (end a lockout) and `mcp-guard
agent key NAME` (a new static key). Every grant and lockout change is a ledger entry naming who
made it (the operating-system user running the command); serving guards read it from the ledger
and tell their clients within seconds."""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import anyio

from mcp_guard.cli.ledger import hold_window, printable, read_window
from mcp_guard.config import GuardConfig, load_config
from mcp_guard.errors import ConfigError, LedgerError, UsageError
from mcp_guard.ledger import ActivationEvent, UnlockEvent, Window, exists
from mcp_guard.ledger.entries import format_ts
from mcp_guard.loading import NAME_PATTERN, format_duration, parse_duration
from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Policy

MAX_REASON_CHARS = 500


def add_grants_parsers(subparsers: Any) -> None:
    g = subparsers.add_parser("grants", help="just-in-time activations of grants")
    commands = g.add_subparsers(dest="grants_command", metavar="ACTION")
    listing = commands.add_parser("list", help="the activations in force")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    activate = commands.add_parser("activate", help="put a grant that needs activation in force for a while")
    activate.add_argument("agent", metavar="AGENT", help="the agent, as named in guard.yaml")
    activate.add_argument("tool", metavar="SERVER.TOOL", help="the tool, e.g. billing.refund")
    activate.add_argument(
        "--for", dest="duration", required=True, metavar="D", help="30m, 2h (at most the grant's max)"
    )
    activate.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    revoke = commands.add_parser("revoke", help="end an activation early")
    revoke.add_argument("agent", metavar="AGENT", help="the agent, as named in guard.yaml")
    revoke.add_argument("tool", metavar="SERVER.TOOL", help="the tool, e.g. billing.refund")

    a = subparsers.add_parser("agents", help="agents' standing")
    a_sub = a.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    unlock = a_sub.add_parser("unlock", help="end an agent's lockout")
    unlock.add_argument("name", metavar="NAME", help="the agent, as named in guard.yaml")


def run_grants(
    args: argparse.Namespace, config: GuardConfig, manifests: tuple[Manifest, ...], out: TextIO | None = None
) -> int:
    out = out if out is not None else sys.stdout
    command = args.grants_command or "list"
    try:
        if command == "list":
            found = (
                anyio.run(read_window, config.ledger, lambda w: list(w.activations()))
                if exists(config.ledger)
                else []
            )
            _print(found, getattr(args, "json", False), out)
            return 0
        server, tool = _target(Policy(config, manifests), args.agent, args.tool)
        who = getpass.getuser()
        if command == "activate":
            seconds, reason = _checked(Policy(config, manifests), args, server, tool)

            def activate(window: Window) -> str:
                until = format_ts(window.now + timedelta(seconds=seconds))
                payload = {"action": "activate", "until": until, "reason": reason, "by": who}
                window.append(ActivationEvent(payload=payload, agent=args.agent, server=server, tool=tool))
                return until

            until = anyio.run(hold_window, config.ledger, activate)
            out.write(
                f"activated: {args.agent} may use {server}.{tool} under its activation grant until {until}\n"
            )
            return 0

        def revoke(window: Window) -> bool:
            if not any((e.server, e.tool) == (server, tool) for e in window.activations(agent=args.agent)):
                return False
            payload = {"action": "revoke", "by": who}
            window.append(ActivationEvent(payload=payload, agent=args.agent, server=server, tool=tool))
            return True

        if not anyio.run(hold_window, config.ledger, revoke):
            print(
                f"mcp-guard: grants revoke: no activation of {server}.{tool} for {args.agent} is in force",
                file=sys.stderr,
            )
            return 1
        out.write(f"revoked: {args.agent} {server}.{tool}\n")
        return 0
    except LedgerError as exc:
        print(f"mcp-guard: {exc}", file=sys.stderr)
        return 1


def run_agents(args: argparse.Namespace, config: GuardConfig, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    name = args.name
    if name not in config.agents:
        raise ConfigError(str(config.source), "agents", f"no agent {printable(name)!r} is defined")
    who = getpass.getuser()

    def unlock(window: Window) -> str | None:
        locked = window.lockouts(agent=name)
        if not locked:
            return None
        window.append(UnlockEvent(payload={"by": who, "until": locked[0].until}, agent=name))
        return locked[0].until

    try:
        ended = anyio.run(hold_window, config.ledger, unlock) if exists(config.ledger) else None
    except LedgerError as exc:
        print(f"mcp-guard: {exc}", file=sys.stderr)
        return 1
    if ended is None:
        print(f"mcp-guard: agents unlock: {name} is not locked out", file=sys.stderr)
        return 1
    out.write(f"unlocked: {name} (was locked out until {ended})\n")
    return 0


def _target(policy: Policy, agent: str, name: str) -> tuple[str, str]:
    """(server, tool) of a SERVER.TOOL that some grant needs activated for AGENT: else exit 2."""
    if agent not in policy.agents:
        raise ConfigError(str(policy.config.source), "agents", f"no agent {printable(agent)!r} is defined")
    server, dot, tool = name.partition(".")
    if not dot or not tool or server not in policy.manifests:
        msg = f"grants: {printable(name)!r} is not SERVER.TOOL of a manifest's server"
        raise UsageError(msg)
    return server, tool


def _checked(policy: Policy, args: argparse.Namespace, server: str, tool: str) -> tuple[float, str]:
    """The activation's length and reason, checked against the grant it puts in force."""
    agent = policy.agents[args.agent]
    found = policy.grant_for(agent, server, tool, active=[(server, tool)])
    if found is None or found[1].activation is None:
        msg = f"grants activate: no grant of {server}.{tool} for {args.agent} applies only while activated"
        raise UsageError(msg)
    limit = found[1].activation.max
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        msg = f"grants activate: --for: {exc}"
        raise UsageError(msg) from None
    if seconds > limit:
        most = format_duration(limit)
        msg = f"grants activate: --for {printable(args.duration)} is over the grant's activation.max ({most})"
        raise UsageError(msg)
    reason = " ".join(args.reason.split())
    if not reason or not reason.isprintable():
        msg = "grants activate: --reason must be printable text, not blank"
        raise UsageError(msg)
    if len(reason) > MAX_REASON_CHARS:
        msg = f"grants activate: --reason is longer than {MAX_REASON_CHARS} characters"
        raise UsageError(msg)
    return seconds, reason


def _print(found: list[ActivationEvent], as_json: bool, out: TextIO) -> None:
    if as_json:
        for event in found:
            row = {"agent": event.agent, "server": event.server, "tool": event.tool, "at": event.ts}
            row |= {key: event.payload.get(key) for key in ("until", "reason", "by")}
            out.write(json.dumps(row, ensure_ascii=True) + "\n")
        return
    if not found:
        out.write("no activations in force\n")
        return
    for event in found:
        reason = printable(str(event.payload.get("reason")))
        by = printable(str(event.payload.get("by")))
        out.write(f"{event.agent}  {event.server}.{event.tool}  until {event.until}  by {by}: {reason}\n")


def run_agent_key(args: argparse.Namespace, config_path: Path) -> int:
    """`agent key NAME`: a new random key, shown once, and the line guard.yaml takes; a warning
    when guard.yaml (if there is one here) does not define NAME yet."""
    from mcp_guard.identity.keys import hash_key, new_key

    if not re.match(NAME_PATTERN, args.name):
        msg = f"agent key: {args.name!r} is not an agent name (lowercase letters, digits, - and _)"
        raise UsageError(msg)
    try:
        defined = load_config(config_path, {}).agents
    except ConfigError:
        defined = None  # no readable guard.yaml here: nothing to compare with
    if defined is not None and args.name not in defined:
        note = f"{args.name!r} is not an agent in guard.yaml yet: add it under agents with this key"
        print(f"mcp-guard: warning: {note}", file=sys.stderr)
    key = new_key()
    print(f"key: {key}")
    print(f'guard.yaml, under agents.{args.name}.keys: "{hash_key(key)}"')
    print("mcp-guard: the key is shown once and is not stored; give it to the agent only", file=sys.stderr)
    return 0
