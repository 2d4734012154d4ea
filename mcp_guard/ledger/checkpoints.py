"""Checkpoints against a ledger: making one (on demand, or every `ledger.checkpoints.every` while a
guard serves) and checking a ledger against the signed ones, which is what proves that the ledger
was not cut short, rewritten or replaced since. Talks to the ledger through the LedgerStore
protocol only; the key and file format are signing.py. Imports nothing from mcp_guard but the
ledger's modules and the config model."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcp_guard.config import CheckpointsConfig
from mcp_guard.errors import ConfigError, LedgerError
from mcp_guard.ledger.base import LedgerStore
from mcp_guard.ledger.chain import Anchor
from mcp_guard.ledger.entries import format_ts
from mcp_guard.ledger.signing import Checkpoint, append, latest, load_private_key, parse, read_lines, sign

STOP_TIMEOUT = 2.0
"""How long a stopping guard may spend on its last checkpoint."""


async def checkpoint(
    store: LedgerStore, key: Ed25519PrivateKey, directory: Path, since: Anchor | None = None
) -> Anchor | None:
    """Sign where the ledger stands now and append it to DIR/checkpoints.jsonl; None (nothing
    written) while the ledger is empty. Entries are counted on from `since`, else from the last
    checkpoint in DIR signed by this key."""
    if since is None:
        found = await anyio.to_thread.run_sync(latest, directory, key.public_key())
        since = found.anchor if found is not None else None
    anchor = await store.anchor(since=since)
    if anchor is None:
        return None
    await anyio.to_thread.run_sync(append, directory, sign(anchor, key, format_ts(datetime.now(UTC))))
    return anchor


def signing_key(config: CheckpointsConfig) -> Ed25519PrivateKey:
    """The key a serving guard signs with, loaded as it starts (ConfigError for a bad key file or
    checkpoints directory, so that the guard does not start without what it was told to do)."""
    key = load_private_key(config.key)
    if not config.dir.is_dir():
        raise ConfigError(str(config.dir), "", "no such checkpoints directory (ledger.checkpoints.dir)")
    return key


async def keep_checkpoints(
    store: LedgerStore, key: Ed25519PrivateKey, config: CheckpointsConfig, log: Callable[[str], None]
) -> None:
    """For as long as a guard serves (run it in a task): a checkpoint every `config.every` seconds
    unless nothing was appended since the last one this process wrote, and a last one when it
    stops. A failure is logged once and retried at the next turn."""
    last: Anchor | None = None
    failing = False

    async def turn() -> None:
        nonlocal last, failing
        try:
            head = await store.anchor(since=last)
            if head is None or (last is not None and head.entry_hash == last.entry_hash):
                return
            last = await checkpoint(store, key, config.dir, since=last)
            failing = False
        except (OSError, LedgerError) as exc:
            if not failing:
                log(f"could not write a ledger checkpoint to {str(config.dir)!r}; retrying: {exc}")
            failing = True

    try:
        while True:
            await anyio.sleep(config.every)
            await turn()
    finally:
        with anyio.move_on_after(STOP_TIMEOUT, shield=True):
            with suppress(LedgerError):  # closing the ledger reports it
                await store.flush()  # the outcomes still deferred belong in the last checkpoint
            await turn()


# -- checking -------------------------------------------------------------------------------------


@dataclass
class Report:
    """What `ledger verify --checkpoints` found: `problems` empty when the ledger checks."""

    problems: list[str] = field(default_factory=list)
    checked: list[Checkpoint] = field(default_factory=list)  # valid, and matched by the ledger
    entries: int = 0  # chain entries verified (after the checkpoint, with since_checkpoint)
    head: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def _valid(
    lines: list[str], key: Ed25519PublicKey, since_checkpoint: bool, report: Report
) -> list[Checkpoint]:
    """The signed checkpoints of the file, oldest first: every one, or only the latest (and the
    one before it, to count entries from) reading from the end. A line that does not check is a
    problem, wherever it is in the lines read."""
    valid: list[Checkpoint] = []
    for number in range(len(lines), 0, -1):
        found = parse(lines[number - 1], key, number)
        if isinstance(found, str):
            report.problems.append(f"checkpoints.jsonl line {number}: {found}")
            continue
        valid.append(found)
        if since_checkpoint and len(valid) == 2:
            break
    return valid[::-1]


async def verify_with_checkpoints(
    store: LedgerStore, directory: Path, key: Ed25519PublicKey, *, since_checkpoint: bool = False
) -> Report:
    """Check every checkpoint (or, with `since_checkpoint`, the latest valid one) against the
    ledger: its signature, that the ledger is the one it was made of, and that the ledger still
    holds its entry with its hash and as many entries up to it; then the chain (after that
    checkpoint only, with `since_checkpoint`) and its tail."""
    report = Report()
    lines = await anyio.to_thread.run_sync(read_lines, directory)
    valid = _valid(lines, key, since_checkpoint, report)
    if not valid:
        report.problems.append(f"{directory}: no valid checkpoint to check the ledger against")
        return report
    to_check = valid[-1:] if since_checkpoint else valid
    counted_from = valid[0].anchor if since_checkpoint and len(valid) == 2 else None
    head = await store.anchor(since=valid[-1].anchor)
    if head is None:
        report.problems.append("the ledger is empty, but checkpoints were signed for it: it was replaced")
        return report
    others = [cp for cp in to_check if cp.anchor.ledger != head.ledger]
    if others and len(others) == len(to_check):
        report.problems.append(
            f"the ledger (id {head.ledger[:16]}) is not the one the checkpoints were signed for "
            f"(id {others[-1].anchor.ledger[:16]}): it was replaced, or these checkpoints are another's"
        )
        return report
    for cp in others:
        report.problems.append(
            f"checkpoints.jsonl line {cp.line}: a checkpoint of another ledger (id {cp.anchor.ledger[:16]})"
        )
    for cp in (cp for cp in to_check if cp.anchor.ledger == head.ledger):
        problem = await _check(store, cp, head, counted_from)
        if problem is None:
            report.checked.append(cp)
            counted_from = cp.anchor
        else:
            report.problems.append(f"checkpoints.jsonl line {cp.line} ({cp.ts}): {problem}")
    if since_checkpoint and not report.checked:
        return report
    result = await store.verify(since=report.checked[-1].anchor if since_checkpoint else None)
    report.entries, report.head = result.entries, result.head
    if not result.ok:
        report.problems.append(result.problem)
    return report


async def _check(store: LedgerStore, cp: Checkpoint, head: Anchor, since: Anchor | None) -> str | None:
    """What is wrong with the ledger at checkpoint `cp`, or None."""
    signed = cp.anchor
    at = await store.anchor(upto=signed.entry_id, since=since)
    if at is None:
        if signed.entry_id > head.entry_id:
            return (
                f"entry {signed.entry_id} is missing: the ledger ends at entry {head.entry_id} "
                "(its end was cut off)"
            )
        return f"entry {signed.entry_id} is missing (deleted)"
    if at.entry_hash != signed.entry_hash:
        return f"entry {signed.entry_id} does not have the hash signed for it: the ledger was rewritten"
    if at.entries != signed.entries:
        return (
            f"the ledger holds {at.entries} entries up to entry {signed.entry_id}, the checkpoint "
            f"{signed.entries}: entries were deleted or inserted"
        )
    return None
