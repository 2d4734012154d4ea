"""CLI habits a new user meets: `--config` after the command too, a misspelt key named with what
was meant, counts in the right number, a key for an agent guard.yaml does not define, a near-miss
tool name in `explain`. Through `main`, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mcp_guard.cli.main import main
from tests.helpers import Deployment, write_private


def _deployment(root: Path, guard: dict[str, object], tools: dict[str, object]) -> Path:
    (root / "tool_manifests").mkdir()
    write_private(root / "guard.yaml", yaml.safe_dump({"manifests": "tool_manifests", **guard}))
    write_private(
        root / "tool_manifests" / "fs.yaml",
        yaml.safe_dump({"server": "fs", "upstream": {"command": "x"}, "tools": tools}),
    )
    return root / "guard.yaml"


def test_config_is_accepted_after_the_command_and_counts_are_in_the_right_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _deployment(tmp_path, {"agents": {"bot": {}}}, {"read": {"allow": ["bot"]}})
    assert main(["check", "--config", str(config)]) == 0
    assert capsys.readouterr().out.endswith(": 1 agent, 1 manifest, 1 tool\n")
    assert (
        main(["--config", "/nowhere/guard.yaml", "check", "--config", str(config)]) == 0
    )  # the later one wins
    capsys.readouterr()


@pytest.mark.parametrize(
    ("guard", "tools", "says"),
    [
        ({"agnets": {}}, {"read": {"allow": []}}, "guard.yaml:agnets: unknown key; did you mean 'agents'?"),
        (
            {"ledger": {"duribility": "full"}},
            {"read": {"allow": []}},
            "ledger.duribility: unknown key; did you mean 'durability'?",
        ),
        ({}, {"read": {"alow": ["bot"]}}, "fs.yaml:tools.read[0].alow: unknown key; did you mean 'allow'?"),
        ({}, {"read": {"allow": [], "argumnets": {}}}, "unknown key; did you mean 'arguments'?"),
        ({}, {"read": {"allow": [], "zzz": 1}}, "fs.yaml:tools.read[0].zzz: unknown key\n"),
    ],
)
def test_a_misspelt_key_is_an_unknown_key_with_what_was_meant(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    guard: dict[str, object],
    tools: dict[str, object],
    says: str,
) -> None:
    config = _deployment(tmp_path, guard, tools)
    assert main(["--config", str(config), "check"]) == 2
    assert says in capsys.readouterr().err


def test_agent_key_for_an_agent_guard_yaml_does_not_define_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _deployment(tmp_path, {"agents": {"bot": {}}}, {"read": {"allow": ["bot"]}})
    assert main(["--config", str(config), "agent", "key", "bot"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["--config", str(config), "agent", "key", "bto"]) == 0
    captured = capsys.readouterr()
    assert "'bto' is not an agent in guard.yaml yet" in captured.err
    assert captured.out.startswith("key: ")


def test_explain_of_a_near_miss_name_suggests_the_tool_the_agent_is_shown(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.with_billing()
    config = deployment.write()
    assert main(["--config", str(config), "explain", "--agent", "support-bot", "billing__refnud", "{}"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "denied (unknown_tool): Unknown tool: billing__refnud\n"
    assert "did you mean billing__refund? (support-bot is shown that tool)" in captured.err
    assert (
        main(["--config", str(config), "explain", "--agent", "support-bot", "billing__diagnostics", "{}"])
        == 1
    )
    assert "did you mean" not in capsys.readouterr().err  # not granted: nothing to suggest


async def test_tail_follow_waits_for_a_ledger_that_does_not_exist_yet(tmp_path: Path) -> None:
    import json
    import sys

    import anyio

    from mcp_guard.ledger.entries import CallRecord
    from mcp_guard.ledger.sqlite.engine import Ledger
    from tests.helpers import TIMEOUT

    path = tmp_path / "later.db"
    command = [sys.executable, "-m", "mcp_guard", "--ledger", str(path), "ledger", "tail", "-f", "--json"]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        with anyio.fail_after(TIMEOUT):
            said = b""
            while b"waiting for a guard to write one" not in said:
                said += await process.stderr.receive()
            ledger = Ledger.open(path)
            ledger.record_decision(
                CallRecord("c1", "bot", None, "fs", "read", {}, "deny", "limit_exceeded", "no", "0" * 64)
            )
            ledger.close()
            out = b""
            while b"\n" not in out:
                out += await process.stdout.receive()
        process.terminate()
    assert json.loads(out.splitlines()[0])["call_id"] == "c1"
