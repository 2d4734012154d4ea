"""The PostgreSQL LedgerStore (fleet mode): the engine driven from the event loop. Every transaction
is a few round trips to the server, so each runs in a worker thread, shielded from cancellation
where it commits. `durability: normal` defers an outcome onto the next decision's transaction (one
transaction per call); `full` commits each outcome before the result is relayed. `follow` is pushed
by LISTEN/NOTIFY on a connection of its own. Imports nothing from mcp_guard but errors, the
ledger's seam and its siblings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import partial
from typing import Any, Literal, Self, TypeVar

import anyio
import psycopg

from mcp_guard.errors import LedgerError
from mcp_guard.ledger.base import ALL, POLL, Filter, Invocation, LedgerEvent, Settle, Window
from mcp_guard.ledger.chain import Anchor, VerifyResult
from mcp_guard.ledger.deferred import DeferredOutcomes
from mcp_guard.ledger.entries import CallRecord, Redactor
from mcp_guard.ledger.postgres import schema, verify
from mcp_guard.ledger.postgres.engine import Engine

T = TypeVar("T")


class PostgresStore:
    """A LedgerStore on one PostgreSQL database, shared by every guard replica that opens it."""

    def __init__(self, engine: Engine, durability: Literal["normal", "full"] = "normal") -> None:
        self.engine = engine
        self._full = durability == "full"
        self._outcomes = DeferredOutcomes()

    @classmethod
    async def open(
        cls, url: str, where: str, durability: Literal["normal", "full"] = "normal", *, readonly: bool = False
    ) -> Self:
        """Connect, creating or migrating the schema (or, read-only, LedgerError if there is none)."""
        opened = partial(Engine.open, url, where, full=durability == "full", readonly=readonly)
        return cls(await anyio.to_thread.run_sync(opened), durability)

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

    async def _commit(self, fn: Callable[[], T]) -> T:
        with anyio.CancelScope(shield=True):
            done = await anyio.to_thread.run_sync(fn)
        return done

    async def decide(self, record: CallRecord, settle: Settle | None = None) -> CallRecord:
        return await self._commit(partial(self.engine.record_decision, record, settle))

    async def outcome(
        self, call_id: str, outcome: str, duration_ms: float, detail: str | None = None
    ) -> None:
        if not self._full:
            self.engine.record_outcome(call_id, outcome, duration_ms, detail, defer=True)
            self._outcomes.deferred()
            return
        record = partial(self.engine.record_outcome, call_id, outcome, duration_ms, detail, defer=False)
        await self._commit(record)

    async def append(self, event: LedgerEvent) -> None:
        await self._commit(partial(self.engine.record_row, event.row()))

    async def hold(self, fn: Callable[[Window], T]) -> T:
        return await self._commit(partial(self.engine.hold, fn))

    async def flush(self) -> None:
        await self._commit(self.engine.flush)

    async def maintain(self, log: Callable[[str], None]) -> None:
        """Commit the deferred outcomes no decision carried within OUTCOME_DELAY; a failure is logged
        once and retried until the ledger takes them."""
        if not self._full:
            await self._outcomes.run(self.flush, log, POLL)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.engine.close)

    # -- reading ----------------------------------------------------------------------------------

    async def read(self, fn: Callable[[Window], T]) -> T:
        return await anyio.to_thread.run_sync(self.engine.peek, fn)

    async def invocations(
        self, *, limit: int | None = None, until: int | None = None, where: Filter = ALL
    ) -> list[Invocation]:
        read = partial(self.engine.invocations, limit=limit, until_id=until, where=where)
        return await anyio.to_thread.run_sync(read)

    async def head(self) -> int:
        return await anyio.to_thread.run_sync(self.engine.last_id)

    async def follow(self, after: int, *, where: Filter = ALL) -> AsyncIterator[list[Invocation]]:
        """Pushed: every transaction that appends NOTIFYs the channel, and the ledger is read again
        only when one did (or when the listening connection had to be made again)."""
        listener: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                if listener is None or listener.closed or listener.broken:
                    listener = await self._listen()
                    notified = True  # what landed while there was no listener
                else:
                    notified = False
                    try:
                        async for _ in listener.notifies(timeout=POLL, stop_after=1):
                            notified = True
                    except psycopg.Error:
                        await listener.close()
                        notified = True
                changed: list[Invocation] = []
                if notified:
                    after, changed = await anyio.to_thread.run_sync(
                        partial(self.engine.updates, after, where=where)
                    )
                yield changed
        finally:
            if listener is not None:
                with anyio.CancelScope(shield=True):
                    await listener.close()

    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.engine.url, autocommit=True, connect_timeout=5, application_name="mcp-guard"
            )
            await conn.execute(f"LISTEN {schema.CHANNEL}")
        except psycopg.Error as exc:
            msg = f"{self.engine.where}: {schema.describe(exc)}"
            raise LedgerError(msg) from exc
        return conn

    async def stats(self, since: datetime | None = None) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self.engine.stats, since)

    async def verify(self, since: Anchor | None = None) -> VerifyResult:
        start = None if since is None else (since.entry_id, since.entry_hash)
        walk = verify.verify if start is None else partial(verify.verify, start=start)
        return await anyio.to_thread.run_sync(self.engine.read_raw, walk)

    async def anchor(self, upto: int | None = None, since: Anchor | None = None) -> Anchor | None:
        read = partial(verify.anchor, upto=upto, since=since)
        return await anyio.to_thread.run_sync(self.engine.read_raw, read)

    async def entries(self, after: int = 0, limit: int = 1000) -> list[dict[str, object]]:
        read = partial(verify.entries, after=after, limit=limit)
        return await anyio.to_thread.run_sync(self.engine.read_raw, read)
