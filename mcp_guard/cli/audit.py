"""`mcp-guard ledger keygen|checkpoint|export` and `verify --checkpoints`: the ledger for people
and systems off the host (signed checkpoints, a SIEM). Reads the ledger through the LedgerStore
protocol and never writes it. Imports only ledger, config and errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import anyio

from mcp_guard.config import LedgerConfig
from mcp_guard.errors import ConfigError, UsageError
from mcp_guard.ledger import LedgerStore
from mcp_guard.ledger.base import POLL
from mcp_guard.ledger.checkpoints import checkpoint, verify_with_checkpoints
from mcp_guard.ledger.export import ocsf_event
from mcp_guard.ledger.signing import keygen, load_private_key, load_public_key

EXPORT_BATCH = 1000


def _after_id(text: str) -> int:
    if not text.isdigit():
        msg = f"invalid entry id {text!r}: use a whole number >= 0"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def add_audit_parsers(commands: Any, verify: argparse.ArgumentParser) -> None:
    """Add keygen, checkpoint and export to `ledger`'s subcommands, and the checkpoint options
    to `ledger verify`."""
    verify.add_argument("--checkpoints", metavar="DIR", type=Path, help="check against DIR/checkpoints.jsonl")
    verify.add_argument("--public-key", metavar="PATH", type=Path, help="the checkpoints' public key")
    verify.add_argument(
        "--since-checkpoint",
        action="store_true",
        help="verify only the entries after the latest valid checkpoint",
    )
    keys = commands.add_parser(
        "keygen",
        help="write an Ed25519 key pair for signed checkpoints",
        description="Write DIR/checkpoint.key (private, mode 0600) and DIR/checkpoint.pub.",
    )
    keys.add_argument(
        "dir", metavar="DIR", type=Path, help="where the key pair goes (created 0700 if missing)"
    )
    commands.add_parser(
        "checkpoint",
        help="append a signed checkpoint now",
        description="Sign where the ledger stands and append it to ledger.checkpoints.dir.",
    )
    export = commands.add_parser(
        "export",
        help="every entry, oldest first, for a SIEM",
        description="Every entry of every kind with its hashes, oldest first, as JSON lines.",
    )
    export.add_argument("--after-id", type=_after_id, default=0, metavar="N", help="start after entry N")
    export.add_argument("-f", "--follow", action="store_true", help="go on printing entries as they land")
    export.add_argument("--format", choices=("jsonl", "ocsf"), default="jsonl", help="default jsonl")


def run_keygen(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`ledger keygen DIR`: needs no guard.yaml."""
    out = out if out is not None else sys.stdout
    private, public = keygen(args.dir)
    out.write(f"wrote {private} (private, mode 0600: keep it on the guard's host only)\n")
    out.write(f"wrote {public} (public: give it to whoever verifies)\n")
    out.write(f"guard.yaml, under ledger: checkpoints: {{key: {private}, dir: DIR, every: 1m}}\n")
    return 0


async def run_audit(args: argparse.Namespace, ledger: LedgerStore, config: LedgerConfig, out: TextIO) -> int:
    """`ledger checkpoint|export` and `verify --checkpoints`; the exit code."""
    if args.ledger_command == "checkpoint":
        return await _checkpoint(ledger, config, out)
    if args.ledger_command == "export":
        return await _export(ledger, args, out)
    return await _verify(ledger, args, out)


def wants_audit(args: argparse.Namespace) -> bool:
    if args.ledger_command == "verify":
        return bool(args.checkpoints or args.public_key or args.since_checkpoint)
    return args.ledger_command in ("checkpoint", "export")


async def _checkpoint(ledger: LedgerStore, config: LedgerConfig, out: TextIO) -> int:
    points = config.checkpoints
    if points is None:
        msg = "guard.yaml has no ledger.checkpoints (key, dir): see `mcp-guard ledger keygen`"
        raise ConfigError("ledger checkpoint", "", msg)
    key = load_private_key(points.key)
    anchor = await checkpoint(ledger, key, points.dir)
    if anchor is None:
        out.write("the ledger is empty: no checkpoint written\n")
        return 0
    out.write(f"checkpoint: entry {anchor.entry_id}, {anchor.entries} entries, hash {anchor.entry_hash}\n")
    return 0


async def _verify(ledger: LedgerStore, args: argparse.Namespace, out: TextIO) -> int:
    if args.checkpoints is None or args.public_key is None:
        msg = "ledger verify: --checkpoints DIR and --public-key PATH go together"
        raise UsageError(msg)
    key = load_public_key(args.public_key)
    report = await verify_with_checkpoints(
        ledger, args.checkpoints, key, since_checkpoint=args.since_checkpoint
    )
    if not report.ok:
        for problem in report.problems:
            out.write(f"bad: {_one_line(problem)}\n")
        return 1
    last = report.checked[-1]
    scope = f"after the checkpoint at entry {last.anchor.entry_id}" if args.since_checkpoint else "in all"
    out.write(
        f"ok: {report.entries} entries {scope}, head {report.head}; {len(report.checked)} checkpoints "
        f"match (latest {last.ts}, entry {last.anchor.entry_id})\n"
    )
    return 0


async def _export(ledger: LedgerStore, args: argparse.Namespace, out: TextIO) -> int:
    after = args.after_id
    while True:
        batch = await ledger.entries(after=after, limit=EXPORT_BATCH)
        for entry in batch:
            event = ocsf_event(entry) if args.format == "ocsf" else _as_stored(entry)
            if event is not None:
                out.write(json.dumps(event, ensure_ascii=True, separators=(",", ":")) + "\n")
        if batch:
            out.flush()
            after = int(str(batch[-1]["id"]))
            if len(batch) == EXPORT_BATCH:
                continue
        if not args.follow:
            return 0
        await anyio.sleep(POLL)


def _as_stored(entry: dict[str, object]) -> dict[str, object]:
    entry.pop("call", None)  # an outcome's decision names: ocsf's, not part of the entry
    return entry


def _one_line(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
