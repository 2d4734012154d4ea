"""The ledger as the guard holds it: the store it opened, passed through, with each decision and
outcome of the call being served told to telemetry as the store takes it. The call pipeline then
writes to the ledger as ever and knows nothing of metrics or traces. Imports nothing from mcp_guard
but the ledger's seam and telemetry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, Self, TypeVar

from mcp_guard.guard import telemetry
from mcp_guard.ledger.base import Invocation, LedgerEvent, LedgerStore, Settle, Window
from mcp_guard.ledger.chain import Anchor, VerifyResult
from mcp_guard.ledger.entries import CallRecord, Redactor

T = TypeVar("T")


class ObservedLedger:
    """A LedgerStore that forwards every call to `store` and tells telemetry what it committed."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    @property
    def redactor(self) -> Redactor | None:
        return self.store.redactor

    @redactor.setter
    def redactor(self, redactor: Redactor | None) -> None:
        self.store.redactor = redactor

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def decide(self, record: CallRecord, settle: Settle | None = None) -> CallRecord:
        done = await self.store.decide(record, settle)
        telemetry.decided(done)
        return done

    async def outcome(
        self, call_id: str, outcome: str, duration_ms: float, detail: str | None = None
    ) -> None:
        await self.store.outcome(call_id, outcome, duration_ms, detail)
        telemetry.ended(outcome)

    async def append(self, event: LedgerEvent) -> None:
        await self.store.append(event)

    async def hold(self, fn: Callable[[Window], T]) -> T:
        return await self.store.hold(fn)

    async def flush(self) -> None:
        await self.store.flush()

    async def maintain(self, log: Callable[[str], None]) -> None:
        await self.store.maintain(log)

    async def close(self) -> None:
        await self.store.close()

    async def read(self, fn: Callable[[Window], T]) -> T:
        return await self.store.read(fn)

    async def invocations(self, **filters: Any) -> list[Invocation]:
        return await self.store.invocations(**filters)

    async def head(self) -> int:
        return await self.store.head()

    def follow(
        self, after: int, *, agent: str | None = None, tool: str | None = None, decision: str | None = None
    ) -> AsyncIterator[list[Invocation]]:
        return self.store.follow(after, agent=agent, tool=tool, decision=decision)

    async def stats(self, since: datetime | None = None) -> dict[str, Any]:
        return await self.store.stats(since)

    async def verify(self, since: Anchor | None = None) -> VerifyResult:
        return await self.store.verify(since)

    async def anchor(self, upto: int | None = None, since: Anchor | None = None) -> Anchor | None:
        return await self.store.anchor(upto, since)

    async def entries(self, after: int = 0, limit: int = 1000) -> list[dict[str, object]]:
        return await self.store.entries(after, limit)
