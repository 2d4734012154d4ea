"""`mcp-guard token issue`: a short-lived token signed with guard.yaml's `tokens.signing_key`.
`mcp-guard token revoke JTI`: a `revocation` entry in the ledger, after which every guard process
on that ledger refuses a token with that id (the guard's own HS256 tokens and the authorization
server's alike) from its next request on."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

import anyio

from mcp_guard.cli.ledger import hold_window, printable
from mcp_guard.config import GuardConfig
from mcp_guard.errors import LedgerError, UsageError
from mcp_guard.identity.oauth import MAX_ID_CHARS
from mcp_guard.ledger import RevocationEvent, Window


def oauth_warnings(config: GuardConfig) -> list[str]:
    """What `check` says of the agents' `subjects`: a subject under two agents (its tokens are
    refused 403), subjects without an `oauth` section, or an `oauth` section no agent can use."""
    where = f"{config.source}:agents"
    owners: dict[str, list[str]] = {}
    for name, agent in config.agents.items():
        for subject in agent.subjects:
            owners.setdefault(subject, []).append(name)
    warnings = [
        f"warning: {where}: subject {subject!r} is listed under {', '.join(names)}; its tokens are refused"
        for subject, names in owners.items()
        if len(names) > 1
    ]
    if owners and config.oauth is None:
        warnings.append(f"warning: {where}: agents list subjects but there is no `oauth` section")
    if config.oauth is not None and not owners:
        warnings.append(
            f"warning: {where}: `oauth` is set but no agent lists subjects, so no token proves one"
        )
    return warnings


def run_revoke(args: argparse.Namespace, config: GuardConfig, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    jti = args.jti
    if not jti or len(jti) > MAX_ID_CHARS or not jti.isprintable() or jti != jti.strip():
        shown = printable(jti)[:80]
        msg = f"token revoke: {shown!r} is not a token id (1 to {MAX_ID_CHARS} printable characters)"
        raise UsageError(msg)
    who = getpass.getuser()

    def revoke(window: Window) -> bool:
        if window.revoked(jti):
            return False
        window.append(RevocationEvent(payload={"jti": jti, "by": who}))
        return True

    try:
        added = anyio.run(hold_window, config.ledger, revoke)
    except LedgerError as exc:
        print(f"mcp-guard: {exc}", file=sys.stderr)
        return 1
    out.write(f"revoked: token {jti}{'' if added else ' (it already was)'}\n")
    return 0


def run_issue(args: argparse.Namespace, config: GuardConfig) -> int:
    """`token issue`: a short-lived signed token on stdout, its expiry and jti on stderr."""
    from mcp_guard.identity.tokens import issue_token
    from mcp_guard.loading import format_duration, parse_duration

    if config.tokens is None:
        msg = f"token issue: {config.source} has no `tokens` section (add tokens.signing_key)"
        raise UsageError(msg)
    if args.agent not in config.agents:
        msg = f"token issue: agent {args.agent!r} is not defined in {config.source}"
        raise UsageError(msg)
    max_ttl = config.tokens.max_ttl
    try:
        ttl = parse_duration(args.ttl) if args.ttl else min(15 * 60.0, max_ttl)
    except ValueError as exc:
        msg = f"token issue: --ttl: {exc}"
        raise UsageError(msg) from None
    if ttl > max_ttl:
        msg = f"token issue: --ttl {args.ttl} is longer than tokens.max_ttl ({format_duration(max_ttl)})"
        raise UsageError(msg)
    token, claims = issue_token(config.tokens, args.agent, ttl, time.time())
    print(token)
    expires = datetime.fromtimestamp(claims["exp"], tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"mcp-guard: token for {args.agent!r} expires {expires} (jti {claims['jti']})", file=sys.stderr)
    return 0
