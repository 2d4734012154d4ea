"""`mcp-guard ledger export` on a real ledger file: every entry kind with its hashes, oldest first,
resumable by id, followed as entries land, and the OCSF API Activity mapping of decisions and
outcomes."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import uuid
from pathlib import Path

import anyio
import pytest
import yaml

from mcp_guard.cli.audit import run_audit
from mcp_guard.cli.main import main
from mcp_guard.config import LedgerConfig
from mcp_guard.ledger import open_ledger
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.ledger.export import ocsf_event
from mcp_guard.ledger.sqlite.engine import Ledger

POLICY = "ab" * 32


def decide(ledger: Ledger, decision: str = "allow", outcome: str | None = "ok") -> str:
    rec = CallRecord(uuid.uuid4().hex, "support-bot", "sess-1", "billing", "refund", {"amount": 40},
                     decision, None if decision == "allow" else "limit_exceeded",
                     None if decision == "allow" else "amount must be <= 100", POLICY)  # fmt: skip
    ledger.record_decision(rec)
    if outcome is not None:
        ledger.record_outcome(rec.call_id, outcome, 12.6, None if outcome == "ok" else "it broke")
    return rec.call_id


@pytest.fixture
def config(tmp_path: Path) -> Path:
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        ledger.record_event("policy", {"action": "loaded", "hash": POLICY}, POLICY)
        decide(ledger)
        decide(ledger, "deny", None)
        decide(ledger, outcome="upstream_error")
    path = tmp_path / "guard.yaml"
    path.write_text(yaml.safe_dump({"ledger": {"path": "ledger.db"}}))
    return path


def export(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    assert main(["--config", str(config), "ledger", "export", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_export_prints_every_entry_with_its_hashes_oldest_first_and_resumes_by_id(config: Path, capsys):
    entries = export(config, capsys)
    assert [e["kind"] for e in entries] == [
        "policy",
        "decision",
        "outcome",
        "decision",
        "decision",
        "outcome",
    ]
    assert [e["id"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0]["prev_hash"] == "0" * 64
    assert all(e["prev_hash"] == p["entry_hash"] for p, e in itertools.pairwise(entries))
    assert entries[0]["payload"] == {"action": "loaded", "hash": POLICY}
    assert entries[1]["arguments"] == {"amount": 40}
    assert entries[1]["method"] == "tools/call"
    assert export(config, capsys, "--after-id", "4") == entries[4:]
    assert export(config, capsys, "--after-id", "99") == []


def test_a_bad_after_id_is_exit_2(config: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), "ledger", "export", "--after-id", "-1"])
    assert exited.value.code == 2


def test_ocsf_maps_decisions_and_outcomes_to_api_activity_and_leaves_out_other_kinds(config: Path, capsys):
    raw = export(config, capsys)
    events = export(config, capsys, "--format", "ocsf")
    assert len(events) == 5  # the policy entry is jsonl's only
    allowed, ok, denied, _, failed = events
    for event in events:
        assert (event["class_uid"], event["category_uid"], event["type_uid"]) == (6003, 6, 600399)
        assert event["activity_name"] == event["api"]["operation"] == "tools/call"
        assert event["actor"] == {
            "user": {"name": "support-bot", "uid": "support-bot"},
            "session": {"uid": "sess-1"},
        }
        assert event["api"]["service"]["name"] == "billing"
        assert event["resources"] == [{"name": "billing.refund", "type": "MCP tool"}]
        assert isinstance(event["time"], int)
    assert (allowed["action"], allowed["disposition_id"], allowed["status_id"]) == ("Allowed", 1, 1)
    assert (denied["action"], denied["disposition"], denied["status_code"]) == (
        "Denied",
        "Blocked",
        "limit_exceeded",
    )
    assert denied["status_detail"] == "amount must be <= 100"
    assert denied["unmapped"]["arguments"] == {"amount": 40}
    assert (ok["status"], ok["status_code"], ok["duration"]) == ("Success", "ok", 13)
    assert (failed["status"], failed["status_code"], failed["status_detail"]) == (
        "Failure",
        "upstream_error",
        "it broke",
    )
    assert allowed["metadata"]["uid"] == raw[1]["entry_hash"]
    assert allowed["metadata"]["sequence"] == 2
    assert allowed["metadata"]["correlation_uid"] == ok["metadata"]["correlation_uid"] == raw[1]["call_id"]
    assert allowed["unmapped"]["prev_hash"] == raw[0]["entry_hash"]
    assert ocsf_event({"kind": "pin"}) is None


async def test_export_follows_new_entries_as_they_land(config: Path):
    path = config.parent / "ledger.db"
    out = io.StringIO()
    args = argparse.Namespace(ledger_command="export", after_id=6, follow=True, format="jsonl")
    async with (
        await open_ledger(LedgerConfig(path=path), readonly=True) as store,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(run_audit, args, store, LedgerConfig(path=path), out)
        with Ledger.open(path) as writer:
            call_id = decide(writer, "deny", None)
        with anyio.fail_after(10):
            while not out.getvalue():  # noqa: ASYNC110 (written by the export task)
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    (line,) = out.getvalue().splitlines()
    assert (json.loads(line)["id"], json.loads(line)["call_id"]) == (7, call_id)
