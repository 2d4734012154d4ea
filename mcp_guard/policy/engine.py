"""Who may see and call what. One function, `offers`, decides what an agent may call; listing is
that function applied to every tool and calling looks the name up in its result, so listing
equals calling. Pure: no mcp, anyio, sqlite, os or clock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mcp_guard.config import GuardConfig
from mcp_guard.manifest import Approval, BlockedAfter, Grant, Manifest
from mcp_guard.policy.approvals import needs_approval
from mcp_guard.policy.arguments import Violation, check_schema, check_strict
from mcp_guard.policy.budgets import Charge, Once, charges, once
from mcp_guard.policy.flows import Prerequisite, prerequisites
from mcp_guard.policy.offers import Offer, ToolDef, compile_offer, declared_arguments, default_escapes
from mcp_guard.policy.reasons import Reason, denial
from mcp_guard.policy.targets import Target


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    roles: frozenset[str]
    # Which credential proved it, as the ledger records it (`key:...`, `token:<jti>`, ...); never
    # the credential itself, and no part of who the agent is.
    credential: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason | None
    detail: str
    target: Target
    arguments: Mapping[str, Any]
    # What must still hold in the ledger for an allowed call: its budget charges, and the
    # approval it needs (None if none).
    charges: tuple[Charge, ...] = ()
    approval: Approval | None = None
    once: Once | None = None  # a `unique` grant: no identical allowed call within its window
    requires: tuple[Prerequisite, ...] = ()  # calls that must come first (unscoped)
    blocked: BlockedAfter | None = None  # marks that refuse it
    marks: tuple[str, ...] = ()  # marks its session carries once it is allowed
    activated: bool = False  # decided by a grant that applies only while activated
    sensitive: frozenset[str] = frozenset()  # arguments the ledger records only as a digest
    paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # the grant's folders by argument

    @classmethod
    def refuse(
        cls, reason: Reason, detail: str, server: str | None, tool: str, arguments: Mapping[str, Any]
    ) -> Decision:
        """A refused tool call."""
        return cls(False, reason, detail, Target("tool", server, tool), arguments)

    @property
    def server(self) -> str | None:
        return self.target.server

    @property
    def tool(self) -> str:
        return self.target.name

    @property
    def text(self) -> str:
        """The one line a refused call returns to the model."""
        return denial(self.reason or "", self.detail)


Catalog = Mapping[str, Sequence[ToolDef]]
"""Live upstream tools by server name."""


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def escape_name(name: str) -> str:
    """A name as sent, safe to record and print: escaped, at most 256 characters."""
    return json.dumps(name, ensure_ascii=True)[1:-1][:256]


class Policy:
    """One immutable policy (config + manifests) and its compiled per-tool checks."""

    def __init__(self, config: GuardConfig, manifests: Sequence[Manifest]) -> None:
        self.config = config
        self.manifests = {m.server: m for m in manifests}
        self.agents = {name: Agent(name, frozenset(a.roles)) for name, a in config.agents.items()}
        blob = canonical(
            {
                "config": config.model_dump(mode="json", exclude={"source", "injected"}),
                "manifests": [m.model_dump(mode="json", exclude={"source", "injected"}) for m in manifests],
            }
        )
        self.hash = hashlib.sha256(blob.encode()).hexdigest()
        self.secrets = frozenset(config.injected).union(*(m.injected for m in manifests))
        self.prefixes = {m.server: m.name_prefix for m in manifests}
        # How far back a session's marks matter: the longest `blocked_after.within`.
        rules = [g.blocked_after for m in manifests for _, _, g in m.all_grants() if g.blocked_after]
        self.mark_horizon = max((rule.within for rule in rules), default=0.0)
        # Where a grant applies only while activated: the tools whose decisions depend on it.
        named = {
            (m.server, tool)
            for m in manifests
            for tool, gs in m.tools.items()
            if any(g.activation for g in gs)
        }
        selected = {(m.server, "*") for m in manifests if any(g.activation for g in m.select)}
        self.activatable = frozenset(named | selected)
        # Whether any manifest grants resources, and prompts: what the guard offers beside tools.
        self.exposes = (any(m.resources for m in manifests), any(m.prompts for m in manifests))
        self._compiled: dict[tuple[str, str, int, str], Offer | None] = {}
        self._schema_checked: dict[str, bool] = {}

    def grant_for(
        self,
        agent: Agent,
        server: str,
        tool: str,
        active: Collection[tuple[str, str]] = (),
        annotations: Mapping[str, Any] | None = None,
    ) -> tuple[int, Grant] | None:
        """The first grant, in file order, whose allow matches: chosen by identity alone, and by
        the agent's activations in force (`active`: (server, tool) pairs) for a grant that applies
        only while activated. A tool guard.yaml forbids has none, whatever a manifest says (loading
        refuses such a grant too)."""
        if self.config.forbid and self.config.forbids(server, tool) is not None:
            return None
        manifest = self.manifests.get(server)
        grants = manifest.grants_for(tool, annotations) if manifest else ()
        for i, grant in enumerate(grants):
            if grant.activation is not None and (server, tool) not in active:
                continue
            if grant.matches(agent.name, agent.roles):
                return i, grant
        return None

    def offers(
        self, agent: Agent, catalog: Catalog, active: Collection[tuple[str, str]] = ()
    ) -> dict[str, Offer]:
        """Every tool the agent may see and call, by advertised name, with its activations in force."""
        if agent.name not in self.agents:
            return {}
        out: dict[str, Offer] = {}
        for server, tools in catalog.items():
            manifest = self.manifests.get(server)
            if manifest is None:
                continue
            for tool in tools:
                found = self.grant_for(agent, server, tool.name, active, tool.annotations)
                if found is None:
                    continue
                offer = self._offer(manifest, tool, *found)
                if offer is not None:
                    out[offer.name] = offer
        return out

    def _offer(self, manifest: Manifest, tool: ToolDef, index: int, grant: Grant) -> Offer | None:
        key = (manifest.server, tool.name, index, tool.digest)
        if key not in self._compiled:
            self._compiled[key] = compile_offer(manifest, tool, grant)
        return self._compiled[key]

    def _schema_ok(self, offer: Offer) -> bool:
        """Whether the upstream's inputSchema is valid JSON Schema: checked on the tool's first
        call, not when listing (the meta-schema check costs ~1.5 ms a tool); a bad one refuses."""
        digest = offer.tool.digest
        if digest not in self._schema_checked:
            try:
                offer.upstream_validator.validator.check_schema(dict(offer.tool.input_schema))
                self._schema_checked[digest] = True
            except Exception:
                self._schema_checked[digest] = False
        return self._schema_checked[digest]

    def problems(self, catalog: Catalog) -> list[str]:
        """Manifest entries the live upstreams do not match (warnings while serving)."""
        out: list[str] = []
        for server, tools in catalog.items():
            manifest = self.manifests.get(server)
            if manifest is None:
                continue
            live = {t.name: t for t in tools}
            for name, grants in manifest.tools.items():
                if name not in live:
                    out.append(f"{manifest.source}:tools.{name}: upstream {server!r} has no such tool")
                    continue
                schema = live[name].input_schema
                declared = declared_arguments(schema)
                for i, grant in enumerate(grants):
                    where = f"{manifest.source}:tools.{name}[{i}]"
                    for arg in grant.arguments:
                        if arg not in declared:
                            msg = f"upstream tool has no argument {arg!r}; this grant matches nothing"
                            out.append(f"{where}.arguments.{arg}: {msg}")
                    out += [f"{where}.{problem}" for problem in default_escapes(schema, grant)]
        return out

    def decide(
        self,
        name: str,
        arguments: Mapping[str, Any],
        offers: Mapping[str, Offer],
        *,
        agent: str = "",
        session: str | None = None,
    ) -> Decision:
        """The decision for one call, checks in the order of SPEC.md. Budgets and approval are
        only prepared here (charges, the approval needed); the ledger transaction settles them."""
        offer = offers.get(name)
        if offer is None:
            return Decision.refuse(
                Reason.UNKNOWN_TOOL, f"Unknown tool: {escape_name(name)}", None, escape_name(name), arguments
            )
        violations = check_strict(arguments, offer.declared, self.config.limits.max_argument_bytes)
        violations = violations or _unsettable(offer, arguments)
        if offer.fixed and not violations:
            arguments = {**arguments, **offer.fixed}  # what is checked, recorded and forwarded
        if not violations and not self._schema_ok(offer):
            violations = [
                Violation(Reason.INVALID_ARGUMENTS, "the upstream's schema for this tool is invalid")
            ]
        if not violations and check_schema(offer.merged_validator, arguments, Reason.INVALID_ARGUMENTS):
            # Only a refusal needs to know which schema refused: the upstream's or the grant's.
            violations = check_schema(
                offer.upstream_validator, arguments, Reason.INVALID_ARGUMENTS
            ) or check_schema(offer.limits_validator, arguments, Reason.LIMIT_EXCEEDED)
            violations = violations or [
                Violation(Reason.LIMIT_EXCEEDED, "arguments exceed this grant's limits")
            ]
        if violations:
            return _deny(offer, violations[0], arguments)
        found = charges(offer.grant, agent, session, arguments)
        if isinstance(found, Violation):
            return _deny(offer, found, arguments)
        approval = (
            offer.grant.approval
            if needs_approval(offer.grant.approval, arguments, offer.when_validator)
            else None
        )
        grant = offer.grant
        required = prerequisites(grant, offer.server, self.prefixes, arguments)
        if isinstance(required, Violation):
            return _deny(offer, required, arguments)
        return Decision(
            True,
            None,
            "allowed",
            Target("tool", offer.server, offer.tool.name),
            arguments,
            tuple(found),
            approval,
            once(grant, agent, session, arguments),
            required,
            grant.blocked_after,
            grant.marks,
            grant.activation is not None,
            offer.sensitive,
            grant.paths,
        )


def _unsettable(offer: Offer, arguments: Mapping[str, Any]) -> list[Violation]:
    """An argument the guard sets that the agent sent anyway, or one the grant requires that it
    did not send."""
    for name in offer.fixed:
        if name in arguments:
            detail = f"{name} is set by the guard for this tool; leave it out"
            return [Violation(Reason.LIMIT_EXCEEDED, detail)]
    for name in offer.grant.required:
        if name not in arguments:
            return [Violation(Reason.INVALID_ARGUMENTS, f"{name} is required")]
    return []


def _deny(offer: Offer, violation: Violation, arguments: Mapping[str, Any]) -> Decision:
    refused = Decision.refuse(violation.reason, violation.detail, offer.server, offer.tool.name, arguments)
    return replace(refused, sensitive=offer.sensitive)
