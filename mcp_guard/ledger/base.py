"""The ledger's seam: `LedgerStore`, what the guard and the CLI ask of any store (SQLite now,
PostgreSQL later), in the guard's terms; the `Window` a decision's settle step reads and appends
through; and the typed events (policy, pin, approval) that stores record and telemetry can
consume. No SQL, no entry ids in what the guard reads, no driver: imports nothing from mcp_guard
but the ledger's values (entries, chain) and, for types only, the manifest's Budget."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, TypeVar

from mcp_guard.ledger.chain import Anchor, VerifyResult
from mcp_guard.ledger.entries import CallRecord, Redactor, event_fields

if TYPE_CHECKING:
    from mcp_guard.manifest import Budget

T = TypeVar("T")
Scope = tuple[tuple[str, str], ...]
"""A budget's scope values: (("agent", "support-bot"), ("arg:order_id", "s:ord-1"), ...)."""


# -- typed events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEvent:
    """An entry that is not a call: what happened, to which server and tool, for whom. The payload
    is the kind's JSON object, recorded (and hashed) as it is."""

    kind: ClassVar[str]
    payload: Mapping[str, Any]
    agent: str | None = None
    session: str | None = None
    server: str | None = None
    tool: str | None = None
    call_id: str | None = None
    policy_hash: str | None = None
    # When it was recorded: set on events read back (the store stamps each entry as it appends it).
    ts: str | None = field(default=None, compare=False)

    def row(self) -> dict[str, object]:
        """The checked columns a store appends for this event."""
        return event_fields(
            self.kind,
            dict(self.payload),
            self.policy_hash,
            call_id=self.call_id,
            agent=self.agent,
            session=self.session,
            server=self.server,
            tool=self.tool,
        )

    @property
    def until(self) -> str:
        """The payload's `until` (activations, lockouts): a timestamp in the ledger's format."""
        return str(self.payload.get("until", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyEvent(LedgerEvent):
    """A policy put in force (`{"action": "loaded", "hash"}`) or a reload refused."""

    kind: ClassVar[str] = "policy"


@dataclass(frozen=True, slots=True, kw_only=True)
class PinEvent(LedgerEvent):
    """A tool definition pinned on first use, or withheld for not matching its pin."""

    kind: ClassVar[str] = "pin"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalEvent(LedgerEvent):
    """An approval request filed, approved, denied, expired or used by a call."""

    kind: ClassVar[str] = "approval"


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationEvent(LedgerEvent):
    """A just-in-time grant put in force for an agent and a tool (`{"action": "activate", "until",
    "reason", "by"}`) or ended early (`{"action": "revoke", "by"}`)."""

    kind: ClassVar[str] = "activation"


@dataclass(frozen=True, slots=True, kw_only=True)
class LockoutEvent(LedgerEvent):
    """An agent locked out after repeated refusals: `{"until", "denials", "within"}`."""

    kind: ClassVar[str] = "lockout"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnlockEvent(LedgerEvent):
    """An operator ended an agent's lockout: `{"by"}`."""

    kind: ClassVar[str] = "unlock"


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkEvent(LedgerEvent):
    """An allowed call (its call id, server and tool) put flow marks on its session (its agent's,
    where there is none): `{"marks": [...]}`."""

    kind: ClassVar[str] = "mark"

    @property
    def marks(self) -> tuple[str, ...]:
        found = self.payload.get("marks")
        return tuple(str(m) for m in found) if isinstance(found, list) else ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationEvent(LedgerEvent):
    """An operator revoked a token id: `{"jti", "by"}`. Every guard process on the ledger refuses
    a token with that id from then on, whoever issued it."""

    kind: ClassVar[str] = "revocation"


@dataclass(frozen=True, slots=True, kw_only=True)
class ElicitationEvent(LedgerEvent):
    """An upstream's elicitation/create during a call (its call id), relayed to the caller or
    refused: `{"action": accept|decline|cancel|error|refused, "mode", "reason"?}`, never the content."""

    kind: ClassVar[str] = "elicitation"


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingEvent(LedgerEvent):
    """An upstream's sampling/createMessage during a call, relayed or refused: `{"action":
    completed|error|refused, "max_tokens", "capped", "reason"?}`, never the messages or the answer."""

    kind: ClassVar[str] = "sampling"


EVENT_TYPES: dict[str, type[LedgerEvent]] = {
    e.kind: e
    for e in (
        PolicyEvent,
        PinEvent,
        ApprovalEvent,
        ActivationEvent,
        LockoutEvent,
        UnlockEvent,
        MarkEvent,
        RevocationEvent,
        ElicitationEvent,
        SamplingEvent,
    )
}


# -- what is read ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """A decision joined with its first outcome; outcome is None when denied or never finished.
    `id` is the store's entry id: an order for people and a position for `updates`, nothing more."""

    id: int
    call_id: str
    ts: str
    agent: str
    session: str | None
    method: str
    server: str | None
    tool: str
    arguments: object
    decision: str
    reason: str | None
    detail: str | None  # the decision's
    outcome: str | None
    duration_ms: float | None
    outcome_detail: str | None
    policy_hash: str | None
    credential: str | None = None  # which credential made the call (schema 4 on)
    name: str | None = None  # the name the client called (schema 6 on)

    def to_json(self) -> dict[str, object]:
        """SPEC's `ledger tail --json` fields, plus id, method, policy_hash, credential and name."""
        fields = {name: getattr(self, name) for name in _JSON_FIELDS}
        if self.detail is None:
            fields["detail"] = self.outcome_detail
        return fields | {"policy_hash": self.policy_hash, "credential": self.credential, "name": self.name}


_JSON_FIELDS: tuple[str, ...] = ("id", "call_id", "ts", "agent", "session", "method", "server", "tool")
_JSON_FIELDS += ("arguments", "decision", "reason", "detail", "outcome", "duration_ms")


@dataclass(frozen=True, slots=True)
class Filter:
    """Which invocations to read; a field left None matches all. `tool` is the upstream tool name
    or `server.tool`; `outcome` "none" matches a call without one (refused, or still in flight);
    `since` and `until` bound the decision's time (timestamps in the ledger's format)."""

    agent: str | None = None
    tool: str | None = None
    decision: str | None = None
    server: str | None = None
    session: str | None = None
    reason: str | None = None
    outcome: str | None = None
    since: str | None = None
    until: str | None = None


ALL = Filter()


class Window(Protocol):
    """The history as one transaction sees it: inside the one that records a decision (the settle
    step), or one read-only snapshot. What is appended is committed with the transaction (in a
    snapshot it is dropped)."""

    @property
    def now(self) -> datetime: ...

    def spent(self, server: str, tool: str, budget: Budget, scope: Scope) -> Decimal:
        """What the allowed calls of `server` `tool` in `scope` spent of `budget` within its rolling
        window up to now (calls counted, or the sum of `budget.sum`); Infinity if it cannot be summed
        exactly."""
        ...

    def approvals(
        self, *, server: str | None = None, tool: str | None = None, agent: str | None = None
    ) -> Sequence[ApprovalEvent]:
        """Approval events, oldest first; each filter left None matches all."""
        ...

    def pins(self, *, server: str | None = None) -> Sequence[PinEvent]:
        """Pin events, oldest first, of one server or of all."""
        ...

    def earlier(
        self, server: str, tool: str, seconds: float, scope: Scope, *, ok: bool = False
    ) -> tuple[str, str] | None:
        """(call id, time) of the latest allowed call of `server` `tool` decided within the last
        `seconds` with the same values of `scope`'s keys (as budgets compare them), whatever its
        agent or outcome, or (`ok`) only one whose outcome is ok; None if there is none."""
        ...

    def activations(self, *, agent: str | None = None) -> Sequence[ActivationEvent]:
        """The activations in force now (the latest entry of their agent and tool activates, and
        has not expired), of one agent or of all, oldest first."""
        ...

    def lockouts(self, *, agent: str | None = None) -> Sequence[LockoutEvent]:
        """The lockouts in force now (the latest lockout or unlock of their agent is a lockout
        that has not ended), of one agent or of all."""
        ...

    def denials(self, agent: str, seconds: float) -> int:
        """How many of `agent`'s calls were refused for its own doing (reasons other than
        `NOT_COUNTED`) within the last `seconds` and after its latest lockout or unlock."""
        ...

    def marks(
        self, agent: str, session: str | None, seconds: float, *, any_session: bool = False
    ) -> Sequence[MarkEvent]:
        """The mark entries of `agent` in `session` (None: calls without one; `any_session`: in
        all of them) within the last `seconds`, newest first."""
        ...

    def events(self, kinds: Collection[str], *, limit: int) -> Sequence[LedgerEvent]:
        """The latest `limit` entries of these event kinds (policy, pin, approval, mark,
        activation, lockout, unlock), oldest first."""
        ...

    def revoked(self, jti: str) -> bool:
        """Whether a `revocation` entry names this token id."""
        ...

    def append(self, event: LedgerEvent) -> None:
        """Append `event` after what the transaction records, in the same transaction."""
        ...


Settle = Callable[[Window], CallRecord]
"""The check run inside a decision's transaction (budgets, approvals): returns the record to commit."""


class LedgerStore(Protocol):
    """A ledger: append-only, hash-chained, shared by every guard process that opens it.

    Writes raise LedgerUnavailable when they cannot be committed (the guard then refuses the call);
    reads raise LedgerError. A store decides how it commits by its durability: an outcome may be
    deferred onto the next transaction, but `flush` and `close` commit what was deferred."""

    redactor: Redactor | None
    """Applied to every row appended, whoever built it (the guard sets its policy's scrubber)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    # -- writing ----------------------------------------------------------------------------------

    async def decide(self, record: CallRecord, settle: Settle | None = None) -> CallRecord:
        """Commit a decision before anything is forwarded, never cut short by cancellation. With
        `settle`, the record committed is what `settle(window)` returns, read and appended in the
        same transaction, so no number of processes can overspend a budget or use one approval twice."""
        ...

    async def outcome(
        self, call_id: str, outcome: str, duration_ms: float, detail: str | None = None
    ) -> None:
        """Record what became of an allowed call: committed now, or deferred (by durability)."""
        ...

    async def append(self, event: LedgerEvent) -> None:
        """Commit one event."""
        ...

    async def hold(self, fn: Callable[[Window], T]) -> T:
        """Run `fn` inside a write transaction, committing what it appends (pins, approvals)."""
        ...

    async def flush(self) -> None:
        """Commit the deferred outcomes now; LedgerUnavailable if that fails (they stay deferred)."""
        ...

    async def maintain(self, log: Callable[[str], None]) -> None:
        """For as long as a guard serves (run it in a task): what the store does in the background,
        such as committing deferred outcomes no decision carried. Failures are logged."""
        ...

    async def close(self) -> None:
        """Commit the deferred outcomes and close; LedgerUnavailable (after closing) if they could not
        be committed."""
        ...

    # -- reading ----------------------------------------------------------------------------------

    async def read(self, fn: Callable[[Window], T]) -> T:
        """Run `fn` on one consistent snapshot; what it appends is dropped."""
        ...

    async def invocations(
        self,
        *,
        limit: int | None = None,
        until: int | None = None,
        where: Filter = ALL,
    ) -> list[Invocation]:
        """Decisions joined with their first outcome that `where` matches, oldest first; `limit`
        keeps the most recent, `until` a position from `head`."""
        ...

    async def head(self) -> int:
        """The position of the last entry: what `follow` starts after."""
        ...

    def follow(self, after: int, *, where: Filter = ALL) -> AsyncIterator[list[Invocation]]:
        """The invocations whose decision or outcome any process committed since `after` (then since
        the previous batch), one batch at least every `POLL` seconds ([] when nothing landed)."""
        ...

    async def stats(self, since: datetime | None = None) -> dict[str, Any]:
        """Counts of invocations by agent, tool, decision and reason, and of allowed ones by outcome."""
        ...

    async def verify(self, since: Anchor | None = None) -> VerifyResult:
        """Recompute the chain and check what keeps it append-only; name the first bad entry. With
        `since` (a checkpoint's anchor, whose entry the caller has checked), only the entries after it."""
        ...

    # -- leaving the host: checkpoints and export ---------------------------------------------------

    async def anchor(self, upto: int | None = None, since: Anchor | None = None) -> Anchor | None:
        """The ledger's id and where it stands as of entry `upto` (default: the last entry), with the
        count of entries up to it (counted on from `since`, an earlier anchor, when given); None
        when it is empty or holds no entry `upto`."""
        ...

    async def entries(self, after: int = 0, limit: int = 1000) -> list[dict[str, object]]:
        """Up to `limit` entries of every kind with an id above `after`, oldest first: every column,
        hashes included (the keys of `ledger export`)."""
        ...


POLL = 0.2
"""How often `follow` yields, at least (a store that is told of commits may yield sooner)."""
