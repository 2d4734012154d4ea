"""`mcp-guard tools` and `explain`: what an agent would be shown and what a call would get, with
the budgets left, decided exactly as the guard would (with the guard's own functions, pins and
upstreams that are down included). Lists the upstreams' tools; forwards no call and writes
nothing (the ledger is opened read-only, if it exists)."""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from mcp_guard import ledger as ledgers
from mcp_guard.config import GuardConfig
from mcp_guard.guard import holds, pins
from mcp_guard.guard.calls import UNREACHABLE, hold_of, record_of, unreachable_denial
from mcp_guard.guard.convert import advertise, offered, tool_def
from mcp_guard.guard.paths import contained
from mcp_guard.ledger import ActivationEvent, LockoutEvent, Window
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.loading import format_duration
from mcp_guard.manifest import Budget, Manifest
from mcp_guard.policy import budgets, flows
from mcp_guard.policy.engine import Agent, Decision, Policy, escape_name
from mcp_guard.policy.offers import Offer
from mcp_guard.policy.reasons import Reason, denial
from mcp_guard.secrets import Scrubber
from mcp_guard.upstream.pool import START_TIMEOUT, open_pool


@dataclass
class Preview:
    policy: Policy
    agent: Agent
    offers: dict[str, Offer]
    scrubber: Scrubber
    withheld: dict[str, pins.Withheld]  # by advertised name
    down: frozenset[str]  # servers whose upstream could not be started
    activations: tuple[ActivationEvent, ...] = ()  # the agent's, in force now
    lockout: LockoutEvent | None = None  # the agent's, in force now
    marks: tuple[flows.Marked, ...] = ()  # carried by the agent's sessions, newest first

    def decide(self, name: str, arguments: Mapping[str, Any]) -> Decision:
        """The guard's decision before the ledger settles budgets and approvals (server.call_tool)."""
        policy, agent = self.policy, self.agent
        decision = policy.decide(name, arguments, self.offers, agent=agent.name)
        if decision.reason == Reason.UNKNOWN_TOOL:
            return (
                pins.withheld_denial(policy, agent, self.withheld, name, arguments)
                or unreachable_denial(policy, agent, name, arguments, self.down)
                or decision
            )
        if decision.allowed and decision.server is not None:
            decision = contained(decision, policy.manifests[decision.server])
        if decision.allowed and decision.server in self.down:
            return replace(decision, allowed=False, reason=Reason.UPSTREAM_UNAVAILABLE, detail=UNREACHABLE)
        return decision

    def not_shown(self) -> list[tuple[str, Decision]]:
        """The tools granted to the agent that the guard would not list now, and why."""
        names = list(self.withheld)
        for server in sorted(self.down):
            manifest = self.policy.manifests[server]
            names += [manifest.name_prefix + tool for tool in manifest.tools]
        out = []
        for name in names:
            decision = self.decide(name, {})
            if decision.reason in (Reason.PIN_MISMATCH, Reason.UPSTREAM_UNAVAILABLE):
                out.append((name, decision))
        return out


@dataclass(frozen=True)
class _Standing:
    activations: tuple[ActivationEvent, ...] = ()
    lockout: LockoutEvent | None = None
    marks: tuple[flows.Marked, ...] = ()


def _standing(policy: Policy, agent: str, window: Window) -> _Standing:
    locked = window.lockouts(agent=agent)
    marks = holds.carried(window, agent, None, policy.mark_horizon, policy.prefixes, any_session=True)
    return _Standing(tuple(window.activations(agent=agent)), locked[0] if locked else None, tuple(marks))


async def _load(config: GuardConfig, manifests: tuple[Manifest, ...], agent: Agent) -> Preview:
    policy = Policy(config, manifests)
    scrubber = Scrubber(policy.secrets)
    standing = await _read(config, partial(_standing, policy, agent.name), _Standing())

    log = scrubber.log
    async with open_pool(
        manifests, log, wait=START_TIMEOUT, max_result_bytes=config.limits.max_result_bytes
    ) as pool:
        live = await pool.catalog()
        down = pool.down()
    catalog = {server: tuple(tool_def(t) for t in tools) for server, tools in live.items()}
    for problem in policy.problems(catalog):
        log(f"warning: {problem}")
    pinned, _ = await pins.peek(config.ledger, policy.manifests, catalog, log)
    withheld = pins.by_name(policy.manifests, pinned.withheld)
    active = [(e.server or "", e.tool or "") for e in standing.activations]
    offers = {} if standing.lockout else offered(policy.offers(agent, pinned.catalog, active), scrubber, log)
    return Preview(
        policy,
        agent,
        offers,
        scrubber,
        withheld,
        down,
        standing.activations,
        standing.lockout,
        standing.marks,
    )


def load_preview(config: GuardConfig, manifests: tuple[Manifest, ...], agent: Agent) -> Preview:
    return anyio.run(_load, config, manifests, agent)


async def _read(config: GuardConfig, fn: Any, default: Any) -> Any:
    """fn(window) on the ledger's current state, or `default` if there is no ledger yet."""
    if not ledgers.exists(config.ledger):
        return default
    async with await ledgers.open_ledger(config.ledger, readonly=True) as ledger:
        return await ledger.read(fn)


def _with_ledger(config: GuardConfig, fn: Any) -> Any:
    """fn(window) on the ledger's current state, or on an empty ledger if there is none yet (made
    in a folder of its own and removed again), so every rule is settled as the guard settles it."""
    if ledgers.exists(config.ledger):
        return anyio.run(_read, config, fn, None)
    with tempfile.TemporaryDirectory() as folder:
        empty = config.ledger.model_copy(update={"path": Path(folder) / "empty.db", "url": None})

        async def read() -> Any:
            async with await ledgers.open_ledger(empty) as ledger:
                return await ledger.read(fn)

        return anyio.run(read)


def _budget_line(budget: Budget, left: Decimal | None) -> str:
    what = f"sum of {budget.sum}" if budget.sum else "calls"
    scope = ", ".join(budget.by)
    now = "" if left is None else f"; {budgets.format_amount(left)} left now"
    window = format_duration(budget.per)
    return f"budget: {what} <= {budgets.format_amount(budget.max)} per rolling {window} by {scope}{now}"


def print_tools(preview: Preview, config: GuardConfig, as_json: bool) -> None:
    def left(window: Window | None, offer: Offer, budget: Budget) -> Decimal | None:
        if window is None or budget.by != ("agent",):
            return None  # other scopes depend on the call's own values
        charge = budgets.Charge(budget, (("agent", preview.agent.name),), Decimal(0))
        hold = holds.Hold(offer.server, offer.tool.name, preview.agent.name, (charge,))
        return holds.remaining(window, hold)[0][1]

    def report(window: Window | None) -> list[str]:
        lines: list[str] = []
        for offer in preview.offers.values():
            tool = advertise(offer, preview.scrubber)
            schema = tool.input_schema
            grant = offer.grant
            if as_json:
                row = {
                    "name": tool.name,
                    "server": offer.server,
                    "tool": offer.tool.name,
                    "description": tool.description,
                    "inputSchema": schema,
                    "budgets": [
                        {**b.model_dump(mode="json"), "left": _str(left(window, offer, b))}
                        for b in grant.budgets
                    ],
                    "approval": grant.approval.model_dump(mode="json") if grant.approval else None,
                    "unique": grant.unique.model_dump(mode="json") if grant.unique else None,
                    **_rules_json(preview, offer),
                }
                lines.append(json.dumps(row, ensure_ascii=False))
                continue
            lines.append(tool.name)
            if tool.description:
                lines.append(f"  {tool.description.splitlines()[0][:100]}")
            required = set(schema.get("required", []))
            for arg, prop in (schema.get("properties") or {}).items():
                limits = {k: v for k, v in prop.items() if k not in ("description", "title")}
                lines.append(
                    f"  {arg}{'' if arg in required else '?'}: {json.dumps(limits, ensure_ascii=False)}"
                )
            lines += [f"  {_budget_line(b, left(window, offer, b))}" for b in grant.budgets]
            if grant.approval is not None:
                when = json.dumps(grant.approval.when) if grant.approval.when else "every call"
                lines.append(f"  approval: {when}")
            if grant.unique is not None:
                by = ", ".join(grant.unique.by) if grant.unique.by else "the whole arguments"
                lines.append(f"  unique: once per {format_duration(grant.unique.per)} by {by}")
            lines += [f"  {line}" for line in _rule_lines(preview, offer)]
        return lines

    lines = anyio.run(_read, config, report, None) if ledgers.exists(config.ledger) else report(None)
    assert lines is not None
    if not as_json:
        lines = _standing_lines(preview) + lines
    for line in lines:
        print(line)
    if not preview.offers and not as_json:
        print(f"(no tools for {preview.agent.name!r})")
    for name, decision in preview.not_shown():  # granted, but the guard would not list it now
        print(f"mcp-guard: {escape_name(name)} is not shown: {decision.text}", file=sys.stderr)


def explain(
    preview: Preview, config: GuardConfig, name: str, arguments: Mapping[str, Any]
) -> tuple[bool, str]:
    """(allowed, the line to print): the decision the guard would make now, budgets included."""
    agent = preview.agent
    decision = preview.decide(name, arguments)
    if preview.lockout is not None:
        return False, denial(Reason.LOCKED_OUT, f"this agent is locked out until {preview.lockout.until}")
    if not decision.allowed:
        return False, decision.text
    # The guard's own record and hold; the settle step runs in a read, so nothing is written.
    record = record_of(uuid.uuid4().hex, agent, None, name, decision, preview.policy, preview.scrubber)
    hold = hold_of(agent, decision, record, preview.policy.prefixes)
    lockout = config.lockout
    if hold is None and lockout is None:
        return (
            True,
            f"allow: {decision.server}.{decision.tool} for {agent.name!r} with {json.dumps(arguments)}",
        )
    try:
        final: CallRecord = _with_ledger(
            config, partial(holds.check, record=record, hold=hold, lockout=lockout)
        )
    except holds.Stale:  # its activation ended after the preview read it
        return False, denial(Reason.UNKNOWN_TOOL, f"Unknown tool: {escape_name(name)}")
    if final.decision == "allow":
        return (
            True,
            f"allow: {decision.server}.{decision.tool} for {agent.name!r} with {json.dumps(arguments)}",
        )
    if final.reason == Reason.APPROVAL_PENDING:  # a read files no request: there is no id to name
        return False, denial(Reason.APPROVAL_PENDING, holds.pending_detail(None))
    return False, denial(final.reason or "", final.detail or "")


def _standing_lines(preview: Preview) -> list[str]:
    """The agent's standing: its lockout, its activations in force, the marks its sessions carry."""
    lines = []
    if preview.lockout is not None:
        lines.append(f"(locked out until {preview.lockout.until}; `mcp-guard agents unlock` ends it)")
    for event in preview.activations:
        by, reason = event.payload.get("by"), event.payload.get("reason")
        lines.append(f"(activated: {event.server}.{event.tool} until {event.until}, by {by}: {reason})")
    for marked in preview.marks:
        lines.append(f"(mark {marked.mark} carried: set by {marked.tool} at {marked.ts})")
    return lines


def _prerequisites(preview: Preview, offer: Offer) -> tuple[flows.Prerequisite, ...]:
    return flows.required(offer.grant, offer.server, preview.policy.prefixes)


def _activatable(preview: Preview, offer: Offer) -> str | None:
    """The `max` of a grant for this tool that would apply to the agent if activated (not now)."""
    target = (offer.server, offer.tool.name)
    found = preview.policy.grant_for(preview.agent, *target, active=[target])
    if found is None or found[1] is offer.grant or found[1].activation is None:
        return None
    return format_duration(found[1].activation.max)


def _blocking(preview: Preview, offer: Offer) -> list[flows.Marked]:
    rule = offer.grant.blocked_after
    if rule is None:
        return []
    return [m for m in preview.marks if m.mark in rule.marks]


def _activated_until(preview: Preview, offer: Offer) -> str | None:
    found = [e.until for e in preview.activations if (e.server, e.tool) == (offer.server, offer.tool.name)]
    return found[0] if found else None


def _rule_lines(preview: Preview, offer: Offer) -> list[str]:
    """The escalation rules of a tool's grant, as `tools` shows them."""
    grant, lines = offer.grant, []
    for pre in _prerequisites(preview, offer):
        lines.append(f"requires: {pre.missing().detail}")
    if grant.marks:
        lines.append(f"marks: sets {', '.join(grant.marks)} on the session")
    if grant.blocked_after is not None:
        rule = grant.blocked_after
        now = "".join(f"; blocked now by {m.mark} until {m.until}" for m in _blocking(preview, offer)[:1])
        lines.append(f"blocked_after: {', '.join(rule.marks)} within {format_duration(rule.within)}{now}")
    if grant.activation is not None:
        until = _activated_until(preview, offer)
        lines.append(f"activation: up to {format_duration(grant.activation.max)}; in force until {until}")
    most = _activatable(preview, offer)
    if most is not None:
        who, tool = preview.agent.name, f"{offer.server}.{offer.tool.name}"
        lines.append(
            f"activation: another grant applies while activated (up to {most}): grants activate {who} {tool}"
        )
    return lines


def _rules_json(preview: Preview, offer: Offer) -> dict[str, Any]:
    grant = offer.grant
    return {
        "requires": [
            {"tool": pre.first, "match": dict(pre.match), "within": format_duration(pre.within)}
            for pre in _prerequisites(preview, offer)
        ],
        "marks": list(grant.marks),
        "blocked_after": None
        if grant.blocked_after is None
        else {
            "marks": list(grant.blocked_after.marks),
            "within": format_duration(grant.blocked_after.within),
        },
        "blocked_now": [
            {"mark": m.mark, "by": m.tool, "at": m.ts, "until": m.until} for m in _blocking(preview, offer)
        ],
        "activation": None
        if grant.activation is None
        else {"max": format_duration(grant.activation.max), "until": _activated_until(preview, offer)},
        "activatable": _activatable(preview, offer),
    }


def _str(value: Decimal | None) -> str | None:
    return None if value is None else budgets.format_amount(value)
