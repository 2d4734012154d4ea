"""How an operator hears of an approval request: guard.yaml's `approvals.notify.command` run with
the request as JSON on stdin when a guard files it, and `approvals list -f` printing each new
request as it is filed, whichever process filed it. Real commands, a real ledger file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

from tests.helpers import BILLING_TOOLS, TIMEOUT, Deployment, assert_denied, guard_env, inprocess_guard

HELD = {"allow": ["role:support"], "arguments": {"amount": {"maximum": 100}}, "approval": {"wait": "1s"}}


async def refund(session: object, amount: int) -> object:
    with anyio.fail_after(TIMEOUT):
        return await session.call_tool(  # type: ignore[attr-defined]
            "billing__refund", {"order_id": "ORD-1004", "amount": amount, "currency": "USD"}
        )


async def test_a_filed_request_runs_the_notify_command_with_the_request_on_stdin_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    out = tmp_path / "notified.jsonl"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"
    deployment.with_billing({**BILLING_TOOLS, "refund": [HELD]})
    deployment.extra_config["approvals"] = {"notify": {"command": [sys.executable, "-c", script]}}
    async with inprocess_guard(deployment, "support-bot") as session:
        assert_denied(await refund(session, 60), "approval_pending")
        assert_denied(await refund(session, 60), "approval_pending")  # the same request: no second notice
        with anyio.fail_after(TIMEOUT):
            while not out.exists():  # noqa: ASYNC110 - another process writes it
                await anyio.sleep(0.05)
    notices = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(notices) == 1
    notice = notices[0]
    assert (notice["agent"], notice["server"], notice["tool"]) == ("support-bot", "billing", "refund")
    assert notice["arguments"] == {"order_id": "ORD-1004", "amount": 60, "currency": "USD"}
    assert len(notice["id"]) == 16
    assert notice["expires_at"] > notice["requested_at"]


async def test_a_failing_notify_command_is_logged_and_the_call_still_waits_for_an_operator(
    deployment: Deployment, capsys: object
) -> None:
    deployment.with_billing({**BILLING_TOOLS, "refund": [HELD]})
    fails = [sys.executable, "-c", "import sys; sys.stderr.write('pager down'); sys.exit(4)"]
    deployment.extra_config["approvals"] = {"notify": {"command": fails}}
    async with inprocess_guard(deployment, "support-bot") as session:
        assert_denied(await refund(session, 70), "approval_pending")
        await anyio.sleep(1.0)  # the command runs in the background
    assert "approvals.notify exited with status 4: pager down" in capsys.readouterr().err  # type: ignore[attr-defined]
    assert deployment.journal("billing") == []


async def test_approvals_list_follow_prints_each_new_request_as_it_is_filed(deployment: Deployment) -> None:
    deployment.with_billing({**BILLING_TOOLS, "refund": [HELD]})
    config = deployment.write()
    command = [
        sys.executable,
        "-m",
        "mcp_guard",
        "--config",
        str(config),
        "approvals",
        "list",
        "-f",
        "--json",
    ]
    async with (
        inprocess_guard(deployment, "support-bot") as session,
        await anyio.open_process(command, env=guard_env(), cwd=deployment.root) as process,
    ):
        assert process.stdout is not None
        await anyio.sleep(1.0)  # following
        assert_denied(await refund(session, 80), "approval_pending")
        with anyio.fail_after(TIMEOUT):
            out = b""
            while b"\n" not in out:
                out += await process.stdout.receive()
        process.terminate()
    row = json.loads(out.splitlines()[0])
    assert (row["agent"], row["tool"], row["arguments"]["amount"]) == ("support-bot", "refund", 80)
