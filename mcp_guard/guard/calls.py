"""The tools/call pipeline, one way through: decide (policy) -> refuse what is withheld or
unreachable -> record the decision with what the ledger must settle (budgets, approval) -> forward
-> record the outcome -> relay. One policy decides a call from start to end, even if another is put
in force meanwhile. Denials are values; only a broken ledger or upstream raises, and is caught here."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Collection, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_guard.config import LockoutConfig
from mcp_guard.errors import LedgerUnavailable, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from mcp_guard.guard import holds, notices, pins
from mcp_guard.guard.convert import refusal, relay
from mcp_guard.guard.exchanges import Exchange
from mcp_guard.guard.paths import contained
from mcp_guard.guard.rounds import KEEP, Parked
from mcp_guard.ledger.entries import CallRecord, sensitive
from mcp_guard.policy import approvals, budgets
from mcp_guard.policy.engine import Agent, Decision, Policy, escape_name
from mcp_guard.policy.reasons import Reason, denial

if TYPE_CHECKING:
    from mcp_guard.guard.app import Guard

AFTER_FORWARD = "the call may have taken effect"
UNREACHABLE = "the upstream server cannot be reached; try again later"
APPROVAL_POLL = 0.25  # seconds between looks at the ledger while a call waits for an operator


class Call:
    """One tools/call from one agent, decided under the policy in force when it arrived."""

    def __init__(
        self,
        guard: Guard,
        agent: Agent,
        session: str | None,
        ctx: ServerRequestContext[Any, Any],
        params: types.CallToolRequestParams,
    ) -> None:
        self.started = time.perf_counter()
        self.guard, self.agent, self.session, self.ctx = guard, agent, session, ctx
        self.name = params.name
        self.arguments: Mapping[str, Any] = params.arguments or {}
        self.policy, self.scrubber = guard.policy, guard.scrubber

    async def run(self) -> types.CallToolResult | types.InputRequiredResult:
        guard, agent = self.guard, self.agent
        decision = await self._decide()
        try:
            try:
                record = await self._commit(decision)
            except holds.Stale:  # decided under an activation that has ended: decide again
                await guard.refresh_standing()
                decision = await self._decide()
                record = await self._commit(decision)
        except (LedgerUnavailable, ValueError, holds.Stale) as exc:  # no ledger, no call
            guard.log(f"refusing {decision.tool!r} for {agent.name!r}: {exc or 'its activation ended'}")
            if decision.reason == Reason.UNKNOWN_TOOL:
                raise MCPError(types.INVALID_PARAMS, decision.detail) from None
            return refusal(denial(Reason.LEDGER_UNAVAILABLE, "the call cannot be recorded, so it is refused"))
        if record.reason == Reason.UNKNOWN_TOOL:
            raise MCPError(types.INVALID_PARAMS, decision.detail)
        if record.decision != "allow":
            return refusal(denial(record.reason or "", record.detail or ""))
        return await self._forward(record.call_id, decision)

    async def _commit(self, decision: Decision) -> CallRecord:
        """Commit the decision with what the ledger settles in the same transaction (lockout, and
        for an allowed call its hold), once an approval it needs has been waited for."""
        agent, policy = self.agent, self.policy
        record = record_of(uuid.uuid4().hex, agent, self.session, self.name, decision, policy, self.scrubber)
        hold = hold_of(agent, decision, record, policy.prefixes)
        lockout = policy.config.lockout
        if hold is not None and hold.approval is not None:
            await self._await_approval(hold, record.policy_hash, lockout)
        if hold is None and lockout is None:
            return await self.guard.ledger.decide(record)
        return await self.guard.ledger.decide(
            record, partial(holds.check, record=record, hold=hold, lockout=lockout)
        )

    async def _decide(self) -> Decision:
        """The policy's decision, then what only the running guard knows: a name no listed tool
        has may be a tool withheld by its pin or one of an upstream that is down."""
        guard, policy, agent = self.guard, self.policy, self.agent
        offers = await guard.offers(agent, policy, self.scrubber)
        decision = policy.decide(self.name, self.arguments, offers, agent=agent.name, session=self.session)
        if decision.reason == Reason.UNKNOWN_TOOL and await guard.pool.settle():
            # A client may call before a slow upstream's first start has ended: decide again.
            offers = await guard.offers(agent, policy, self.scrubber)
            decision = policy.decide(
                self.name, self.arguments, offers, agent=agent.name, session=self.session
            )
        if decision.reason == Reason.UNKNOWN_TOOL:
            return (
                pins.withheld_denial(policy, agent, guard.withheld, self.name, self.arguments)
                or unreachable_denial(policy, agent, self.name, self.arguments, guard.pool.down())
                or decision
            )
        if decision.allowed and decision.paths:
            assert decision.server is not None
            decision = await anyio.to_thread.run_sync(contained, decision, policy.manifests[decision.server])
        if decision.allowed:
            return await self._check_upstream(decision)
        return decision

    async def _await_approval(
        self, hold: holds.Hold, policy_hash: str, lockout: LockoutConfig | None
    ) -> None:
        """File (or find) the approval request for this exact call; if it is pending, wait up to
        `approval.wait` for an operator, with progress notifications if the client asked."""
        assert hold.approval is not None
        ledger = self.guard.ledger
        # A write transaction, so this process's deferred outcomes (a prerequisite's) are read too.
        verdict, filed = await ledger.hold(
            partial(holds.request, hold=hold, policy_hash=policy_hash, lockout=lockout)
        )
        if filed is not None:
            notices.approval_filed(self.guard, hold, filed)
        if verdict != "pending":
            return  # refused whatever an operator says (asked no one), or decided already
        progress = progress_relay(self.ctx)
        waited = 0.0
        with anyio.move_on_after(hold.approval.wait):
            while verdict == "pending":
                await anyio.sleep(APPROVAL_POLL)
                waited += APPROVAL_POLL
                verdict = await ledger.read(partial(holds.approval_verdict, hold=hold))
                if progress is not None:
                    await progress(waited, hold.approval.wait, None)

    async def _check_upstream(self, decision: Decision) -> Decision:
        """An upstream that cannot be (re)started is a denial: nothing was forwarded."""
        assert decision.server is not None
        pool = self.guard.pool
        assert pool.tg is not None
        try:
            await pool.upstream(decision.server).ensure(pool.tg)
        except UpstreamError as exc:
            self.guard.log(str(exc))
            reason = (
                Reason.UPSTREAM_TIMEOUT if isinstance(exc, UpstreamTimeout) else Reason.UPSTREAM_UNAVAILABLE
            )
            return Decision.refuse(reason, UNREACHABLE, decision.server, decision.tool, decision.arguments)
        return decision

    async def _forward(
        self, call_id: str, decision: Decision
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Forward now; for a client of the multi-round-trip form, where the upstream may ask for
        input (its manifest relays elicitation or sampling), the forward runs on its own, and this
        request returns its result or, first, what the upstream asks (rounds.py)."""
        assert decision.server is not None
        up = self.guard.pool.upstreams.get(decision.server)  # gone: _forward_now records the failure
        if (
            self.ctx.session.protocol_version not in MODERN_PROTOCOL_VERSIONS
            or up is None
            or not up.manifest.upstream.relay.requests
        ):
            return await self._forward_now(call_id, decision, None)
        rounds, tg = self.guard.exchanges.rounds, self.guard.pool.tg
        assert tg is not None
        parked = rounds.park(self.agent.name, self.name)

        async def forward() -> None:
            result = refusal(f"error (cancelled): {AFTER_FORWARD}")
            try:
                try:
                    result = await self._forward_now(call_id, decision, parked)
                finally:
                    parked.finish(result)
                with anyio.move_on_after(KEEP):  # for a client that is answering still
                    await parked.forgotten.wait()
            finally:
                rounds.forget(parked)

        tg.start_soon(forward)
        result = await parked.next()
        if not isinstance(result, types.InputRequiredResult):
            rounds.forget(parked)
        return result

    async def _forward_now(
        self, call_id: str, decision: Decision, parked: Parked | None
    ) -> types.CallToolResult:
        assert decision.server is not None
        guard = self.guard
        outcome, detail, result = "upstream_error", None, None
        agent, server, tool = self.agent, decision.server, decision.tool
        exchange = Exchange(
            call_id, agent, self.session, server, tool, self.ctx, self.policy.hash, parked=parked
        )
        try:
            with guard.exchanges.open(exchange):  # what the upstream asks meanwhile reaches this caller
                result = await guard.pool.call(
                    server, tool, dict(decision.arguments), progress_relay(self.ctx)
                )
            outcome = "error" if result.is_error else "ok"
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        except UpstreamTimeout as exc:
            outcome, detail = "timeout", str(exc)
        except (UpstreamUnavailable, UpstreamError) as exc:
            outcome, detail = "upstream_error", str(exc)
        except Exception as exc:  # nothing an upstream does may leak a traceback to an agent
            outcome, detail = "upstream_error", f"{type(exc).__name__}: {exc}"
        finally:
            elapsed = (time.perf_counter() - self.started) * 1000
            await guard.record_outcome(call_id, outcome, elapsed, detail, self.scrubber)
        if result is None:
            if detail:
                guard.log(detail)
            return refusal(f"error ({outcome}): {AFTER_FORWARD}")
        return relay(result, self.scrubber)


def hold_of(
    agent: Agent, decision: Decision, record: CallRecord, prefixes: Mapping[str, str]
) -> holds.Hold | None:
    """What the ledger must settle for an allowed call (None if nothing): its prerequisites, the
    marks that block it, budgets, uniqueness, approval, the marks it sets and its activation."""
    if not decision.allowed or not (
        decision.charges
        or decision.approval
        or decision.once
        or decision.requires
        or decision.blocked
        or decision.marks
        or decision.activated
    ):
        return None
    assert decision.server is not None
    # Scopes are read from the arguments as recorded, as the history's are: a value the ledger
    # redacts cannot open a fresh budget.
    recorded = record.arguments if isinstance(record.arguments, Mapping) else {}
    session = record.session
    return holds.Hold(
        server=decision.server,
        tool=decision.tool,
        agent=agent.name,
        charges=tuple(budgets.rescoped(c, agent.name, record.session, recorded) for c in decision.charges),
        approval=decision.approval,
        digest=approvals.digest(decision.arguments) if decision.approval else "",
        recorded_arguments=record.arguments,
        once=budgets.rescoped_once(decision.once, agent.name, session, recorded) if decision.once else None,
        session=session,
        requires=tuple(pre.scoped(agent.name, session, recorded) for pre in decision.requires),
        blocked=decision.blocked,
        marks=decision.marks,
        activated=decision.activated,
        prefixes=prefixes,
    )


def record_of(
    call_id: str,
    agent: Agent,
    session: str | None,
    sent: str,
    decision: Decision,
    policy: Policy,
    scrubber: Any,
) -> CallRecord:
    """The decision as recorded. The ledger redacts every row it appends; the arguments are
    redacted here already (and the tool's sensitive ones made digests) because budgets scope by
    their recorded values, and a name that
    resolved to no tool is redacted whole before it is cut to 256 characters, so no part of a
    secret is left at the cut."""
    tool, detail, name = decision.tool, decision.detail, sent
    arguments = _jsonable(decision.arguments)
    if decision.server is None:
        tool = name = escape_name(scrubber.record(sent))
        detail = f"Unknown tool: {tool}"
    else:
        hidden = decision.sensitive
        arguments = {k: sensitive(v) if k in hidden else v for k, v in arguments.items()}
    return CallRecord(
        method=decision.target.method,
        call_id=call_id,
        agent=agent.name,
        session=session,
        server=decision.server,
        tool=tool,
        arguments=scrubber.json(arguments, record=True),
        decision="allow" if decision.allowed else "deny",
        reason=decision.reason,
        detail=None if decision.allowed else scrubber.record(detail),
        policy_hash=policy.hash,
        credential=agent.credential,
        name=name,
    )


def unreachable_denial(
    policy: Policy, agent: Agent, name: str, arguments: Mapping[str, Any], down: Collection[str]
) -> Decision | None:
    """A name that no listed tool has, but that is a tool the agent is granted on an upstream
    that is down (so its tools are unknown), is refused `upstream_unavailable`; to anyone else it
    does not exist. The guard and `explain` both decide with this."""
    for server in sorted(down):
        manifest = policy.manifests.get(server)
        if manifest is None or not name.startswith(manifest.name_prefix):
            continue
        tool = name[len(manifest.name_prefix) :]
        if policy.grant_for(agent, server, tool) is not None:
            return Decision.refuse(Reason.UPSTREAM_UNAVAILABLE, UNREACHABLE, server, tool, arguments)
    return None


def _jsonable(value: Any) -> Any:
    """Arguments as recorded: JSON-safe, with non-finite numbers (which were refused) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def progress_relay(ctx: ServerRequestContext[Any, Any]) -> Any:
    """Relay upstream progress to the client as numbers only, if the client asked for it."""
    token = (ctx.meta or {}).get("progress_token")
    if token is None:
        return None

    async def relay_progress(progress: float, total: float | None, _message: str | None) -> None:
        try:
            await ctx.session.send_progress_notification(
                token,
                float(progress),
                float(total) if total is not None else None,
                related_request_id=str(ctx.request_id) if ctx.request_id is not None else None,
            )
        except Exception:  # progress is best effort
            return

    return relay_progress
