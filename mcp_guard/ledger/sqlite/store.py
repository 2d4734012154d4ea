"""The SQLite LedgerStore: the engine driven from the event loop, committing by its durability.
With `normal` a commit is a few tens of microseconds (no fsync), cheaper than a hop to a worker
thread, so decisions commit on the event loop, where nothing can interrupt them: those of
concurrent calls together (`_Group`), and outcomes ride on the next decisions' transaction (at
most one transaction per call). With `full` every commit waits for the disk, so each runs in a
worker thread, shielded from cancellation. Imports nothing from mcp_guard but errors, the
ledger's seam and its siblings in ledger.sqlite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import anyio

from mcp_guard.errors import LedgerError
from mcp_guard.ledger.base import ALL, POLL, Filter, Invocation, LedgerEvent, Settle, Window
from mcp_guard.ledger.chain import Anchor, VerifyResult
from mcp_guard.ledger.entries import CallRecord, Redactor
from mcp_guard.ledger.sqlite import rows
from mcp_guard.ledger.sqlite.engine import Ledger
from mcp_guard.ledger.sqlite.verify import verify

T = TypeVar("T")
OUTCOME_DELAY = 0.02
"""With durability `normal`, how long an outcome may wait for the next decision's transaction
to carry it before `maintain` commits it on its own."""


class SQLiteStore:
    """A LedgerStore on one SQLite file (WAL), shared by the guards and readers of one machine."""

    def __init__(self, engine: Ledger, durability: Literal["normal", "full"] = "normal") -> None:
        self.engine = engine  # for the SQLite store's own tests and tools; the guard never uses it
        self._full = durability == "full"
        self._outcomes_waiting: anyio.Event | None = None  # made on the event loop, when first needed
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
            with anyio.CancelScope(shield=True):  # committed whatever becomes of the caller
                return await self._group.join(record, settle)
        with anyio.CancelScope(shield=True):
            done = await anyio.to_thread.run_sync(partial(self.engine.record_decision, record, check=settle))
        return done

    async def outcome(
        self, call_id: str, outcome: str, duration_ms: float, detail: str | None = None
    ) -> None:
        if not self._full:
            self.engine.record_outcome(call_id, outcome, duration_ms, detail, defer=True)
            self._group.ended(call_id)
            if self._outcomes_waiting is None:
                self._outcomes_waiting = anyio.Event()
            self._outcomes_waiting.set()
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                partial(self.engine.record_outcome, call_id, outcome, duration_ms, detail)
            )

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
        if self._full:
            return
        failing = False
        while True:
            if self._outcomes_waiting is None:
                self._outcomes_waiting = anyio.Event()
            await self._outcomes_waiting.wait()
            self._outcomes_waiting = anyio.Event()
            await anyio.sleep(OUTCOME_DELAY)
            try:
                self.engine.flush()
                failing = False
            except LedgerError as exc:
                if not failing:
                    log(f"could not record call outcomes yet; retrying: {exc}")
                failing = True
                self._outcomes_waiting.set()

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


class _Group:
    """Group commit for `durability: normal`. While other calls are in flight (decided and not yet
    ended), the decisions made in one turn of the event loop are committed together at the start
    of the next turn, in one transaction (`Ledger.record_decisions`), each settled in the order it
    arrived and seeing those before it; a call with none beside it is committed at once, as
    before. Each caller gets its own record, or its own check's exception."""

    MAX_TRACKED = 10_000  # calls in flight remembered; past it (outcomes lost), start afresh

    def __init__(self, engine: Ledger) -> None:
        self._engine = engine
        self._open: list[tuple[CallRecord, Settle | None, asyncio.Future[CallRecord]]] | None = None
        self._in_flight: set[str] = set()  # call ids allowed whose outcome has not been recorded

    async def join(self, record: CallRecord, settle: Settle | None) -> CallRecord:
        if self._open is None and not self._in_flight:  # alone: nothing to wait for
            (result,) = self._decide([(record, settle)])
            if isinstance(result, Exception):
                raise result
            return result
        loop = asyncio.get_running_loop()
        if self._open is None:
            self._open = []
            loop.call_soon(self._commit)
        future: asyncio.Future[CallRecord] = loop.create_future()
        self._open.append((record, settle, future))
        return await future

    def ended(self, call_id: str) -> None:
        self._in_flight.discard(call_id)

    def _decide(self, batch: list[tuple[CallRecord, Settle | None]]) -> list[CallRecord | Exception]:
        try:
            results = self._engine.record_decisions(batch)
        except Exception as exc:  # the ledger failed them all
            return [exc] * len(batch)
        if len(self._in_flight) > self.MAX_TRACKED:
            self._in_flight.clear()
        self._in_flight.update(
            r.call_id for r in results if isinstance(r, CallRecord) and r.decision == "allow"
        )
        return results

    def _commit(self) -> None:
        group, self._open = self._open or [], None
        results = self._decide([(record, settle) for record, settle, _ in group])
        for (_, _, future), result in zip(group, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
