"""The SQLite LedgerStore: the engine driven from the event loop, committing by its durability.
With `normal` a commit is a few tens of microseconds (no fsync), cheaper than a hop to a worker
thread, so decisions commit on the event loop, where nothing can interrupt them: those of
concurrent calls together (`_Group`), and outcomes ride on the next decisions' transaction (at
most one transaction per call). With `full` every commit waits for the disk, so commits run in a
worker thread, shielded from cancellation, each for the decisions that arrived meanwhile.
Imports nothing from mcp_guard but errors, the ledger's seam and its siblings in ledger.sqlite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, Self, TypeAlias, TypeVar

import anyio

from mcp_guard.errors import LedgerUnavailable
from mcp_guard.ledger.base import ALL, POLL, Filter, Invocation, LedgerEvent, Settle, Window
from mcp_guard.ledger.chain import Anchor, VerifyResult
from mcp_guard.ledger.deferred import DeferredOutcomes
from mcp_guard.ledger.entries import CallRecord, Redactor
from mcp_guard.ledger.sqlite import rows
from mcp_guard.ledger.sqlite.engine import Ledger
from mcp_guard.ledger.sqlite.verify import verify

T = TypeVar("T")


class SQLiteStore:
    """A LedgerStore on one SQLite file (WAL), shared by the guards and readers of one machine."""

    def __init__(self, engine: Ledger, durability: Literal["normal", "full"] = "normal") -> None:
        self.engine = engine  # for the SQLite store's own tests and tools; the guard never uses it
        self._full = durability == "full"
        self._outcomes = DeferredOutcomes()
        self._group = _Group(engine)

    @classmethod
    def open(
        cls, path: Path, durability: Literal["normal", "full"] = "normal", *, readonly: bool = False
    ) -> Self:
        """Open for appending (creating or migrating the file), or read-only (LedgerError if there is
        no ledger file)."""
        if readonly:
            return cls(Ledger.open_readonly(path), durability)
        return cls(Ledger.open(path, durability), durability)

    @property
    def redactor(self) -> Redactor | None:
        return self.engine.redactor

    @redactor.setter
    def redactor(self, redactor: Redactor | None) -> None:
        self.engine.redactor = redactor

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writing ----------------------------------------------------------------------------------

    async def decide(self, record: CallRecord, settle: Settle | None = None) -> CallRecord:
        if not self._full:
            return await self._group.join(record, settle)
        done = await self._group.join_on_disk(record, settle)
        assert done is not None  # a decision's own record
        return done

    async def outcome(
        self, call_id: str, outcome: str, duration_ms: float, detail: str | None = None
    ) -> None:
        if not self._full:
            self.engine.record_outcome(call_id, outcome, duration_ms, detail, defer=True)
            self._group.ended(call_id)
            self._outcomes.deferred()
            return
        # Committed (and on disk) before the result is relayed, by the next commit that begins:
        # with the decisions and outcomes of the calls that arrive meanwhile.
        self.engine.record_outcome(call_id, outcome, duration_ms, detail, defer=True)
        await self._group.join_on_disk(None, None)

    async def append(self, event: LedgerEvent) -> None:
        await anyio.to_thread.run_sync(self._append, event)

    def _append(self, event: LedgerEvent) -> None:
        self.engine.record_row(event.row())

    async def hold(self, fn: Callable[[Window], T]) -> T:
        return await anyio.to_thread.run_sync(self.engine.hold, fn)

    async def flush(self) -> None:
        self.engine.flush()

    async def maintain(self, log: Callable[[str], None]) -> None:
        """Checkpoint from a thread of its own, and commit the deferred outcomes no decision carried
        within OUTCOME_DELAY; a failure is logged once and retried until the ledger takes them."""
        self.engine.checkpoint_in_background()
        if not self._full:
            await self._outcomes.run(self.flush, log)

    async def close(self) -> None:
        self.engine.close()

    # -- reading ----------------------------------------------------------------------------------

    async def read(self, fn: Callable[[Window], T]) -> T:
        return await anyio.to_thread.run_sync(self.engine.peek, fn)

    async def invocations(
        self,
        *,
        limit: int | None = None,
        until: int | None = None,
        where: Filter = ALL,
    ) -> list[Invocation]:
        return self.engine.invocations(limit=limit, until_id=until, where=where)

    async def head(self) -> int:
        return self.engine.last_id()

    async def follow(self, after: int, *, where: Filter = ALL) -> AsyncIterator[list[Invocation]]:
        """Polled: another process's commits are seen by reading again."""
        while True:
            await anyio.sleep(POLL)
            after, changed = self.engine.updates(after, where=where)
            yield changed

    async def stats(self, since: datetime | None = None) -> dict[str, Any]:
        return self.engine.stats(since)

    async def verify(self, since: Anchor | None = None) -> VerifyResult:
        if since is None:
            return await anyio.to_thread.run_sync(self.engine.verify)
        walk = partial(verify, start=(since.entry_id, since.entry_hash))
        return await anyio.to_thread.run_sync(rows.snapshot, self.engine.path, walk)

    async def anchor(self, upto: int | None = None, since: Anchor | None = None) -> Anchor | None:
        read = partial(rows.anchor, upto=upto, since=since)
        return await anyio.to_thread.run_sync(rows.snapshot, self.engine.path, read)

    async def entries(self, after: int = 0, limit: int = 1000) -> list[dict[str, object]]:
        read = partial(rows.entries, after=after, limit=limit)
        return await anyio.to_thread.run_sync(rows.snapshot, self.engine.path, read)


class _Lead:
    """Handed to the first caller of the next group: it commits that group."""

    def __init__(self, group: list[_Entry]) -> None:
        self.group = group


Answer: TypeAlias = "CallRecord | _Lead | None"
_Entry: TypeAlias = "tuple[CallRecord | None, Settle | None, asyncio.Future[Answer]]"


class _Group:
    """Group commit: decisions of concurrent calls share one transaction, each settled in the order
    it arrived and seeing those before it (`Ledger.record_decisions`); each caller gets its own
    record, or its own check's exception.

    `durability: normal` (`join`): while other calls are in flight (decided and not yet ended), the
    decisions made in one turn of the event loop are committed together at the start of the next
    turn; a call with none beside it is committed at once. `durability: full` (`join_on_disk`):
    a commit waits for the disk in a worker thread, and the decisions and outcomes that arrive
    meanwhile are committed together, by the first of them, as soon as it is done: one fsync for
    the group."""

    MAX_TRACKED = 10_000  # calls in flight remembered; past it (outcomes lost), start afresh

    def __init__(self, engine: Ledger) -> None:
        self._engine = engine
        self._open: list[_Entry] | None = None
        self._in_flight: set[str] = set()  # call ids allowed whose outcome has not been recorded
        self._on_disk = False  # a `full` group is being committed

    async def join(self, record: CallRecord, settle: Settle | None) -> CallRecord:
        if self._open is None and not self._in_flight:  # alone: nothing to wait for
            return _unwrap(self._decide([(record, settle)])[0])
        loop = asyncio.get_running_loop()
        if self._open is None:
            self._open = []
            loop.call_soon(self._commit)
        future: asyncio.Future[Answer] = loop.create_future()
        self._open.append((record, settle, future))
        with anyio.CancelScope(shield=True):  # committed whatever becomes of the caller
            result = await future
        return _unwrap(result)

    async def join_on_disk(self, record: CallRecord | None, settle: Settle | None) -> CallRecord | None:
        """`durability: full`: commit a decision (or, with `record` None, the outcomes deferred
        before this was called) in the next commit that begins, which waits for the disk; whatever
        becomes of the caller meanwhile."""
        with anyio.CancelScope(shield=True):
            done = await self._on_disk_turn(record, settle)
        return done

    async def _on_disk_turn(self, record: CallRecord | None, settle: Settle | None) -> CallRecord | None:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        entry: _Entry = (record, settle, future)
        if not self._on_disk:
            self._on_disk = True
            return await self._lead([entry])
        if self._open is None:
            self._open = []
        self._open.append(entry)
        result = await future
        if isinstance(result, _Lead):
            return await self._lead(result.group)
        return result

    def ended(self, call_id: str) -> None:
        self._in_flight.discard(call_id)

    async def _lead(self, group: list[_Entry]) -> CallRecord | None:
        """Commit `group` in a worker thread, answer the others in it, then hand the next group (what
        arrived meanwhile) to its first caller; the first caller's own answer."""
        batch = [(record, settle) for record, settle, _ in group if record is not None]
        answers: list[CallRecord | Exception | None] | None = None
        try:
            results, failed = await anyio.to_thread.run_sync(self._record, batch)
            decided = iter(results)
            answers = [next(decided) if record is not None else failed for record, _, _ in group]
        finally:
            if answers is None:  # the worker thread never answered: no one may wait forever
                answers = [LedgerUnavailable("the ledger could not be written")] * len(group)
            for (_, _, future), answer in list(zip(group, answers, strict=True))[1:]:
                _answer(future, answer)
            following, self._open = self._open, None
            if following:
                following[0][2].set_result(_Lead(following))
            else:
                self._on_disk = False
        if isinstance(answers[0], Exception):
            raise answers[0]
        return answers[0]

    def _record(
        self, batch: list[tuple[CallRecord, Settle | None]]
    ) -> tuple[list[CallRecord | Exception], Exception | None]:
        """One transaction (the deferred outcomes first, then `batch`): each decision's answer, and
        what failed the whole transaction, if anything did."""
        try:
            return self._engine.record_decisions(batch), None
        except Exception as exc:  # the ledger failed them all
            return [exc] * len(batch), exc

    def _decide(self, batch: list[tuple[CallRecord, Settle | None]]) -> list[CallRecord | Exception]:
        results, _ = self._record(batch)
        if len(self._in_flight) > self.MAX_TRACKED:
            self._in_flight.clear()
        self._in_flight.update(
            r.call_id for r in results if isinstance(r, CallRecord) and r.decision == "allow"
        )
        return results

    def _commit(self) -> None:
        group, self._open = self._open or [], None
        results = self._decide([(record, settle) for record, settle, _ in group if record is not None])
        for (_, _, future), result in zip(group, results, strict=True):
            _answer(future, result)


def _answer(future: asyncio.Future[Answer], result: CallRecord | Exception | None) -> None:
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _unwrap(result: Answer | Exception) -> CallRecord:
    if isinstance(result, Exception):
        raise result
    assert isinstance(result, CallRecord)
    return result
