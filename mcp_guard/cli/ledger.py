"""`mcp-guard ledger tail|events|verify|stats`: the ledger formatted for people (escaped, coloured
on a tty) or as JSON lines; keygen, checkpoint, export and verify's checkpoints are audit.py's,
browse is browse.py's. Opens the ledger read-only, through the LedgerStore protocol, and never
writes. Imports only ledger, config, loading, errors and those two.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import anyio

from mcp_guard import loading
from mcp_guard.cli.audit import add_audit_parsers, run_audit, run_keygen, wants_audit
from mcp_guard.cli.browse import add_browse_parser, run_browse
from mcp_guard.cli.copy import add_copy_parser, run_copy, run_init
from mcp_guard.config import LedgerConfig
from mcp_guard.errors import LedgerError
from mcp_guard.ledger import Invocation, LedgerEvent, LedgerStore, Window, exists, open_ledger
from mcp_guard.ledger.base import POLL, Filter
from mcp_guard.ledger.entries import OUTCOMES, format_ts

T = TypeVar("T")
EVENT_KINDS = (
    "activation",
    "lockout",
    "unlock",
    "mark",
    "approval",
    "pin",
    "policy",
    "elicitation",
    "sampling",
)

IN_FLIGHT_SECONDS = 3.0
MAX_ARGUMENTS_CHARS = 200
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_COLOURS = {"allow": "32", "ok": "32", "deny": "31", "error": "33", "upstream_error": "31", "timeout": "33"}


def parse_duration(text: str) -> timedelta:
    """`30s`, `15m`, `1h`, `1d` (argparse `type=`)."""
    try:
        return timedelta(seconds=loading.parse_duration(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def point_in_time(text: str) -> str:
    """`1h` (that long ago) or a UTC time (`2026-11-29T10:00:00Z`, `2026-11-29 10:00`), as a
    timestamp in the ledger's format (argparse `type=`)."""
    try:
        return format_ts(datetime.now(UTC) - timedelta(seconds=loading.parse_duration(text)))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        msg = f"invalid time {text!r}: a duration (1h: that long ago) or a UTC time (2026-11-29T10:00:00Z)"
        raise argparse.ArgumentTypeError(msg) from None
    return format_ts(when if when.tzinfo else when.replace(tzinfo=UTC))


def _count(text: str) -> int:
    if not text.isdigit():
        msg = f"invalid count {text!r}: use a whole number >= 0"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def add_ledger_parser(subparsers: Any) -> None:
    """Add `ledger tail|verify|stats` to the CLI; dispatch with `run_ledger(args, config.ledger)`."""
    about = "read the ledger (and sign, copy or initialise it)"
    ledger = subparsers.add_parser("ledger", help=about, description=about.capitalize() + ".")
    commands = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    tail = commands.add_parser(
        "tail", help="recent invocations, oldest first", description="Recent invocations, oldest first."
    )
    tail.add_argument("-n", type=_count, default=10, metavar="N", help="how many (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="print new invocations as they land")
    tail.add_argument("--agent", metavar="A", help="only this agent")
    tail.add_argument("--tool", metavar="T", help="only this tool (TOOL or SERVER.TOOL)")
    tail.add_argument("--decision", choices=("allow", "deny"), help="only this decision")
    tail.add_argument("--server", metavar="S", help="only this manifest's server")
    tail.add_argument("--session", metavar="ID", help="only this session")
    tail.add_argument("--reason", metavar="CODE", help="only refusals with this reason code")
    tail.add_argument(
        "--outcome", choices=(*OUTCOMES, "none"), metavar="O", help="only this outcome (none: no outcome)"
    )
    tail.add_argument(
        "--since", type=point_in_time, metavar="WHEN", help="decided at or after: 1h ago, or a UTC time"
    )
    tail.add_argument(
        "--until", type=point_in_time, metavar="WHEN", help="decided at or before: 1h ago, or a UTC time"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    events = commands.add_parser(
        "events",
        help="recent entries that are not calls (activations, lockouts, approvals, ...), oldest first",
        description="Recent entries that are not calls, oldest first: " + ", ".join(EVENT_KINDS) + ".",
    )
    events.add_argument("-n", type=_count, default=20, metavar="N", help="how many (default 20)")
    events.add_argument(
        "--kind", action="append", choices=EVENT_KINDS, metavar="KIND", help="only this kind (repeatable)"
    )
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    verify = commands.add_parser(
        "verify",
        help="check the hash chain (and signed checkpoints)",
        description="Check the hash chain, and the ledger against signed checkpoints when given; exit 1 "
        "and name the first bad entry or failed checkpoint.",
    )
    stats = commands.add_parser(
        "stats",
        help="counts by agent, tool, decision and reason",
        description="Counts by agent, tool, decision and reason.",
    )
    stats.add_argument("--since", type=parse_duration, metavar="DURATION", help="e.g. 30s, 15m, 1h, 1d")
    stats.add_argument("--json", action="store_true", help="one JSON object, with p50/p95 durations per tool")
    add_audit_parsers(commands, verify)
    add_browse_parser(commands)
    add_copy_parser(commands)


def run_ledger(args: argparse.Namespace, ledger: LedgerConfig | Path, out: TextIO | None = None) -> int:
    """Run a parsed `ledger` command; returns the exit code (0 ok, 1 check failed or no ledger)."""
    out = out if out is not None else sys.stdout
    config = ledger if isinstance(ledger, LedgerConfig) else LedgerConfig(path=Path(ledger))
    try:
        if args.ledger_command == "browse":  # Datasette runs its own event loop
            return run_browse(args, config)
        return anyio.run(until_interrupted, _run, args, config, out)
    except LedgerError as exc:
        print(f"mcp-guard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C ends `tail -f`
        return 0
    except BrokenPipeError:  # `... | head`: the reader left; silence the flush at exit too
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def read_window(config: LedgerConfig, fn: Callable[[Window], T]) -> T:
    """`fn(window)` on one read-only snapshot of the ledger (what it appends is dropped)."""
    async with await open_ledger(config, readonly=True) as ledger:
        return await ledger.read(fn)


async def hold_window(config: LedgerConfig, fn: Callable[[Window], T]) -> T:
    """`fn(window)` inside one write transaction, committing what it appends (an operator's entry)."""
    async with await open_ledger(config) as ledger:
        return await ledger.hold(fn)


async def until_interrupted(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    """`fn(*args)`, ended quietly by SIGINT (Ctrl-C) or SIGTERM with exit 0: how a command that
    follows (`tail -f`, `export -f`, `approvals list -f`) stops. The event loop itself receives
    the signal, so it never lands in the middle of a ledger read."""
    if threading.current_thread() is not threading.main_thread():
        return await fn(*args)  # signals reach the main thread only (a caller running this in a worker)
    result = 0
    try:
        async with anyio.create_task_group() as tg:

            async def stop() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                    async for _ in received:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop)
            result = await fn(*args)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # what the command raised, as it raised it
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return result


async def _run(args: argparse.Namespace, config: LedgerConfig, out: TextIO) -> int:
    if args.ledger_command == "keygen":
        return run_keygen(args, out)
    if args.ledger_command in ("copy", "init"):
        return await (run_copy(args, config, out) if args.ledger_command == "copy" else run_init(config, out))
    if args.ledger_command == "tail" and args.follow and not exists(config):
        print(f"mcp-guard: {config.where}: no ledger yet; waiting for a guard to write one", file=sys.stderr)
        await _until_written(config)
    async with await open_ledger(config, readonly=True) as ledger:
        if wants_audit(args):
            return await run_audit(args, ledger, config, out)
        if args.ledger_command == "verify":
            return await _verify(ledger, out)
        if args.ledger_command == "events":
            kinds = args.kind or EVENT_KINDS
            found = await ledger.read(lambda window: window.events(kinds, limit=args.n))
            for event in found:
                out.write(format_event(event, as_json=args.json) + "\n")
            return 0
        if args.ledger_command == "stats":
            since = datetime.now(UTC) - args.since if args.since else None
            counts = await ledger.stats(since)
            out.write(json.dumps(counts, ensure_ascii=True) + "\n" if args.json else format_stats(counts))
            return 0
        return await _tail(ledger, args, out)


async def _until_written(config: LedgerConfig) -> None:
    """Wait until a guard has created the ledger and its schema (the file appears a moment before)."""
    while True:
        await anyio.sleep(POLL)
        if exists(config):
            try:
                async with await open_ledger(config, readonly=True):
                    return
            except LedgerError:
                continue


def format_event(event: LedgerEvent, *, as_json: bool = False) -> str:
    """One entry that is not a call: time, kind, who and what, and its payload (escaped)."""
    fields = {"ts": event.ts, "kind": event.kind, "agent": event.agent, "session": event.session}
    fields |= {"server": event.server, "tool": event.tool, "call_id": event.call_id}
    if as_json:
        return json.dumps({**fields, "payload": dict(event.payload)}, ensure_ascii=True)
    target = f"{event.server}.{event.tool}" if event.server else "-"
    payload = json.dumps(dict(event.payload), ensure_ascii=False, sort_keys=True)
    return printable(f"{event.ts} {event.kind} {event.agent or '-'} {target} {payload}")


async def _verify(ledger: LedgerStore, out: TextIO) -> int:
    result = await ledger.verify()
    if result.ok:
        out.write(f"ok: {result.entries} entries, head {result.head}\n")
        return 0
    out.write(f"bad: {printable(result.problem)}\n")
    return 1


async def _tail(ledger: LedgerStore, args: argparse.Namespace, out: TextIO) -> int:
    where = Filter(
        agent=args.agent,
        tool=args.tool,
        decision=args.decision,
        server=args.server,
        session=args.session,
        reason=args.reason,
        outcome=args.outcome,
        since=args.since,
        until=args.until,
    )
    colour = _wants_colour(out)

    def show(invocations: list[Invocation]) -> None:
        for inv in invocations:
            out.write(json_line(inv) if args.json else format_line(inv, colour=colour))
            out.write("\n")
        out.flush()

    if not args.follow:
        show(await ledger.invocations(limit=args.n, where=where))
        return 0
    after = await ledger.head()
    follower = Follower()
    show(follower.begin(await ledger.invocations(limit=args.n, until=after, where=where) if args.n else []))
    async for changed in ledger.follow(after, where=where):
        show(follower.take(changed, time.monotonic()))
    return 0


@dataclass
class Follower:
    """`tail -f` bookkeeping: what to print as decisions and outcomes land, from any process.

    An invocation is printed once it has an outcome (a denial at once); one still in flight after
    `in_flight` seconds is printed with a null outcome, and again, same call_id, when it ends.
    """

    in_flight: float = IN_FLIGHT_SECONDS
    _pending: dict[str, tuple[Invocation, float]] = field(default_factory=dict, init=False)
    _printed_open: set[str] = field(default_factory=set, init=False)  # printed with a null outcome
    _printed_done: set[str] = field(
        default_factory=set, init=False
    )  # finished ones from begin(), not to repeat

    def begin(self, shown: list[Invocation]) -> list[Invocation]:
        """The last invocations, as plain `tail` prints them; following begins after them."""
        for inv in shown:
            finished = inv.outcome is not None or inv.decision != "allow"
            (self._printed_done if finished else self._printed_open).add(inv.call_id)
        return shown

    def take(self, changed: list[Invocation], now: float) -> list[Invocation]:
        """What to print of the invocations that changed (from `LedgerStore.follow`) at `now`."""
        ready: list[Invocation] = []
        for inv in changed:
            call_id = inv.call_id
            if inv.outcome is not None or inv.decision != "allow":
                if call_id in self._printed_done:  # its outcome landed while begin()'s read ran
                    self._printed_done.discard(call_id)
                    continue
                self._pending.pop(call_id, None)
                self._printed_open.discard(call_id)
                ready.append(inv)
            elif call_id not in self._pending and call_id not in self._printed_open:
                self._pending[call_id] = (inv, now)
        for call_id, (inv, seen) in list(self._pending.items()):
            if now - seen >= self.in_flight:
                del self._pending[call_id]
                self._printed_open.add(call_id)
                ready.append(inv)
        return ready


def printable(text: str) -> str:
    """`text` on one line: newlines, ANSI escapes, bidi and other invisible characters escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _word(text: str) -> str:
    # A field in the middle of the line: a space in a tool name as sent must not fake more columns.
    return printable(text).replace(" ", "\\x20")


def format_line(inv: Invocation, *, colour: bool = False) -> str:
    """One invocation on one line: time, agent, server.tool, decision, outcome, ms, arguments."""
    arguments = json.dumps(inv.arguments, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    arguments = printable(arguments)
    if len(arguments) > MAX_ARGUMENTS_CHARS:
        arguments = arguments[: MAX_ARGUMENTS_CHARS - 1] + "…"
    tool = inv.tool if inv.server is None else f"{inv.server}.{inv.tool}"
    verdict = _paint(inv.decision, inv.decision, colour)
    if inv.reason:
        verdict += " " + _word(inv.reason)
    outcome = _paint(inv.outcome, inv.outcome, colour) if inv.outcome else "-"
    ms = "-" if inv.duration_ms is None else f"{inv.duration_ms:.0f}ms"
    ts = _paint(inv.ts[:23] + "Z", "dim", colour)
    line = f"{ts} {_word(inv.agent)} {_word(tool)} {verdict} {outcome} {ms} {arguments}"
    detail = inv.detail if inv.detail is not None else inv.outcome_detail
    return f"{line}  {printable(detail)}" if detail else line


def json_line(inv: Invocation) -> str:
    """SPEC's `tail --json` object; ASCII-only, so no character in it can break the line."""
    return json.dumps(inv.to_json(), ensure_ascii=True, separators=(",", ":"))


def format_stats(stats: dict[str, Any]) -> str:
    since = f" since {stats['since']}" if stats["since"] else ""
    lines = [f"invocations{since}: {stats['invocations']}"]
    for title, key in (("decision", "by_decision"), ("reason", "by_reason"), ("outcome", "by_outcome")):
        counts = ", ".join(f"{printable(k)} {n}" for k, n in stats[key].items())
        lines.append(f"{title}: {counts or '-'}")
    for title, key in (("agent", "by_agent"), ("tool", "by_tool")):
        lines.append(f"{title}:")
        width = max((len(printable(k)) for k in stats[key]), default=0)
        lines += [f"  {printable(k):<{width}}  {n}" for k, n in stats[key].items()]
    durations = stats.get("duration_ms") or {}
    if durations:
        lines.append("duration of allowed calls (ms):")
        width = max(len(printable(k)) for k in durations)
        for key, d in durations.items():
            lines.append(
                f"  {printable(key):<{width}}  p50 {d['p50']:g}  p95 {d['p95']:g}  ({d['count']} calls)"
            )
    return "\n".join(lines) + "\n"


def _wants_colour(out: TextIO) -> bool:
    return out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _paint(text: str, key: str, colour: bool) -> str:
    text = printable(text)
    code = "2" if key == "dim" else _COLOURS.get(key, "1")
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text
