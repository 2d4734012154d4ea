"""Commands that only read the ledger need only its section: a variable another section names (a
signing key the serving guard needs) need not be set, and `--ledger PATH` needs no guard.yaml."""

from __future__ import annotations

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
    assert main(["--config", str(tmp_path / "guard.yaml"), "check"]) == 2  # the guard itself needs it
    assert "SURELY_UNSET_SIGNING_KEY" in capsys.readouterr().err


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
