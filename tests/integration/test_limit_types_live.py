"""A grant's numeric cap in front of a real SDK `MCPServer` whose `amount: Decimal` also accepts
strings (and converts them): the guard lets only a number through, says so in the advertised
schema, and `check --live` names the grant. The journal proves what reached the upstream; the
ledger file what was decided."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_guard.cli.manifest import check_live
from tests.helpers import (
    REPO_ROOT,
    TIMEOUT,
    Deployment,
    assert_denied,
    inprocess_guard,
    ledger_calls,
    text_of,
)


def _deployment(root: Path) -> Deployment:
    block = Deployment(root).stdio_upstream("refunds", "tests.upstreams.decimal_refunds", cwd=str(REPO_ROOT))
    grant = {
        "allow": ["role:support"],
        "arguments": {"amount": {"exclusiveMinimum": 0, "maximum": 100}},
        "budgets": [{"sum": "amount", "max": 150, "per": "1d"}],
    }
    return Deployment(root).add(
        "refunds", {"server": "refunds", "upstream": block, "tools": {"refund": grant}}
    )


SMUGGLED = ["5000", "-5", "1E+6", "1e2", " 50", "50 ", "40", "0x10", "Infinity"]


async def test_numbers_sent_as_strings_never_reach_a_decimal_upstream_behind_a_cap(tmp_path: Path) -> None:
    deployment = _deployment(tmp_path)
    async with inprocess_guard(deployment, "support-bot") as session:
        with anyio.fail_after(TIMEOUT):
            listed = await session.list_tools()
            amount = listed.tools[0].input_schema["properties"]["amount"]
            assert (amount["type"], amount["maximum"]) == ("number", 100)
            for value in SMUGGLED:
                assert_denied(
                    await session.call_tool("refunds__refund", {"order_id": "A", "amount": value}),
                    "limit_exceeded",
                )
            assert deployment.journal("refunds") == []
            ok = await session.call_tool("refunds__refund", {"order_id": "A", "amount": 40})
            assert ok.is_error is False, text_of(ok)
    assert deployment.journal("refunds") == [
        {"server": "refunds", "tool": "refund", "arguments": {"order_id": "A", "amount": "40"}}
    ]
    calls = ledger_calls(deployment.ledger_path)
    assert [(c["decision"], c["reason"], c["arguments"]["amount"]) for c in calls] == [
        *[("deny", "limit_exceeded", value) for value in SMUGGLED],
        ("allow", None, 40),
    ]


@pytest.mark.parametrize("limit", [{"maximum": 100}, {"multipleOf": 5}])
def test_check_live_names_a_cap_on_an_argument_that_also_accepts_strings(
    tmp_path: Path, limit: dict[str, Any]
) -> None:
    deployment = _deployment(tmp_path)
    deployment.manifests["refunds"]["tools"]["refund"]["arguments"]["amount"] = limit
    problems = check_live(*deployment.load())
    assert len(problems) == 1, problems
    assert "tools.refund[0].arguments.amount.type: the upstream's argument also accepts string" in problems[0]


def test_check_live_is_clean_once_the_limit_says_its_type(tmp_path: Path) -> None:
    deployment = _deployment(tmp_path)
    deployment.manifests["refunds"]["tools"]["refund"]["arguments"]["amount"]["type"] = "number"
    assert check_live(*deployment.load()) == []
