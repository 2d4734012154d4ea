"""The ledger as the guard holds it: the store it opened, passed through, with each decision and
outcome of the call being served told to telemetry as the store takes it. The call pipeline then
writes to the ledger as ever and knows nothing of metrics or traces. Everything but `decide` and
`outcome` is the store's own (looked up on it), so a method the protocol gains passes through as
it is. Imports nothing from mcp_guard but the ledger's seam and telemetry."""

from __future__ import annotations

from typing import Any, Self, cast

from mcp_guard.guard import telemetry
from mcp_guard.ledger.base import LedgerStore, Settle
from mcp_guard.ledger.entries import CallRecord, Redactor


class ObservedLedger:
    """A LedgerStore that is `store`, telling telemetry what it committed for the call served."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    @classmethod
    def around(cls, store: LedgerStore) -> LedgerStore:
        """`store`, observed: typed as the protocol, which it answers in full."""
        return cast(LedgerStore, cls(store))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @property
    def redactor(self) -> Redactor | None:
        return self.store.redactor

    @redactor.setter
    def redactor(self, redactor: Redactor | None) -> None:
        self.store.redactor = redactor

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.store.close()

    async def decide(self, record: CallRecord, settle: Settle | None = None) -> CallRecord:
        done = await self.store.decide(record, settle)
        telemetry.decided(done)
        return done

    async def outcome(
        self, call_id: str, outcome: str, duration_ms: float, detail: str | None = None
    ) -> None:
        await self.store.outcome(call_id, outcome, duration_ms, detail)
        telemetry.ended(outcome)
