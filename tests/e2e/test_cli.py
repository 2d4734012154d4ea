"""The `mcp-guard` command: `check` on good and bad configs, `serve` with an unknown agent, `tools`
and `explain`. Bad config is exit 2 with one `file:path: reason` line. The commands run in this
process (`tests.helpers.cli`) unless the process itself is the point; their upstreams are real
processes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import (
    HOSTILE_SECRET,
    REPO_ROOT,
    SECRETS,
    TIMEOUT,
    Deployment,
    Run,
    cli,
    guard_env,
    write_private,
)
from tests.upstreams.hostile import secret_forms as hostile_forms


async def mcp_guard(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Run:
    """The command, run in this process (see `cli`)."""
    return await cli(*args, cwd=cwd, env=env)


async def mcp_guard_process(*args: str, cwd: Path) -> Run:
    """The real `python -m mcp_guard` process."""
    with anyio.fail_after(TIMEOUT):
        done = await anyio.run_process(
            [sys.executable, "-m", "mcp_guard", *args], cwd=cwd, env=guard_env(), check=False
        )
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def assert_one_clear_line(run: Run, *words: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr holding every word, and no traceback."""
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


async def test_check_accepts_the_bundled_example_deployment() -> None:
    run = await mcp_guard_process("check", cwd=REPO_ROOT)
    assert run.returncode == 0, run
    assert run.stdout.startswith("ok: ")
    assert "Traceback" not in run.stderr


def manifest_of(deployment: Deployment, server: str) -> dict[str, Any]:
    return deployment.manifests[server]


SECRET_VALUE = "s3cret-value-that-must-never-print"


def unknown_key(d: Deployment) -> tuple[str, list[str]]:
    d.extra_config = {"agents": {"support-bot": {"roles": ["support"], "colour": "red"}}}
    d.write()
    return "guard.yaml", ["agents.support-bot.colour", "unknown key"]


def unknown_manifest_key(d: Deployment) -> tuple[str, list[str]]:
    manifest_of(d, "billing")["tools"]["refund"][0]["arguments_typo"] = {}
    d.write()
    return "billing.yaml", ["tools.refund[0].arguments_typo", "unknown key"]


def duplicate_key(d: Deployment) -> tuple[str, list[str]]:
    d.write()
    path = d.manifests_dir / "billing.yaml"
    write_private(path, path.read_text() + "server: billing\n")
    return "billing.yaml", ["duplicate key 'server'"]


def duplicate_key_in_config(d: Deployment) -> tuple[str, list[str]]:
    d.write()
    write_private(d.config_path, d.config_path.read_text() + "manifests: elsewhere\n")
    return "guard.yaml", ["duplicate key 'manifests'"]


def missing_variable(d: Deployment) -> tuple[str, list[str]]:
    env = manifest_of(d, "billing")["upstream"]["env"]
    env["OTHER_TOKEN"] = "${MCP_GUARD_TEST_PRESENT}"
    env["BILLING_API_KEY"] = "${MCP_GUARD_TEST_MISSING}"
    d.write()
    return "billing.yaml", ["MCP_GUARD_TEST_MISSING", "upstream.env.BILLING_API_KEY"]


def bad_duration(d: Deployment) -> tuple[str, list[str]]:
    manifest_of(d, "billing")["upstream"]["timeout"] = "30 seconds"
    d.write()
    return "billing.yaml", ["upstream.timeout", "'30 seconds' is not a duration"]


def invalid_json_schema(d: Deployment) -> tuple[str, list[str]]:
    manifest_of(d, "billing")["tools"]["refund"][0]["arguments"]["amount"] = {"maximum": "a lot"}
    d.write()
    return "billing.yaml", ["tools.refund[0].arguments.amount", "invalid JSON Schema"]


def remote_ref(d: Deployment) -> tuple[str, list[str]]:
    limit = {"$ref": "http://169.254.169.254/latest/meta-data/schema.json"}
    manifest_of(d, "billing")["tools"]["refund"][0]["arguments"]["amount"] = limit
    d.write()
    return "billing.yaml", ["tools.refund[0].arguments.amount", "$ref", "169.254.169.254"]


def duplicate_advertised_name(d: Deployment) -> tuple[str, list[str]]:
    manifest_of(d, "billing")["prefix"] = "shop__"
    manifest_of(d, "tickets")["prefix"] = "shop__"
    manifest_of(d, "tickets")["tools"]["refund"] = {"allow": ["role:support"]}
    d.write()
    return "tickets.yaml", ["tools.refund", "'shop__refund'", "billing"]


def world_writable_manifest(d: Deployment) -> tuple[str, list[str]]:
    d.write()
    (d.manifests_dir / "tickets.yaml").chmod(0o666)
    return "tickets.yaml", ["world-writable"]


def world_writable_config(d: Deployment) -> tuple[str, list[str]]:
    d.write()
    d.config_path.chmod(0o646)
    return "guard.yaml", ["world-writable"]


def bad_agent_name(d: Deployment) -> tuple[str, list[str]]:
    d.agents = {"Support Bot": ["support"]}
    d.write()
    return "guard.yaml", ["agents.Support Bot"]


def two_transports(d: Deployment) -> tuple[str, list[str]]:
    manifest_of(d, "tickets")["upstream"]["url"] = "https://tickets.internal/mcp"
    d.write()
    return "tickets.yaml", ["upstream", "exactly one of command"]


BAD_CONFIGS: dict[str, Callable[[Deployment], tuple[str, list[str]]]] = {
    "unknown key in guard.yaml": unknown_key,
    "unknown key in a manifest": unknown_manifest_key,
    "duplicate key in a manifest": duplicate_key,
    "duplicate key in guard.yaml": duplicate_key_in_config,
    "missing variable": missing_variable,
    "bad duration": bad_duration,
    "invalid JSON Schema": invalid_json_schema,
    "remote $ref": remote_ref,
    "duplicate advertised name": duplicate_advertised_name,
    "world-writable manifest": world_writable_manifest,
    "world-writable guard.yaml": world_writable_config,
    "bad agent name": bad_agent_name,
    "two transports": two_transports,
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
async def test_check_refuses_a_bad_config_with_one_line_naming_file_and_path(
    deployment: Deployment, case: str
) -> None:
    deployment.with_examples()
    file, words = BAD_CONFIGS[case](deployment)  # writes the deployment, then breaks it
    env = guard_env(MCP_GUARD_TEST_PRESENT=SECRET_VALUE)
    run = await mcp_guard("--config", str(deployment.config_path), "check", cwd=deployment.root, env=env)
    line = assert_one_clear_line(run, *words)
    source = deployment.config_path if file == "guard.yaml" else deployment.manifests_dir / file
    assert f"{source.resolve()}:" in line or f"{source}:" in line, line
    assert run.stdout == ""
    for secret in (SECRET_VALUE, *SECRETS):
        assert secret not in run.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--agent", "nobody"],
        ["tools", "--agent", "nobody"],
        ["explain", "--agent", "nobody", "x", "{}"],
    ],
)
async def test_a_command_for_an_agent_that_is_not_defined_exits_2_naming_it(
    deployment: Deployment, command: list[str]
) -> None:
    deployment.with_examples().write()
    run = await mcp_guard("--config", str(deployment.config_path), *command, cwd=deployment.root)
    assert_one_clear_line(run, "'nobody'")
    assert run.stdout == ""
    assert deployment.journals() == []
    assert not deployment.ledger_path.exists()


async def test_check_without_a_config_file_exits_2_saying_where_it_looked(tmp_path: Path) -> None:
    run = await mcp_guard("check", cwd=tmp_path)
    assert_one_clear_line(run, "guard.yaml", "no such config file")


async def test_tools_lists_an_agents_tools_with_their_limits_as_text_and_json(deployment: Deployment) -> None:
    deployment.with_billing().write()
    config = str(deployment.config_path)
    text, as_json = await _both(
        mcp_guard("--config", config, "tools", "--agent", "support-bot", cwd=deployment.root),
        mcp_guard("--config", config, "tools", "--agent", "support-bot", "--json", cwd=deployment.root),
    )
    assert text.returncode == 0, text
    assert as_json.returncode == 0, as_json
    assert "Traceback" not in text.stderr + as_json.stderr
    assert "billing__refund" in text.stdout
    assert "billing__diagnostics" not in text.stdout
    assert "set_payout_destination" not in text.stdout
    assert '"maximum": 100' in text.stdout
    rows = [json.loads(line) for line in as_json.stdout.splitlines() if line.strip()]
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"billing__lookup_order", "billing__refund"}
    refund = by_name["billing__refund"]["inputSchema"]
    assert refund["properties"]["amount"]["maximum"] == 100
    assert refund["properties"]["currency"]["enum"] == ["USD", "EUR"]
    assert "note" not in refund["properties"]
    assert refund["additionalProperties"] is False
    assert deployment.journals() == []


async def _both(first: Any, second: Any) -> tuple[Run, Run]:
    results: dict[int, Run] = {}

    async def run(i: int, coro: Any) -> None:
        results[i] = await coro

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return results[0], results[1]


async def test_tools_shows_descriptions_as_the_agent_sees_them_with_injected_secrets_redacted(
    deployment: Deployment,
) -> None:
    deployment.with_hostile(
        tools={"echo": {"allow": ["qa-bot"]}}, description_suffix=f" (key {HOSTILE_SECRET}) \x1b[31mred\u200b"
    ).write()
    config = str(deployment.config_path)
    text, as_json = await _both(
        mcp_guard("--config", config, "tools", "--agent", "qa-bot", cwd=deployment.root),
        mcp_guard("--config", config, "tools", "--agent", "qa-bot", "--json", cwd=deployment.root),
    )
    assert (text.returncode, as_json.returncode) == (0, 0), (text, as_json)
    (row,) = [json.loads(line) for line in as_json.stdout.splitlines() if line.strip()]
    assert row["description"].startswith("Return the given text unchanged.")
    assert "\x1b" not in text.stdout + as_json.stdout
    assert "\u200b" not in text.stdout + as_json.stdout
    for form in hostile_forms(HOSTILE_SECRET).values():
        assert form not in text.stdout, text.stdout
        assert form not in row["description"], row


def files_under(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


async def explain(deployment: Deployment, tool: str, arguments: str) -> Run:
    config = str(deployment.config_path)
    return await mcp_guard(
        "--config", config, "explain", "--agent", "support-bot", tool, arguments, cwd=deployment.root
    )


async def test_explain_prints_the_decision_and_forwards_and_writes_nothing(deployment: Deployment) -> None:
    deployment.with_billing().write()
    before = files_under(deployment.root)
    denied, allowed = await _both(
        explain(deployment, "billing__refund", '{"order_id":"ORD-1001","amount":400,"currency":"USD"}'),
        explain(deployment, "billing__refund", '{"order_id":"ORD-1001","amount":40,"currency":"USD"}'),
    )
    assert denied.returncode == 1, denied
    assert denied.stdout.strip() == "denied (limit_exceeded): amount must be <= 100"
    assert allowed.returncode == 0, allowed
    assert allowed.stdout.startswith("allow")
    assert "Traceback" not in denied.stderr + allowed.stderr
    assert not deployment.ledger_path.exists()
    assert deployment.journals() == []
    assert files_under(deployment.root) == before


async def test_explain_refuses_arguments_that_are_not_strict_json(deployment: Deployment) -> None:
    deployment.with_billing().write()
    run = await explain(
        deployment, "billing__refund", '{"order_id":"ORD-1001","amount":5,"amount":5000,"currency":"USD"}'
    )
    assert_one_clear_line(run, "duplicate key")
    assert not deployment.ledger_path.exists()


UNREACHABLE_LINE = "denied (upstream_unavailable): the upstream server cannot be reached; try again later"


async def test_explain_and_tools_say_upstream_unavailable_for_a_granted_tool_of_an_upstream_that_is_down(
    deployment: Deployment,
) -> None:
    deployment.with_billing(command=str(deployment.root / "no-such-server")).with_tickets().write()
    config = str(deployment.config_path)
    granted, not_granted, unknown, tools = await _both_of(
        explain(deployment, "billing__refund", '{"order_id":"ORD-1001","amount":40,"currency":"USD"}'),
        explain(deployment, "billing__diagnostics", "{}"),  # granted to finance-bot only
        explain(deployment, "billing__no_such_tool", "{}"),
        mcp_guard("--config", config, "tools", "--agent", "support-bot", cwd=deployment.root),
    )
    assert (granted.returncode, granted.stdout.strip()) == (1, UNREACHABLE_LINE)
    assert not_granted.stdout.strip() == "denied (unknown_tool): Unknown tool: billing__diagnostics"
    assert unknown.stdout.strip() == "denied (unknown_tool): Unknown tool: billing__no_such_tool"
    assert tools.returncode == 0, tools
    assert "billing__" not in tools.stdout
    assert "tickets__get_ticket" in tools.stdout
    not_shown = [line for line in tools.stderr.splitlines() if "is not shown" in line]
    assert not_shown == [
        f"mcp-guard: billing__{tool} is not shown: {UNREACHABLE_LINE}" for tool in ("lookup_order", "refund")
    ]
    assert "Traceback" not in granted.stderr + tools.stderr
    assert not deployment.ledger_path.exists()
    assert deployment.journals() == []


async def _both_of(*coros: Any) -> list[Run]:
    results: list[Any] = [None] * len(coros)

    async def run(i: int, coro: Any) -> None:
        results[i] = await coro

    async with anyio.create_task_group() as tg:
        for i, coro in enumerate(coros):
            tg.start_soon(run, i, coro)
    return results


async def test_check_and_serve_refuse_a_manifest_that_grants_a_tool_guard_yaml_forbids(
    tmp_path: Path,
) -> None:
    deployment = Deployment(tmp_path).with_examples()
    deployment.manifests["billing"]["tools"]["set_payout_destination"] = {"allow": ["finance-bot"]}
    deployment.extra_config["forbid"] = ["*.set_payout_*"]
    deployment.write()
    config = str(deployment.config_path)
    for args in (("check",), ("serve", "--agent", "finance-bot")):
        run = await mcp_guard("--config", config, *args, cwd=tmp_path)
        assert_one_clear_line(run, "billing.yaml", "tools.set_payout_destination", "'*.set_payout_*'")
    assert not deployment.ledger_path.exists()  # refused before anything was opened or forwarded
    assert deployment.journals() == []
