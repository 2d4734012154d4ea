"""A grant that says what it means: `required` and `set` arguments, the advertised title and
description overridden, and `sensitive` arguments recorded only as a digest. Pure tables over the
models, the policy and the guard's record; against real servers in tests/e2e/test_third_party.py."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from mcp_guard.config import AgentConfig, GuardConfig
from mcp_guard.guard.calls import record_of
from mcp_guard.ledger.entries import sensitive
from mcp_guard.manifest import Grant, Manifest
from mcp_guard.policy.engine import Agent, Policy
from mcp_guard.policy.offers import ToolDef
from mcp_guard.policy.reasons import Reason
from mcp_guard.secrets import Scrubber

SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "dryRun": {"type": "boolean", "default": False},
        "note": {"type": "string"},
    },
    "required": ["path"],
}
EDIT = ToolDef(
    "edit_file", SCHEMA, hashlib.sha256(json.dumps(SCHEMA).encode()).hexdigest(), "Edit", "Edits a file."
)
BOT = Agent("bot", frozenset({"dev"}))


def policy(*grants: dict[str, Any], tool: ToolDef = EDIT) -> Policy:
    manifest = Manifest.model_validate(
        {
            "server": "fs",
            "upstream": {"command": "x"},
            "tools": {tool.name: [{"allow": ["role:dev"], **g} for g in grants]},
        }
    )
    return Policy(GuardConfig(agents={"bot": AgentConfig(roles=("dev",))}), [manifest])


def decide(p: Policy, arguments: dict[str, Any]) -> Any:
    return p.decide("fs__edit_file", arguments, p.offers(BOT, {"fs": (EDIT,)}), agent="bot")


def test_a_set_argument_is_sent_by_the_guard_never_by_the_agent_and_is_not_advertised() -> None:
    p = policy({"set": {"dryRun": True}})
    offer = p.offers(BOT, {"fs": (EDIT,)})["fs__edit_file"]
    assert "dryRun" not in offer.input_schema["properties"]
    assert offer.input_schema["required"] == ["path"]
    allowed = decide(p, {"path": "a.txt"})
    assert allowed.allowed
    assert allowed.arguments == {"path": "a.txt", "dryRun": True}  # what is recorded and forwarded
    for sent in (True, False):
        refused = decide(p, {"path": "a.txt", "dryRun": sent})
        assert (refused.allowed, refused.reason) == (False, Reason.LIMIT_EXCEEDED)
        assert refused.detail == "dryRun is set by the guard for this tool; leave it out"


def test_a_required_argument_must_be_sent_and_is_advertised_as_required() -> None:
    p = policy({"required": ["dryRun"], "arguments": {"dryRun": {"const": True}}})
    offer = p.offers(BOT, {"fs": (EDIT,)})["fs__edit_file"]
    assert offer.input_schema["required"] == ["dryRun", "path"]
    missing = decide(p, {"path": "a.txt"})  # the upstream's default (false) would have applied
    assert (missing.allowed, missing.reason, missing.detail) == (
        False,
        Reason.INVALID_ARGUMENTS,
        "dryRun is required",
    )
    assert decide(p, {"path": "a.txt", "dryRun": True}).allowed
    assert decide(p, {"path": "a.txt", "dryRun": False}).reason == Reason.LIMIT_EXCEEDED


@pytest.mark.parametrize(
    "grant",
    [
        {"set": {"dryRun": "yes"}},  # the upstream says boolean: every call would fail
        {"set": {"force": True}},  # no such argument upstream
        {"required": ["force"]},
    ],
)
def test_a_grant_whose_set_or_required_the_upstream_cannot_take_is_not_offered(grant: dict[str, Any]) -> None:
    assert policy(grant).offers(BOT, {"fs": (EDIT,)}) == {}


@pytest.mark.parametrize(
    ("grant", "says"),
    [
        ({"required": ["dryRun"], "set": {"dryRun": True}}, "also in set"),
        ({"required": ["note"], "arguments": {"note": False}}, "also a false argument"),
        ({"set": {"dryRun": True}, "arguments": {"dryRun": {"const": True}}}, "also has a limit"),
        ({"required": ["bad name"]}, "required"),
        ({"set": {"bad name": 1}}, "set"),
        ({"title": "x" * 201}, "title"),
        ({"sensitive": ["a/b"]}, "sensitive"),
    ],
)
def test_contradictory_or_malformed_grant_keys_are_load_errors(grant: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Grant.model_validate({"allow": ["*"], **grant})


def test_title_and_description_can_be_overridden_and_the_upstream_text_is_not_shown() -> None:
    p = policy({"title": "Edit (dry run)", "description": "Shows what an edit would change.\u200b"})
    offer = p.offers(BOT, {"fs": (EDIT,)})["fs__edit_file"]
    assert (offer.title, offer.description) == ("Edit (dry run)", "Shows what an edit would change.")
    plain = policy({}).offers(BOT, {"fs": (EDIT,)})["fs__edit_file"]
    assert (plain.title, plain.description) == ("Edit", "Edits a file.")


def test_a_sensitive_argument_is_recorded_as_a_digest_that_compares_equal_for_equal_values() -> None:
    p = policy({"sensitive": ["note"]})
    assert p.offers(BOT, {"fs": (EDIT,)})["fs__edit_file"].sensitive == {"note"}
    decision = decide(p, {"path": "a.txt", "note": "card 4111 1111"})
    record = record_of("c1", BOT, None, "fs__edit_file", decision, p, Scrubber(frozenset()))
    assert record.arguments == {"path": "a.txt", "note": sensitive("card 4111 1111")}
    assert str(record.arguments["note"]).startswith("[sensitive sha256:")  # type: ignore[index]
    assert sensitive("card 4111 1111") == sensitive("card 4111 1111") != sensitive("card 4111 1112")
    refused = decide(p, {"path": 7, "note": "card 4111 1111"})
    assert not refused.allowed
    denied = record_of("c2", BOT, None, "fs__edit_file", refused, p, Scrubber(frozenset()))
    assert denied.arguments["note"] == sensitive("card 4111 1111")  # type: ignore[index]


@pytest.mark.parametrize(
    ("grant", "escapes"),
    [
        ({"arguments": {"dryRun": {"const": True}}}, True),  # absent: the upstream's false applies
        ({"arguments": {"dryRun": {"enum": [True]}}}, True),
        ({"arguments": {"dryRun": {"const": False}}}, False),  # the default is inside the limit
        ({"arguments": {"dryRun": {"const": True}}, "required": ["dryRun"]}, False),
        ({"set": {"dryRun": True}}, False),
        ({"arguments": {"note": {"const": "x"}}}, False),  # no upstream default
    ],
)
def test_a_const_or_enum_limit_that_the_upstream_default_escapes_is_a_problem(
    grant: dict[str, Any], escapes: bool
) -> None:
    p = policy(grant)
    problems = p.problems({"fs": (EDIT,)})
    expected = "arguments.dryRun: the upstream's default False applies when dryRun is left out"
    assert any(expected in problem for problem in problems) is escapes, problems


# -- grants by selector ---------------------------------------------------------------------------


def _def(name: str, read_only: bool | None) -> ToolDef:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}}
    annotations = None if read_only is None else {"read_only_hint": read_only}  # as the SDK dumps them
    return ToolDef(name, schema, hashlib.sha256(name.encode()).hexdigest(), annotations=annotations)


SERVER_TOOLS = (
    _def("read_file", True),
    _def("list_dir", True),
    _def("write_file", False),
    _def("read_secret", None),  # no annotations: no read_only selector picks it
    _def("delete_file", True),  # claims read-only, but the manifest names it
)


def selector_policy(**manifest: Any) -> Policy:
    body = {"server": "fs", "upstream": {"command": "x"}, **manifest}
    return Policy(GuardConfig(agents={"bot": AgentConfig(roles=("dev",))}), [Manifest.model_validate(body)])


def test_a_selector_grants_the_tools_it_picks_and_a_named_tool_keeps_its_own_grants() -> None:
    p = selector_policy(
        tools={"delete_file": {"allow": []}},
        select=[
            {"read_only": True, "allow": ["role:dev"], "arguments": {"path": {"pattern": "^docs/"}}},
            {"tools": "write_*", "allow": ["nobody-else"]},
        ],
    )
    offers = p.offers(BOT, {"fs": SERVER_TOOLS})
    assert sorted(offers) == ["fs__list_dir", "fs__read_file"]  # default deny for the rest
    assert offers["fs__read_file"].input_schema["properties"]["path"]["pattern"] == "^docs/"
    assert (
        p.decide("fs__read_file", {"path": "etc/passwd"}, offers, agent="bot").reason == Reason.LIMIT_EXCEEDED
    )
    assert p.decide("fs__write_file", {"path": "docs/a"}, offers, agent="bot").reason == Reason.UNKNOWN_TOOL


@pytest.mark.parametrize(
    ("selector", "picked"),
    [
        ({"tools": "read_*"}, ["read_file", "read_secret"]),
        ({"tools": "read_*", "read_only": True}, ["read_file"]),
        ({"read_only": False}, ["write_file"]),
        ({}, ["delete_file", "list_dir", "read_file", "read_secret", "write_file"]),
        ({"tools": "READ_*"}, []),  # case-sensitive, as names are matched
    ],
)
def test_a_selector_picks_by_name_glob_and_read_only_hint(
    selector: dict[str, Any], picked: list[str]
) -> None:
    manifest = Manifest.model_validate(
        {"server": "fs", "upstream": {"command": "x"}, "select": [{"allow": ["*"], **selector}]}
    )
    assert sorted(t.name for t in SERVER_TOOLS if manifest.grants_for(t.name, t.annotations)) == picked


def test_a_tools_key_no_upstream_can_have_is_a_warning(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import yaml

    from mcp_guard.manifest import load_manifest
    from tests.helpers import write_private

    path = tmp_path / "fs.yaml"
    write_private(
        path, yaml.safe_dump({"server": "fs", "upstream": {"command": "x"}, "tools": {"*": {"allow": ["*"]}}})
    )
    with caplog.at_level(logging.WARNING, logger="mcp_guard"):
        load_manifest(path)
    assert any("no upstream can have a tool named '*'" in r.getMessage() for r in caplog.records)
