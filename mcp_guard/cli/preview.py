"""`mcp-guard tools` and `explain`: what an agent would be shown and what a call would get, with
the budgets left, decided exactly as the guard would (with the guard's own functions, pins and
upstreams that are down included). Lists the upstreams' tools; forwards no call and writes
nothing (the ledger is opened read-only, if it exists)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import partial
from typing import Any

import anyio

from mcp_guard import ledger as ledgers
from mcp_guard.config import GuardConfig
from mcp_guard.guard import holds, pins
from mcp_guard.guard.calls import UNREACHABLE, hold_of, record_of, unreachable_denial
from mcp_guard.guard.convert import advertise, offered, tool_def
from mcp_guard.ledger import Window
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.loading import format_duration
from mcp_guard.manifest import Budget, Manifest
from mcp_guard.policy import budgets
from mcp_guard.policy.engine import Agent, Decision, Offer, Policy, escape_name
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


async def _load(config: GuardConfig, manifests: tuple[Manifest, ...], agent: Agent) -> Preview:
    policy = Policy(config, manifests)
    scrubber = Scrubber(policy.secrets)

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
    offers = offered(policy.offers(agent, pinned.catalog), scrubber, log)
    return Preview(policy, agent, offers, scrubber, withheld, down)


def load_preview(config: GuardConfig, manifests: tuple[Manifest, ...], agent: Agent) -> Preview:
    return anyio.run(_load, config, manifests, agent)


def _with_ledger(config: GuardConfig, fn: Any, default: Any) -> Any:
    """fn(window) on the ledger's current state, or `default` if there is no ledger yet."""
    if not ledgers.exists(config.ledger):
        return default

    async def read() -> Any:
        async with await ledgers.open_ledger(config.ledger, readonly=True) as ledger:
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
        return lines

    lines = _with_ledger(config, report, None) if ledgers.exists(config.ledger) else report(None)
    assert lines is not None
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
    if not decision.allowed:
        return False, decision.text
    # The guard's own record and hold; the settle step runs in a read, so nothing is written.
    record = record_of(uuid.uuid4().hex, agent, None, name, decision, preview.policy, preview.scrubber)
    hold = hold_of(agent, decision, record)
    if hold is None:
        return (
            True,
            f"allow: {decision.server}.{decision.tool} for {agent.name!r} with {json.dumps(arguments)}",
        )
    if ledgers.exists(config.ledger):
        final: CallRecord = _with_ledger(config, partial(holds.check, record=record, hold=hold), None)
    else:  # no history yet: every budget is whole, and no approval has been given
        violation = budgets.check_budgets(hold.tool, [(c, Decimal(0)) for c in hold.charges])
        reason = violation.reason if violation else Reason.APPROVAL_PENDING if hold.approval else None
        detail = violation.detail if violation else None
        final = replace(record, decision="deny" if reason else "allow", reason=reason, detail=detail)
    if final.decision == "allow":
        return (
            True,
            f"allow: {decision.server}.{decision.tool} for {agent.name!r} with {json.dumps(arguments)}",
        )
    if final.reason == Reason.APPROVAL_PENDING:  # a read files no request: there is no id to name
        return False, denial(Reason.APPROVAL_PENDING, holds.pending_detail(None))
    return False, denial(final.reason or "", final.detail or "")


def _str(value: Decimal | None) -> str | None:
    return None if value is None else budgets.format_amount(value)
