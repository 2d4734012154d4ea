"""`mcp-guard manifest schema`, `manifest init` and `check --live` as real subprocesses against
real upstreams: the bundled billing example and the third-party `mcp-server-time`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mcp_guard.manifest import load_manifest
from tests.e2e.test_cli import Run, assert_one_clear_line, mcp_guard
from tests.helpers import (
    BILLING_KEY,
    BILLING_TOOLS,
    REPO_ROOT,
    Deployment,
    guard_env,
    stdio_guard,
    write_private,
)

TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"


def loads_granting_nothing(run: Run, folder: Path, server: str) -> set[str]:
    """The printed manifest loads as `<server>.yaml`, and every tool is allowed to nobody."""
    assert run.returncode == 0, run
    path = folder / f"{server}.yaml"
    write_private(path, run.stdout)
    manifest = load_manifest(path)
    assert manifest.server == server
    assert all(grant.allow == () for grants in manifest.tools.values() for grant in grants)
    return set(manifest.tools)


async def test_schema_prints_the_committed_json_schema(tmp_path: Path) -> None:
    run = await mcp_guard("manifest", "schema", cwd=tmp_path)
    assert run.returncode == 0, run
    assert json.loads(run.stdout) == json.loads((REPO_ROOT / "docs" / "manifest.schema.json").read_text())


async def test_init_against_the_bundled_billing_upstream_lists_every_tool_granted_to_nobody(
    tmp_path: Path,
) -> None:
    env = guard_env(BILLING_API_KEY=BILLING_KEY)
    run = await mcp_guard(
        "manifest", "init", "--", "python", "-m", "mcp_guard.examples.billing", cwd=tmp_path, env=env
    )
    assert loads_granting_nothing(run, tmp_path, "billing") == set(BILLING_TOOLS)
    assert "#   amount: number, required" in run.stdout
    assert "# Refund part or all of an order" in run.stdout
    assert BILLING_KEY not in run.stdout


async def test_init_against_the_third_party_time_server_lists_its_tools_granted_to_nobody(
    tmp_path: Path,
) -> None:
    if not TIME_SERVER.exists():
        pytest.fail(f"{TIME_SERVER.name} is not installed next to the interpreter: install the dev extra")
    run = await mcp_guard("manifest", "init", "--", str(TIME_SERVER), "--local-timezone", "UTC", cwd=tmp_path)
    assert loads_granting_nothing(run, tmp_path, "time") == {"get_current_time", "convert_time"}
    assert "#   timezone: string, required" in run.stdout
    assert "# annotations (the upstream's own claims): destructiveHint: false, " in run.stdout
    assert "readOnlyHint: true" in run.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), ["--url", "COMMAND"]),
        (("--url", "http://127.0.0.1:9/mcp", "--", "python"), ["not both"]),
        (("--url", "http://127.0.0.1:9/mcp", "--header", "no-colon"), ["--header", "NAME:VALUE"]),
        (("--header", "A:b", "--", "python"), ["--header", "--url"]),
        (("--url", "ftp://example.com/mcp"), ["url", "http://"]),
    ],
)
async def test_init_with_bad_usage_exits_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], words: list[str]
) -> None:
    assert_one_clear_line(await mcp_guard("manifest", "init", *args, cwd=tmp_path), "manifest init", *words)


async def test_init_against_an_upstream_that_cannot_start_exits_1_with_one_line(tmp_path: Path) -> None:
    run = await mcp_guard("manifest", "init", "--", str(tmp_path / "no-such-server"), cwd=tmp_path)
    assert run.returncode == 1, run
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "could not be started: [Errno 2] No such file or directory" in lines[0], run.stderr


async def test_check_live_accepts_manifests_that_match_their_upstreams(deployment: Deployment) -> None:
    deployment.with_examples().write()
    run = await mcp_guard("--config", str(deployment.config_path), "check", "--live", cwd=deployment.root)
    assert run.returncode == 0, run
    assert run.stdout.startswith("ok: ")


async def test_check_live_names_a_missing_tool_a_missing_argument_and_a_contradicting_limit(
    deployment: Deployment,
) -> None:
    tools = {
        **BILLING_TOOLS,
        "refund_everything": {"allow": ["role:support"]},
        "lookup_order": {"allow": ["role:support"], "arguments": {"customer": {"maxLength": 5}}},
        "refund": [
            {
                "allow": ["role:support"],
                "arguments": {"currency": {"enum": [840, 978]}, "amount": {"pattern": "^[0-9]+$"}},
            }
        ],
    }
    deployment.with_billing(tools).write()
    run = await mcp_guard("--config", str(deployment.config_path), "check", "--live", cwd=deployment.root)
    assert run.returncode == 1, run
    lines = run.stdout.strip().splitlines()
    source = str((deployment.manifests_dir / "billing.yaml").resolve())
    assert all(line.startswith(f"{source}:tools.") for line in lines), lines
    assert any("tools.refund_everything:" in line and "no such tool" in line for line in lines), lines
    assert any("tools.lookup_order[0].arguments.customer:" in line for line in lines), lines
    assert any("tools.refund[0].arguments.currency.enum:" in line and "840" in line for line in lines), lines
    assert any("tools.refund[0].arguments.amount.pattern:" in line for line in lines), lines
    assert len(lines) == 5, lines
    assert "Traceback" not in run.stderr


async def test_check_live_names_an_upstream_that_cannot_be_started(deployment: Deployment) -> None:
    deployment.with_tickets()
    deployment.add(
        "broken",
        {
            "server": "broken",
            "upstream": {"command": str(deployment.root / "nope")},
            "tools": {"x": {"allow": []}},
        },
    )
    deployment.write()
    run = await mcp_guard("--config", str(deployment.config_path), "check", "--live", cwd=deployment.root)
    assert run.returncode == 1, run
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, lines
    assert "broken.yaml:upstream:" in lines[0], lines
    assert "'broken'" in lines[0], lines


async def test_check_live_and_tools_see_a_pin_that_no_longer_matches_and_accept_a_fresh_lock(
    deployment: Deployment,
) -> None:
    deployment.with_billing().write()
    lock = deployment.manifests_dir / "billing.lock"
    write_private(lock, json.dumps({"lookup_order": "0" * 64}))  # a stale pin; other tools unlisted
    run = await mcp_guard("--config", str(deployment.config_path), "check", "--live", cwd=deployment.root)
    assert run.returncode == 1, run
    lines = run.stdout.strip().splitlines()
    assert any(
        line.startswith(f"{lock.resolve()}:lookup_order:") and "differs from its pin" in line
        for line in lines
    ), lines
    assert any(":refund:" in line and "not listed in its lock" in line for line in lines), lines
    shown = await mcp_guard(
        "--config",
        str(deployment.config_path),
        "tools",
        "--agent",
        "support-bot",
        "--json",
        cwd=deployment.root,
    )
    assert shown.returncode == 0, shown
    assert "billing__lookup_order" not in {json.loads(line)["name"] for line in shown.stdout.splitlines()}
    relock = await mcp_guard("--config", str(deployment.config_path), "manifest", "lock", cwd=deployment.root)
    assert relock.returncode == 0, relock
    again = await mcp_guard("--config", str(deployment.config_path), "check", "--live", cwd=deployment.root)
    assert again.returncode == 0, again


async def test_manifest_diff_shows_what_changed_since_the_lock_and_since_first_use_field_by_field(
    deployment: Deployment,
) -> None:
    deployment.with_hostile(description_suffix="").write()
    config = str(deployment.config_path)
    locked = await mcp_guard("--config", config, "manifest", "lock", "hostile", cwd=deployment.root)
    assert locked.returncode == 0, locked
    assert (deployment.manifests_dir / "hostile.pinned").is_file()
    # The upstream changes its text (a rug pull): the review shows exactly what changed.
    deployment.with_hostile(description_suffix=" Obey.").write()
    changed = await mcp_guard("--config", config, "manifest", "diff", "hostile", cwd=deployment.root)
    assert changed.returncode == 1, changed
    lines = changed.stdout.splitlines()
    assert any(line.startswith("~ hostile.") for line in lines), lines
    assert any(line.strip().startswith("description: ") and line.endswith(' Obey."') for line in lines), lines
    # Without a lock the ledger's first-use pins are what it compares with.
    (deployment.manifests_dir / "hostile.lock").unlink()
    async with stdio_guard(deployment, "qa-bot") as session:  # pins on first use, with the definitions
        await session.list_tools()
    deployment.with_hostile(description_suffix="").write()
    first = await mcp_guard("--config", config, "manifest", "diff", cwd=deployment.root)
    assert first.returncode == 1, first
    said = 'Obey." -> "Return the given text unchanged."'
    assert any(said in line for line in first.stdout.splitlines()), first.stdout
    unknown = await mcp_guard("--config", config, "manifest", "diff", "nowhere", cwd=deployment.root)
    assert unknown.returncode == 2, unknown
