"""Commands that only read the ledger need only its section: a variable another section names (a
signing key the serving guard needs) need not be set, and `--ledger PATH` needs no guard.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_guard.cli.main import main
from mcp_guard.config import LedgerConfig
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.ledger.sqlite.engine import Ledger
from tests.helpers import write_private


def _ledger(path: Path) -> None:
    ledger = Ledger.open(path)
    record = CallRecord(
        "c1", "support-bot", None, "billing", "refund", {"amount": 5}, "allow", None, None, "0" * 64
    )
    ledger.record_decision(record)
    ledger.close()


def test_ledger_tail_reads_with_a_signing_key_variable_unset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ledger(tmp_path / "ledger.db")
    write_private(
        tmp_path / "guard.yaml",
        "ledger: {path: ledger.db}\ntokens: {signing_key: '${SURELY_UNSET_SIGNING_KEY}'}\nagents: {}\n",
    )
    assert main(["--config", str(tmp_path / "guard.yaml"), "ledger", "tail", "--json"]) == 0
    assert '"agent":"support-bot"' in capsys.readouterr().out
    (tmp_path / "tool_manifests").mkdir()
    assert main(["--config", str(tmp_path / "guard.yaml"), "check"]) == 0  # it says serve needs it
    said = capsys.readouterr().err
    assert (
        "tokens.signing_key: environment variable 'SURELY_UNSET_SIGNING_KEY' is not set here; `serve` needs it"
        in said
    )
    assert main(["--config", str(tmp_path / "guard.yaml"), "serve", "--agent", "x"]) == 2  # serving needs it
    assert (
        "tokens.signing_key: environment variable 'SURELY_UNSET_SIGNING_KEY' is not set"
        in capsys.readouterr().err
    )


def test_a_variable_a_reader_would_use_is_still_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_private(tmp_path / "guard.yaml", "agents: {}\nmanifests: '${SURELY_UNSET_FOLDER}'\n")
    assert main(["--config", str(tmp_path / "guard.yaml"), "check"]) == 2
    assert (
        "guard.yaml:manifests: environment variable 'SURELY_UNSET_FOLDER' is not set"
        in capsys.readouterr().err
    )


def test_ledger_option_reads_a_ledger_without_any_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _ledger(tmp_path / "elsewhere.db")
    monkeypatch.chdir(tmp_path)  # no guard.yaml here
    assert main(["--ledger", str(tmp_path / "elsewhere.db"), "ledger", "verify"]) == 0
    assert capsys.readouterr().out.startswith("ok: 1 entries")
    assert main(["--ledger", str(tmp_path / "elsewhere.db"), "approvals", "list"]) == 0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "ledger: {durability: sometimes}\n",
            "guard.yaml:ledger.durability: Input should be 'normal' or 'full'",
        ),
        (
            "ledger: {path: '${SURELY_UNSET_LEDGER}'}\n",
            "environment variable 'SURELY_UNSET_LEDGER' is not set",
        ),
        ("ledger: [1]\n", "guard.yaml:ledger: must be a mapping"),
    ],
)
def test_a_bad_ledger_section_is_still_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    write_private(tmp_path / "guard.yaml", text)
    assert main(["--config", str(tmp_path / "guard.yaml"), "ledger", "tail"]) == 2
    assert says in capsys.readouterr().err
    assert LedgerConfig().path.name == "mcp-guard-ledger.db"


def _calls(path: Path) -> None:
    ledger = Ledger.open(path)
    for i, (agent, decision, reason, session) in enumerate(
        [
            ("a", "allow", None, "s1"),
            ("b", "deny", "limit_exceeded", "s2"),
            ("a", "deny", "unknown_tool", None),
        ]
    ):
        server = None if reason == "unknown_tool" else "billing"
        record = CallRecord(f"c{i}", agent, session, server, "refund", {}, decision, reason, None, "0" * 64)
        ledger.record_decision(record)
    ledger.record_outcome("c0", "ok", 12.5)
    ledger.close()


@pytest.mark.parametrize(
    ("flags", "calls"),
    [
        ([], ["c0", "c1", "c2"]),
        (["--server", "billing"], ["c0", "c1"]),
        (["--session", "s2"], ["c1"]),
        (["--reason", "unknown_tool"], ["c2"]),
        (["--outcome", "ok"], ["c0"]),
        (["--outcome", "none"], ["c1", "c2"]),
        (["--since", "1h"], ["c0", "c1", "c2"]),
        (["--since", "2999-01-01T00:00:00Z"], []),
        (["--until", "2000-01-01 00:00"], []),
        (["--agent", "a", "--decision", "deny"], ["c2"]),
    ],
)
def test_tail_filters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], calls: list[str]
) -> None:
    _calls(tmp_path / "l.db")
    assert main(["--ledger", str(tmp_path / "l.db"), "ledger", "tail", "--json", *flags]) == 0
    assert [json.loads(line)["call_id"] for line in capsys.readouterr().out.splitlines()] == calls


def test_a_bad_time_for_tail_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--ledger", str(tmp_path / "l.db"), "ledger", "tail", "--since", "yesterday"])
    assert exited.value.code == 2
    assert "invalid time 'yesterday'" in capsys.readouterr().err


def test_stats_json_has_counts_and_duration_percentiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _calls(tmp_path / "l.db")
    assert main(["--ledger", str(tmp_path / "l.db"), "ledger", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["invocations"] == 3
    assert stats["by_reason"] == {"limit_exceeded": 1, "unknown_tool": 1}
    assert stats["duration_ms"] == {"billing.refund": {"count": 1, "p50": 12.5, "p95": 12.5}}
    assert main(["--ledger", str(tmp_path / "l.db"), "ledger", "stats"]) == 0
    assert "billing.refund  p50 12.5  p95 12.5  (1 calls)" in capsys.readouterr().out


def test_the_invocations_view_lists_calls_in_the_order_they_were_decided(tmp_path: Path) -> None:
    import sqlite3

    _calls(tmp_path / "l.db")
    conn = sqlite3.connect(tmp_path / "l.db")
    try:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'invocations'").fetchone()[0]
        ids = [row[0] for row in conn.execute("SELECT call_id FROM invocations")]
    finally:
        conn.close()
    assert sql.rstrip().endswith("ORDER BY d.id")
    assert ids == ["c0", "c1", "c2"]
