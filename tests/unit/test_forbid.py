"""guard.yaml's `forbid`, the operator's hard line: globs over `server.tool` that no grant can
contradict. Pure tables over the models and the policy; loading through real files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_guard.config import AgentConfig, GuardConfig
from mcp_guard.errors import ConfigError
from mcp_guard.manifest import Manifest, load_deployment
from mcp_guard.policy.engine import Policy
from mcp_guard.policy.offers import ToolDef
from tests.helpers import write_private

MATCHES = [
    ("billing.set_payout_destination", "billing", "set_payout_destination", True),
    ("billing.set_payout_destination", "billing", "set_payout_destinations", False),
    ("billing.set_payout_destination", "billing2", "set_payout_destination", False),
    ("*.delete_*", "tickets", "delete_ticket", True),
    ("*.delete_*", "tickets", "undelete_ticket", False),
    ("*.delete_*", "tickets", "Delete_ticket", False),  # case-sensitive, as names are matched
    ("billing.*", "billing", "refund", True),
    ("billing.*", "billing-eu", "refund", False),
    ("billing-??.refund", "billing-eu", "refund", True),
    ("[bt]*.close_*", "tickets", "close_ticket", True),
]


@pytest.mark.parametrize(("glob", "server", "tool", "forbidden"), MATCHES)
def test_a_forbid_glob_matches_server_dot_tool_exactly(
    glob: str, server: str, tool: str, forbidden: bool
) -> None:
    config = GuardConfig(forbid=(glob,))
    assert (config.forbids(server, tool) == glob) is forbidden


@pytest.mark.parametrize("glob", ["refund", "billing.", ".refund", "billing. refund", "", "billing/refund"])
def test_a_forbid_entry_that_is_not_server_dot_tool_is_a_config_error(glob: str) -> None:
    with pytest.raises(ValueError, match="forbid"):
        GuardConfig.model_validate({"forbid": [glob]})


def _tool(name: str) -> ToolDef:
    schema = {"type": "object", "properties": {"account": {"type": "string"}}}
    return ToolDef(name, schema, hashlib.sha256(json.dumps([name, schema]).encode()).hexdigest())


def test_a_forbidden_tool_is_never_offered_and_its_call_is_an_unknown_tool_even_if_a_grant_allows_it() -> (
    None
):
    # A policy built without the load check (defence in depth: the engine refuses it too).
    manifest = Manifest.model_validate(
        {
            "server": "billing",
            "upstream": {"command": "x"},
            "tools": {"set_payout_destination": {"allow": ["*"]}, "lookup_order": {"allow": ["*"]}},
        }
    )
    config = GuardConfig(agents={"bot": AgentConfig()}, forbid=("billing.set_payout_*",))
    policy = Policy(config, [manifest])
    catalog = {"billing": (_tool("set_payout_destination"), _tool("lookup_order"))}
    offers = policy.offers(policy.agents["bot"], catalog)
    assert set(offers) == {"billing__lookup_order"}
    decision = policy.decide("billing__set_payout_destination", {"account": "X"}, offers)
    assert (decision.allowed, decision.reason) == (False, "unknown_tool")


def _write(root: Path, forbid: list[str], tools: dict[str, Any]) -> Path:
    (root / "tool_manifests").mkdir()
    write_private(root / "guard.yaml", yaml.safe_dump({"agents": {"bot": {}}, "forbid": forbid}))
    manifest = {"server": "billing", "upstream": {"command": "x"}, "tools": tools}
    write_private(root / "tool_manifests" / "billing.yaml", yaml.safe_dump(manifest))
    return root / "guard.yaml"


def test_a_manifest_that_grants_a_forbidden_tool_is_a_load_error_naming_the_file_and_tool(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path, ["*.set_payout_*"], {"set_payout_destination": [{"allow": []}, {"allow": ["bot"]}]}
    )
    with pytest.raises(ConfigError) as caught:
        load_deployment(path)
    text = str(caught.value)
    assert "billing.yaml" in text
    assert "tools.set_payout_destination" in text
    assert "'*.set_payout_*'" in text


def test_a_forbidden_tool_listed_but_granted_to_nobody_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, ["billing.set_payout_destination"], {"set_payout_destination": {"allow": []}})
    config, manifests = load_deployment(path)
    assert config.forbid == ("billing.set_payout_destination",)
    assert [m.server for m in manifests] == ["billing"]
