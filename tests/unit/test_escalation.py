"""Escalation across calls, as the pure policy and loading see it: what `requires`, `marks`,
`blocked_after` and `activation` ask of a call, how each refusal is worded, and what loading
refuses or warns about. The ledger side is in the store contract; the guard's refusals in-process
and across processes."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_guard.config import AgentConfig, GuardConfig, LockoutConfig
from mcp_guard.errors import ConfigError
from mcp_guard.manifest import BlockedAfter, Grant, Manifest, Requirement, load_deployment
from mcp_guard.policy import flows
from mcp_guard.policy.engine import Agent, Policy
from mcp_guard.policy.offers import ToolDef
from mcp_guard.policy.reasons import NOT_COUNTED, Reason
from tests.helpers import write_private

REFUND = {"order_id": "ORD-1004", "amount": 40}
PREFIXES = {"billing": "billing__", "tickets": "t_"}


def _tool(name: str, *args: str) -> ToolDef:
    schema = {"type": "object", "properties": {a: {} for a in args}}
    return ToolDef(
        name, schema, hashlib.sha256(json.dumps([name, schema]).encode()).hexdigest(), description="Do it."
    )


def _grant(**fields: Any) -> Grant:
    return Grant.model_validate({"allow": ["role:support"], **fields})


# -- requires -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "target"),
    [
        ("lookup_order", ("billing", "lookup_order")),
        ("tickets.get_ticket", ("tickets", "get_ticket")),
        ("billing.lookup_order", ("billing", "lookup_order")),
        ("v2.lookup", ("billing", "v2.lookup")),  # no server "v2": a dotted tool name on this server
        ("tickets.", ("billing", "tickets.")),
    ],
)
def test_a_required_tool_is_on_the_same_server_unless_it_names_another(tool: str, target: Any) -> None:
    assert Requirement(tool=tool).target("billing", PREFIXES) == target


def test_a_prerequisite_names_the_advertised_tool_to_call_first_and_the_arguments_that_must_match() -> None:
    grant = _grant(
        requires=[
            {"tool": "lookup_order", "match": {"order_id": "order_id"}, "within": "15m"},
            {"tool": "tickets.get_ticket", "match": {"id": "ticket"}},
        ]
    )
    found = flows.prerequisites(grant, "billing", PREFIXES, {**REFUND, "ticket": "T-1"})
    assert isinstance(found, tuple)
    assert [p.missing().detail for p in found] == [
        "call billing__lookup_order with the same order_id first (within 15m)",
        "call t_get_ticket with the same ticket first (within 1h)",
    ]
    assert all(p.missing().reason == Reason.PREREQUISITE_MISSING for p in found)


def test_a_call_without_an_argument_its_prerequisite_must_match_is_refused_at_once() -> None:
    grant = _grant(requires=[{"tool": "lookup_order", "match": {"order_id": "order_id"}}])
    found = flows.prerequisites(grant, "billing", PREFIXES, {"amount": 40})
    assert not isinstance(found, tuple)
    assert (found.reason, found.detail) == (
        Reason.PREREQUISITE_MISSING,
        "call billing__lookup_order with the same order_id first (within 1h)",
    )


@pytest.mark.parametrize(
    ("session", "value", "scope"),
    [
        ("s1", "ORD-1004", (("agent", "bot"), ("session", "s1"), ("arg:order_id", "s:ord-1004"))),
        (None, " ＯＲＤ-1004", (("agent", "bot"), ("session", "agent:bot"), ("arg:order_id", "s:ord-1004"))),
        ("s1", 1004, (("agent", "bot"), ("session", "s1"), ("arg:order_id", "j:1004"))),
    ],
)
def test_a_prerequisite_is_scoped_to_the_agent_its_session_and_the_matched_values(
    session: str | None, value: Any, scope: Any
) -> None:
    grant = _grant(requires=[{"tool": "lookup_order", "match": {"order_id": "order_id"}}])
    found = flows.prerequisites(grant, "billing", PREFIXES, {"order_id": value})
    assert isinstance(found, tuple)
    assert found[0].scoped("bot", session, {"order_id": value}).scope == scope


def test_a_prerequisite_matches_the_required_calls_argument_under_its_own_name() -> None:
    grant = _grant(requires=[{"tool": "lookup_order", "match": {"id": "order_id"}}])
    found = flows.prerequisites(grant, "billing", PREFIXES, REFUND)
    assert isinstance(found, tuple)
    assert found[0].scoped("bot", "s1", REFUND).scope[-1] == ("arg:id", "s:ord-1004")


@pytest.mark.parametrize(
    "requires",
    [
        [{"match": {"order_id": "order_id"}}],  # no tool
        [{"tool": ""}],
        [{"tool": "lookup_order", "match": {"order id": "order_id"}}],
        [{"tool": "lookup_order", "within": "soon"}],
        [{"tool": "lookup_order", "extra": 1}],
        {"tool": "lookup_order"},  # a list
    ],
)
def test_a_malformed_requires_is_a_load_error(requires: Any) -> None:
    with pytest.raises(ValueError, match="requires"):
        _grant(requires=requires)


# -- marks and blocked_after ----------------------------------------------------------------------


def test_a_session_carrying_a_blocking_mark_is_refused_naming_the_mark_and_the_tool_that_set_it() -> None:
    rule = BlockedAfter.model_validate({"marks": ["customer-data", "pii"], "within": "1h"})
    carried = [
        flows.Marked("secrets", "vault__read", "T1", "T2"),
        flows.Marked("pii", "crm__get", "T3", "T4"),
    ]
    found = flows.blocked(rule, carried)
    assert found is not None
    assert found.reason == Reason.FLOW_BLOCKED
    assert (
        found.detail
        == "this session carries the mark 'pii', set by crm__get at T3; this tool is refused until T4"
    )
    assert flows.blocked(rule, carried[:1]) is None
    assert flows.blocked(rule, []) is None


@pytest.mark.parametrize("mark", ["Customer", "-x", "a b", "x" * 65, "", "ünï"])
def test_a_mark_must_be_a_lowercase_name(mark: str) -> None:
    with pytest.raises(ValueError, match="marks"):
        _grant(marks=[mark])
    with pytest.raises(ValueError, match="blocked_after"):
        _grant(blocked_after={"marks": [mark]})


def test_blocked_after_needs_at_least_one_mark() -> None:
    with pytest.raises(ValueError, match="blocked_after"):
        _grant(blocked_after={"marks": []})


def _policy(*grants: dict[str, Any], agents: dict[str, Any] | None = None, **config: Any) -> Policy:
    manifest = Manifest.model_validate(
        {
            "server": "billing",
            "upstream": {"command": "x"},
            "tools": {"refund": list(grants), "lookup_order": {"allow": ["*"]}},
        }
    )
    agents = agents or {"bot": AgentConfig(roles=("support",))}
    return Policy(GuardConfig(agents=agents, **config), [manifest])


CATALOG = {"billing": (_tool("refund", "order_id", "amount"), _tool("lookup_order", "order_id"))}
BOT = Agent("bot", frozenset({"support"}))


def test_a_blocked_tool_says_so_in_one_added_sentence_and_a_marking_tool_says_nothing() -> None:
    policy = _policy(
        {"allow": ["role:support"], "blocked_after": {"marks": ["customer-data"], "within": "2h"}}
    )
    offers = policy.offers(BOT, CATALOG)
    assert offers["billing__refund"].description == (
        "Do it. Refused for 2h after a call in this session that sets the mark customer-data."
    )
    assert offers["billing__lookup_order"].description == "Do it."


def test_an_allowed_decision_carries_what_the_ledger_must_settle() -> None:
    policy = _policy(
        {
            "allow": ["role:support"],
            "marks": ["money"],
            "blocked_after": {"marks": ["customer-data"]},
            "requires": [{"tool": "lookup_order", "match": {"order_id": "order_id"}}],
        }
    )
    decision = policy.decide(
        "billing__refund", REFUND, policy.offers(BOT, CATALOG), agent="bot", session="s1"
    )
    assert decision.allowed
    assert decision.marks == ("money",)
    assert decision.blocked == BlockedAfter(marks=("customer-data",))
    assert [(p.server, p.tool, p.first) for p in decision.requires] == [
        ("billing", "lookup_order", "billing__lookup_order")
    ]
    assert not decision.activated


# -- activation -----------------------------------------------------------------------------------

ACTIVATED = {
    "allow": ["role:support"],
    "activation": {"max": "2h"},
    "arguments": {"amount": {"maximum": 1000}},
}
STANDING = {"allow": ["role:support"], "arguments": {"amount": {"maximum": 100}}}


def test_a_grant_that_needs_activation_applies_only_while_an_activation_is_in_force() -> None:
    policy = _policy(ACTIVATED, STANDING)
    assert policy.activatable == {("billing", "refund")}
    idle = policy.offers(BOT, CATALOG)["billing__refund"]
    active = policy.offers(BOT, CATALOG, [("billing", "refund")])["billing__refund"]
    assert idle.input_schema["properties"]["amount"]["maximum"] == 100
    assert active.input_schema["properties"]["amount"]["maximum"] == 1000
    refused = policy.decide("billing__refund", {"amount": 600}, {"billing__refund": idle}, agent="bot")
    assert (refused.allowed, refused.reason) == (False, Reason.LIMIT_EXCEEDED)
    allowed = policy.decide("billing__refund", {"amount": 600}, {"billing__refund": active}, agent="bot")
    assert (allowed.allowed, allowed.activated) == (True, True)


def test_an_activation_of_another_tool_or_for_an_agent_it_does_not_allow_changes_nothing() -> None:
    policy = _policy(ACTIVATED, agents={"bot": AgentConfig(roles=("support",)), "other": AgentConfig()})
    assert "billing__refund" not in policy.offers(BOT, CATALOG, [("billing", "lookup_order")])
    other = Agent("other", frozenset())
    assert "billing__refund" not in policy.offers(other, CATALOG, [("billing", "refund")])


@pytest.mark.parametrize("most", ["0s", "25h", "2d", "soon", 3600])
def test_an_activation_longer_than_a_day_or_not_a_duration_is_a_load_error(most: Any) -> None:
    with pytest.raises(ValueError, match="activation"):
        _grant(activation={"max": most})


# -- lockout --------------------------------------------------------------------------------------


def test_lockout_reads_for_as_a_duration_and_refuses_nonsense() -> None:
    lockout = LockoutConfig.model_validate({"denials": 10, "within": "5m", "for": "15m"})
    assert (lockout.denials, lockout.within, lockout.for_) == (10, 300, 900)
    for bad in (
        {"denials": 0, "within": "5m", "for": "15m"},
        {"denials": 10, "within": "5m"},
        {"denials": 10, "within": "5m", "for": "15m", "forever": True},
        {"denials": "ten", "within": "5m", "for": "15m"},
        {"denials": 10, "within": "-5m", "for": "15m"},
    ):
        with pytest.raises(ValueError, match="lockout"):
            GuardConfig.model_validate({"lockout": bad})


def test_refusals_that_are_not_the_agents_doing_and_the_lockout_itself_do_not_count() -> None:
    assert {
        Reason.APPROVAL_PENDING,
        Reason.LEDGER_UNAVAILABLE,
        Reason.UPSTREAM_UNAVAILABLE,
        Reason.UPSTREAM_TIMEOUT,
        Reason.LOCKED_OUT,
    } == NOT_COUNTED


# -- loading, through real files ------------------------------------------------------------------


def _deployment(
    root: Path, billing_tools: dict[str, Any], tickets_tools: dict[str, Any] | None = None
) -> Path:
    (root / "tool_manifests").mkdir()
    write_private(root / "guard.yaml", yaml.safe_dump({"agents": {"bot": {"roles": ["support"]}}}))
    manifests = {"billing": billing_tools, "tickets": tickets_tools or {"get_ticket": {"allow": ["*"]}}}
    for server, tools in manifests.items():
        body = {"server": server, "upstream": {"command": "x"}, "tools": tools}
        write_private(root / "tool_manifests" / f"{server}.yaml", yaml.safe_dump(body))
    return root / "guard.yaml"


@pytest.mark.parametrize("required", ["lookup", "tickets.lookup_order", "nowhere.lookup_order", "get_ticket"])
def test_a_required_tool_that_no_manifest_lists_is_a_load_error(tmp_path: Path, required: str) -> None:
    config = _deployment(
        tmp_path,
        {"lookup_order": {"allow": ["*"]}, "refund": {"allow": ["*"], "requires": [{"tool": required}]}},
    )
    with pytest.raises(ConfigError, match=r"tools\.refund\[0\]\.requires\[0\]\.tool: requires"):
        load_deployment(config)


def test_a_required_tool_on_another_server_loads(tmp_path: Path) -> None:
    config = _deployment(tmp_path, {"refund": {"allow": ["*"], "requires": [{"tool": "tickets.get_ticket"}]}})
    _, manifests = load_deployment(config)
    assert manifests[0].tools["refund"][0].requires[0].tool == "tickets.get_ticket"


def test_a_mark_that_nothing_sets_or_nothing_blocks_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _deployment(
        tmp_path,
        {
            "lookup_order": {"allow": ["*"], "marks": ["customer-data", "unused"]},
            "refund": {"allow": ["*"], "blocked_after": {"marks": ["customer-data", "never-set"]}},
        },
    )
    with caplog.at_level(logging.WARNING, logger="mcp_guard"):
        load_deployment(config)
    warnings = [r.getMessage() for r in caplog.records]
    assert "warning: mark 'unused' is set but no grant is blocked_after it" in warnings
    assert any("mark 'never-set' is set by no grant, so it never blocks" in w for w in warnings)
    assert not any("customer-data" in w for w in warnings)
