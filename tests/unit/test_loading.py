"""Config and manifest loading: every problem is one `file:path: reason`, nothing is guessed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcp_guard.config import load_config
from mcp_guard.errors import ConfigError
from mcp_guard.manifest import load_manifest, load_manifests

GOOD = """
server: billing
upstream:
  command: python
  args: [-m, mcp_guard.examples.billing]
  env: {BILLING_API_KEY: "${MCP_GUARD_TEST_KEY}"}
  timeout: 30s
tools:
  lookup_order:
    allow: [role:support]
  refund:
    - allow: [role:support]
      arguments:
        amount: {maximum: 100}
        note: false
    - allow: [finance-bot]
"""


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_GUARD_TEST_KEY", "sk_live_0123456789abcdef")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_a_good_manifest_loads_with_one_or_many_grants_and_its_secrets(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, "billing.yaml", GOOD))
    assert len(m.tools["lookup_order"]) == 1
    assert len(m.tools["refund"]) == 2
    assert m.tools["refund"][0].arguments["note"] is False
    assert m.upstream.timeout == 30.0
    assert m.name_prefix == "billing__"
    assert "sk_live_0123456789abcdef" in m.injected


BAD = [
    (
        "unknown key",
        GOOD.replace("timeout: 30s", "timeout: 30s\n  retries: 3"),
        "upstream.retries: unknown key",
    ),
    (
        "duplicate key",
        GOOD.replace("  lookup_order:", "  refund: {allow: []}\n  lookup_order:"),
        "duplicate key",
    ),
    ("bad duration", GOOD.replace("30s", "30 seconds"), "upstream.timeout: '30 seconds' is not a duration"),
    (
        "missing variable",
        GOOD.replace("MCP_GUARD_TEST_KEY", "MCP_GUARD_NOT_SET"),
        "'MCP_GUARD_NOT_SET' is not set",
    ),
    ("both transports", GOOD.replace("  timeout: 30s", "  url: http://x/mcp"), "exactly one of command"),
    ("no transport", GOOD.replace("  command: python\n", ""), "exactly one of command"),
    ("bad server name", GOOD.replace("server: billing", "server: Billing"), "server:"),
    ("bad principal", GOOD.replace("[role:support]", "[Role:Support]"), "tools.lookup_order[0].allow[0]"),
    ("missing allow", GOOD.replace("    allow: [role:support]\n", "    {}\n", 1), "allow"),
    ("invalid schema", GOOD.replace("{maximum: 100}", "{maximum: lots}"), "invalid JSON Schema"),
    (
        "remote ref",
        GOOD.replace("{maximum: 100}", '{$ref: "http://169.254.169.254/x"}'),
        "only local references",
    ),
    ("yes is a string", GOOD.replace("note: false", "note: no"), "JSON Schema mapping or false"),
    (
        "negative budget",
        GOOD.replace("note: false", "note: false\n      budgets: [{max: -1, per: 1d}]"),
        "budgets[0].max",
    ),
    (
        "bad budget scope",
        GOOD.replace("note: false", "note: false\n      budgets: [{max: 1, per: 1d, by: [customer]}]"),
        "budgets[0].by[0]",
    ),
    (
        "bad approval wait",
        GOOD.replace("note: false", "note: false\n      approval: {wait: soon}"),
        "approval.wait",
    ),
    (
        "empty grant list",
        GOOD.replace("  lookup_order:\n    allow: [role:support]", "  lookup_order: []"),
        "at least 1",
    ),
    ("not a mapping", "- just\n- a list\n", "mapping at the top level"),
    ("not yaml", "server: [unclosed\n", "line"),
]


@pytest.mark.parametrize(("text", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_manifest_is_one_error_naming_file_and_path(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, "billing.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:")
    assert says in message
    assert "sk_live_0123456789abcdef" not in message
    assert "\n" not in message


def test_two_manifests_advertising_the_same_name_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "billing.yaml", GOOD.replace("command: python", "command: python\n# prefix unset"))
    write(tmp_path, "other.yaml", GOOD.replace("server: billing", "server: other\nprefix: billing__"))
    with pytest.raises(ConfigError, match="advertised name 'billing__lookup_order'"):
        load_manifests(tmp_path)


def test_a_world_writable_manifest_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "billing.yaml", GOOD)
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError, match="world-writable"):
        load_manifests(tmp_path)


def test_config_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "guard.yaml", "ledger: {path: data/l.db}\nagents: {a: {roles: [x]}}\n")
    config = load_config(path)
    assert config.ledger.path == tmp_path / "data" / "l.db"
    assert config.manifests == tmp_path / "tool_manifests"


@pytest.mark.parametrize(
    ("limits", "message", "result"),
    [
        ("", 4 * 1024 * 1024, 4 * 1024 * 1024),
        ("limits: {max_message_bytes: 65536}\n", 65536, 65536),
        ("limits: {max_result_bytes: 1024}\n", 4 * 1024 * 1024, 1024),
        ("limits: {max_message_bytes: 65536, max_result_bytes: 9999999}\n", 65536, 9999999),
    ],
    ids=["defaults", "follows max_message_bytes", "set alone", "set beside max_message_bytes"],
)
def test_the_result_cap_defaults_to_the_message_cap(
    tmp_path: Path, limits: str, message: int, result: int
) -> None:
    config = load_config(write(tmp_path, "guard.yaml", limits + "agents: {a: {roles: [x]}}\n"))
    assert (config.limits.max_message_bytes, config.limits.max_result_bytes) == (message, result)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("agents: {Bad: {}}\n", "agents.Bad"),
        ("limits: {max_result_bytes: 0}\n", "limits.max_result_bytes"),
        ("limits: {max_result_bytes: 1 MiB}\n", "limits.max_result_bytes"),
        ("ledger: {durability: on}\n", "ledger.durability"),
        ("agents: {a: {}}\nagents: {b: {}}\n", "duplicate key 'agents'"),
        ("tokens: {signing_key: short}\n", "at least 32 bytes"),
        ("agents: {a: {keys: [abc]}}\n", "agents.a.keys[0]"),
        ("source: /etc\n", "source: unknown key"),
    ],
)
def test_a_bad_config_is_one_error_naming_file_and_path(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, "guard.yaml", text)
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(path)
    assert says in str(caught.value)
    assert str(caught.value).startswith(f"{path}:")
