"""`mcp-guard ledger browse`: Datasette on a real ledger file, its canned queries and facets asked
through Datasette's JSON API in this process, and nothing it serves can write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mcp_guard.cli.browse import QUERIES, build
from mcp_guard.cli.main import main
from mcp_guard.errors import LedgerError
from mcp_guard.ledger.entries import CallRecord, format_ts
from mcp_guard.ledger.sqlite.engine import Ledger

POLICY = "ab" * 32
NOW = datetime.now(UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        ledger.record_event("policy", {"action": "loaded", "hash": POLICY}, POLICY)

        def decide(agent: str, decision: str, reason: str | None, amount: float, outcome: str | None) -> None:
            rec = CallRecord(uuid.uuid4().hex, agent, None, "billing", "refund", {"amount": amount}, decision,
                             reason, None, POLICY)  # fmt: skip
            ledger.record_decision(rec)
            if outcome is not None:
                ledger.record_outcome(rec.call_id, outcome, 3.0)

        decide("support-bot", "allow", None, 40, "ok")
        decide("support-bot", "allow", None, 2.5, None)  # no outcome: in flight, or the guard died
        decide("support-bot", "deny", "limit_exceeded", 500, None)
        decide("finance-bot", "deny", "limit_exceeded", 900, None)
        decide("finance-bot", "deny", "budget_exceeded", 10, None)
        for request, expires in (("r-pending", NOW + timedelta(hours=1)), ("r-done", NOW + timedelta(hours=1)),
                                 ("r-old", NOW - timedelta(hours=1))):  # fmt: skip
            payload = {"id": request, "action": "request", "expires_at": format_ts(expires)}
            ledger.record_event(
                "approval", payload, POLICY, agent="finance-bot", server="billing", tool="refund"
            )
        ledger.record_event("approval", {"id": "r-done", "action": "approve", "by": "ops"}, POLICY)
        until = format_ts(NOW + timedelta(minutes=30))
        ledger.record_event("activation", {"action": "activate", "until": until, "reason": "INC-1", "by": "ops"},
                            agent="support-bot", server="billing", tool="refund")  # fmt: skip
        ledger.record_event("lockout", {"until": until, "denials": 5, "within": 60}, agent="finance-bot")
    return path


async def rows(datasette, path: str) -> list[dict]:
    answer = await datasette.client.get(path)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_the_canned_queries_answer_through_datasettes_json_api(ledger: Path):
    datasette = build(ledger)
    await datasette.invoke_startup()
    refusals = await rows(datasette, "/ledger/refusals_by_reason.json?_shape=array")
    assert [(r["reason"], r["refusals"], r["agents"]) for r in refusals] == [
        ("limit_exceeded", 2, 2), ("budget_exceeded", 1, 1),
    ]  # fmt: skip
    (spend,) = await rows(datasette, "/ledger/spend_per_agent_per_day.json?_shape=array")
    assert (spend["agent"], spend["target"], spend["calls"], spend["amount"]) == (
        "support-bot",
        "billing.refund",
        2,
        42.5,
    )
    assert spend["day"] == NOW.strftime("%Y-%m-%d")
    (open_call,) = await rows(datasette, "/ledger/calls_without_outcome.json?_shape=array")
    assert open_call["agent"] == "support-bot"
    pending = await rows(datasette, "/ledger/approvals_pending.json?_shape=array")
    assert [p["request"] for p in pending] == ["r-pending"]
    standing = await rows(datasette, "/ledger/activations_and_lockouts.json?_shape=array")
    assert [(r["kind"], r["agent"], r["action"], r["reason"]) for r in standing] == [
        ("lockout", "finance-bot", None, None), ("activation", "support-bot", "activate", "INC-1"),
    ]  # fmt: skip
    (policy,) = await rows(datasette, "/ledger/policy_changes.json?_shape=array")
    assert policy["action"] == "loaded"
    assert set(QUERIES) == {"refusals_by_reason", "spend_per_agent_per_day", "calls_without_outcome",
                            "approvals_pending", "activations_and_lockouts", "policy_changes"}  # fmt: skip


async def test_the_entries_table_has_facets_and_nothing_can_write(ledger: Path):
    datasette = build(ledger)
    await datasette.invoke_startup()
    answer = await datasette.client.get("/ledger/entries.json?_facet=kind")
    facets = answer.json()["facet_results"]
    assert {f["value"]: f["count"] for f in facets["kind"]["results"]} == {
        "policy": 1, "decision": 5, "outcome": 1, "approval": 4, "activation": 1, "lockout": 1,
    }  # fmt: skip
    before = ledger.read_bytes()  # noqa: ASYNC240 (a small file, once)
    for sql in ("DELETE FROM entries", "UPDATE entries SET agent = 'x'", "DROP TRIGGER entries_no_delete"):
        answer = await datasette.client.get("/ledger.json", params={"sql": sql})
        assert answer.status_code == 400
    assert ledger.read_bytes() == before  # noqa: ASYNC240
    database = datasette.get_database("ledger")
    with pytest.raises(Exception, match="readonly"):
        await database.execute("DELETE FROM entries")


def test_browse_of_a_missing_ledger_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(LedgerError, match="no ledger file"):
        build(tmp_path / "none.db")
    (tmp_path / "guard.yaml").write_text("ledger: {path: none.db}\n")
    assert main(["--config", str(tmp_path / "guard.yaml"), "ledger", "browse"]) == 1
    assert "no ledger file" in capsys.readouterr().err
