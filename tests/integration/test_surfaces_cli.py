"""The command line on resources and prompts, run in-process against the conformance upstream as a
real process: `manifest init` lists them granted to nobody, `check --live` checks them, `reads
--agent` shows what an agent may read and get, `explain` takes a resource URI or a prompt."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from mcp_guard.cli.main import main
from mcp_guard.cli.surfaces import explain_surface, is_surface, live_surfaces, reads_view, render_reads
from mcp_guard.policy.engine import Policy
from tests.helpers import REPO_ROOT, memory_transports
from tests.integration.test_resources_prompts import SERVER, deployment

UPSTREAM = str(REPO_ROOT / "tests" / "conformance" / "upstream.py")


def test_manifest_init_lists_resources_templates_and_prompts_granted_to_nobody(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["manifest", "init", "--", sys.executable, UPSTREAM]) == 0
    written = yaml.safe_load(capsys.readouterr().out)
    assert written["resources"] == [
        {
            "allow": [],
            "uris": [
                "test://static-text",
                "test://static-binary",
                "test://watched-resource",
                "test://private/payroll",
                "test://template/*/data",
                "test://private/*",
            ],
        }
    ]
    assert written["prompts"]["test_prompt_with_arguments"] == {"allow": []}
    assert all(grant == {"allow": []} for grant in written["prompts"].values())


def test_check_live_checks_prompts_and_resource_patterns_against_the_live_upstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment(tmp_path)
    d.manifests[SERVER]["upstream"] = {"command": sys.executable, "args": [UPSTREAM]}
    d.manifests[SERVER]["prompts"]["test_no_such_prompt"] = {"allow": ["role:support"]}
    d.manifests[SERVER]["prompts"]["test_simple_prompt"] = {
        "allow": ["finance-bot"],
        "arguments": {"x": False},
    }
    config = str(d.write())
    assert main(["--config", config, "check", "--live"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split(":", 1)[1] for line in out) == [
        "prompts.test_no_such_prompt: upstream 'docs' has no such prompt",
        "prompts.test_simple_prompt[0].arguments.x: upstream prompt has no argument 'x'; this grant matches nothing",
        "resources[0].uris: 'test://leaky' matches none of the 6 resources and templates the upstream lists",
    ]
    del d.manifests[SERVER]["prompts"]["test_no_such_prompt"]
    d.write()
    assert main(["--config", config, "manifest", "lock"]) == 0
    lock = json.loads((d.manifests_dir / f"{SERVER}.lock").read_text(encoding="utf-8"))
    assert {
        "resource:test://static-text",
        "template:test://template/{id}/data",
        "prompt:test_simple_prompt",
    } <= set(lock)
    capsys.readouterr()
    assert main(["--config", config, "manifest", "diff"]) == 0  # resources and prompts pinned as they are


def test_reads_and_explain_decide_as_the_guard_does(tmp_path: Path) -> None:
    d = deployment(tmp_path)
    config, manifests = d.load()
    transports = memory_transports(manifests)
    policy = Policy(config, manifests)
    support = policy.agents["support-bot"]
    view = reads_view(policy, support, live_surfaces(config, manifests, transports))
    assert {r["uri"] for r in view["resources"]} == {
        "test://static-text",
        "test://static-binary",
        "test://watched-resource",
        "test://leaky",
    }
    assert [p["name"] for p in view["prompts"]] == [
        "docs__test_prompt_with_arguments",
        "docs__test_prompt_with_embedded_resource",
    ]
    assert "template test://template/{id}/data (docs)" in render_reads(view)
    for name, arguments, expected in [
        ("test://template/7/data", {}, "allow: resources/read docs.test://template/7/data"),
        ("test://private/payroll", {}, "denied (unknown_resource): "),
        ("test://static-text/../private/payroll", {}, "denied (unknown_resource): "),
        ("docs__test_prompt_with_arguments", {"arg1": "urgent", "arg2": "x"}, "denied (limit_exceeded): "),
        ("docs__test_prompt_with_arguments", {"arg1": "low", "arg2": "x"}, "allow: prompts/get docs."),
    ]:
        assert is_surface(manifests, name)
        allowed, line = explain_surface(config, manifests, support, name, arguments, transports)
        assert line.startswith(expected), line
        assert allowed is expected.startswith("allow")
    assert not is_surface(manifests, "docs__test_simple_text")
    assert d.journal(SERVER) == []  # explain forwards nothing
