"""`ledger.url` and `--ledger URL` as input: only PostgreSQL URLs are a ledger's URL, and a
password in one is never printed, whatever goes wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import cli

SECRET = "hunter2-ledger-password"


@pytest.mark.parametrize(
    "url", ["http://db.internal/mcp_guard", "mysql://guard@db/mcp", "sqlite:///x.db", "postgresql"]
)
async def test_a_ledger_url_that_is_not_postgresql_is_a_one_line_config_error(
    tmp_path: Path, url: str
) -> None:
    config = tmp_path / "guard.yaml"
    config.write_text(f"agents: {{}}\nledger:\n  url: {url!r}\n", encoding="utf-8")
    run = await cli("--config", str(config), "ledger", "verify", cwd=tmp_path)
    assert run.returncode == 2, run
    assert run.stderr.strip().splitlines() == [f"mcp-guard: {config}:ledger.url: must be a postgresql:// URL"]
    assert sorted(p.name for p in tmp_path.glob("*")) == ["guard.yaml"]  # noqa: ASYNC240 - nothing opened or created


@pytest.mark.parametrize("command", [("ledger", "verify"), ("ledger", "tail"), ("approvals", "list")])
async def test_a_password_in_a_ledger_url_is_never_printed(tmp_path: Path, command: tuple[str, ...]) -> None:
    url = f"postgresql://guard:{SECRET}@127.0.0.1:1/mcp_guard"  # nothing listens on port 1
    run = await cli("--ledger", url, *command, cwd=tmp_path)
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr
    assert "postgresql://guard:***@127.0.0.1:1/mcp_guard" in run.stderr
    assert SECRET not in run.stdout + run.stderr
