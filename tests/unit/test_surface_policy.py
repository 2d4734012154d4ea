"""The pure decisions for resources, prompts and completion, as tables: who may read which URI
from which server, who may get which prompt with which arguments, and what may be completed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_guard.errors import ConfigError
from mcp_guard.manifest import Manifest, load_manifest
from mcp_guard.policy.engine import Agent
from mcp_guard.policy.prompts import (
    CompletionRef,
    decide_completion,
    decide_prompt,
    prompt_offers,
    withheld_prompt,
)
from mcp_guard.policy.resources import SurfaceDef, decide_read, readable, visible_templates

SUPPORT = Agent("support-bot", frozenset({"support"}))
FINANCE = Agent("finance-bot", frozenset({"finance"}))
STRANGER = Agent("stranger", frozenset({"support"}))  # not defined in guard.yaml
KNOWN = {"support-bot", "finance-bot"}


def _def(kind: Any, ident: str, **definition: Any) -> SurfaceDef:
    return SurfaceDef(kind, ident, definition, f"{kind}:{ident}")


def _manifest(server: str, resources: list[Any], prompts: dict[str, Any] | None = None) -> Manifest:
    return Manifest.model_validate(
        {"server": server, "upstream": {"command": "x"}, "resources": resources, "prompts": prompts or {}}
    )


MANIFESTS = {
    "kb": _manifest(
        "kb",
        [
            {"allow": ["role:support"], "uris": ["file:///srv/kb/**", "tickets://queue/support/*"]},
            {"allow": ["finance-bot"], "uris": ["file:///srv/payroll/*"]},
        ],
        {
            "triage": [{"allow": ["role:support"], "arguments": {"severity": {"enum": ["low", "high"]}}}],
            "payroll": {"allow": ["finance-bot"]},
        },
    ),
    "other": _manifest("other", [{"allow": ["role:support"], "uris": ["shared://doc"]}]),
}
SURFACES = {
    "kb": (
        _def("resource", "file:///srv/kb/a.md"),
        _def("resource", "file:///srv/payroll/2026.csv"),
        _def("resource", "shared://doc"),  # also claimed by `other`'s pattern: withheld
        _def("template", "tickets://queue/support/{id}"),
        _def("template", "file:///srv/payroll/{month}"),
        _def("prompt", "triage", arguments=[{"name": "severity", "required": True}, {"name": "note"}]),
        _def("prompt", "payroll"),
        _def("prompt", "ungranted"),
    ),
    "other": (),
}

READS = [
    (SUPPORT, "file:///srv/kb/a.md", "kb", None),
    (SUPPORT, "file:///srv/kb/deep/er/b.md", "kb", None),  # not listed: routed by the pattern
    (SUPPORT, "tickets://queue/support/42", "kb", None),
    (SUPPORT, "tickets://queue/support/42/notes", None, "unknown_resource"),
    (SUPPORT, "file:///srv/payroll/2026.csv", None, "unknown_resource"),
    (SUPPORT, "file:///srv/kb/../payroll/2026.csv", None, "unknown_resource"),
    (SUPPORT, "file:///srv/kb/%2e%2e/payroll/2026.csv", None, "unknown_resource"),
    (SUPPORT, "file://admin@/srv/kb/a.md", None, "unknown_resource"),
    (SUPPORT, "shared://doc", None, "unknown_resource"),  # two servers claim it
    (SUPPORT, "FILE:///srv/kb/a.md", None, "unknown_resource"),
    (FINANCE, "file:///srv/payroll/2026.csv", "kb", None),
    (FINANCE, "file:///srv/kb/a.md", None, "unknown_resource"),
    (STRANGER, "file:///srv/kb/a.md", None, "unknown_resource"),
]


@pytest.mark.parametrize(("agent", "uri", "server", "reason"), READS)
def test_a_read_is_decided_by_the_agents_patterns_and_routed_to_the_one_server_that_claims_it(
    agent: Agent, uri: str, server: str | None, reason: str | None
) -> None:
    decision = decide_read(agent, uri, MANIFESTS, SURFACES, KNOWN)
    assert (decision.allowed, decision.server if decision.allowed else None, decision.reason) == (
        reason is None,
        server,
        reason,
    )
    assert decision.target.method == "resources/read"


def test_a_withheld_uri_is_refused_pin_mismatch() -> None:
    decision = decide_read(
        SUPPORT, "file:///srv/kb/a.md", MANIFESTS, SURFACES, KNOWN, {"file:///srv/kb/a.md"}
    )
    assert decision.reason == "pin_mismatch"


@pytest.mark.parametrize(
    ("agent", "name", "reason"),
    [
        (SUPPORT, "kb__triage", "pin_mismatch"),
        (FINANCE, "kb__triage", None),  # not granted: it does not exist for this agent
        (STRANGER, "kb__triage", None),
        (SUPPORT, "triage", None),  # the advertised name only
        (FINANCE, "kb__payroll", None),  # granted, but not withheld
    ],
)
def test_a_withheld_prompt_is_refused_pin_mismatch_only_to_its_grantees(
    agent: Agent, name: str, reason: str | None
) -> None:
    decision = withheld_prompt(agent, name, {}, MANIFESTS, {("kb", "triage")}, KNOWN)
    assert (decision.reason if decision else None) == reason


def test_listing_is_the_read_decision_applied_to_every_listed_resource() -> None:
    assert [d.id for _, d in readable(SUPPORT, MANIFESTS, SURFACES, KNOWN)] == ["file:///srv/kb/a.md"]
    assert [d.id for _, d in readable(FINANCE, MANIFESTS, SURFACES, KNOWN)] == [
        "file:///srv/payroll/2026.csv"
    ]
    assert readable(STRANGER, MANIFESTS, SURFACES, KNOWN) == []
    assert [d.id for _, d in visible_templates(SUPPORT, MANIFESTS, SURFACES, KNOWN)] == [
        "tickets://queue/support/{id}"
    ]


PROMPTS = [
    (SUPPORT, "kb__triage", {"severity": "low"}, None),
    (SUPPORT, "kb__triage", {"severity": "low", "note": "n"}, None),
    (SUPPORT, "kb__triage", {"severity": "urgent"}, "limit_exceeded"),
    (SUPPORT, "kb__triage", {}, "invalid_arguments"),
    (SUPPORT, "kb__triage", {"severity": "low", "Severity": "high"}, "invalid_arguments"),
    (SUPPORT, "kb__triage", {"severity": 3}, "invalid_arguments"),
    (SUPPORT, "kb__triage", {"severity": "low", "note": "x" * 2_000_000}, "invalid_arguments"),
    (SUPPORT, "kb__Triage", {"severity": "low"}, "unknown_prompt"),
    (SUPPORT, "triage", {"severity": "low"}, "unknown_prompt"),
    (SUPPORT, "kb__payroll", {}, "unknown_prompt"),
    (SUPPORT, "kb__ungranted", {}, "unknown_prompt"),
    (FINANCE, "kb__payroll", {}, None),
    (STRANGER, "kb__triage", {"severity": "low"}, "unknown_prompt"),
]


@pytest.mark.parametrize(("agent", "name", "arguments", "reason"), PROMPTS)
def test_a_prompt_is_got_only_when_granted_and_its_arguments_pass_as_a_tool_calls_would(
    agent: Agent, name: str, arguments: dict[str, Any], reason: str | None
) -> None:
    offers = prompt_offers(agent, MANIFESTS, SURFACES, KNOWN)
    decision = decide_prompt(name, arguments, offers, 1 << 20)
    assert decision.reason == reason
    assert decision.target.method == "prompts/get"
    if decision.allowed:
        assert decision.target.name == name.removeprefix("kb__")


COMPLETIONS = [
    (CompletionRef("ref/prompt", "kb__triage", "severity", "l"), None),
    (CompletionRef("ref/prompt", "kb__triage", "note", "", {"severity": "low"}), None),
    (CompletionRef("ref/prompt", "kb__triage", "secret", ""), "invalid_arguments"),
    (CompletionRef("ref/prompt", "kb__triage", "note", "", {"other": "x"}), "invalid_arguments"),
    (CompletionRef("ref/prompt", "kb__payroll", "x", ""), "unknown_prompt"),
    (CompletionRef("ref/resource", "tickets://queue/support/{id}", "id", "4"), None),
    (CompletionRef("ref/resource", "tickets://queue/support/{id}", "ID", "4"), "invalid_arguments"),
    (CompletionRef("ref/resource", "file:///srv/payroll/{month}", "month", "0"), "unknown_resource"),
    (CompletionRef("ref/resource", "kb__triage", "severity", ""), "unknown_resource"),
    (CompletionRef("ref/prompt", "tickets://queue/support/{id}", "id", ""), "unknown_prompt"),
]


@pytest.mark.parametrize(("ref", "reason"), COMPLETIONS)
def test_completion_is_offered_only_for_granted_prompts_and_shown_templates(
    ref: CompletionRef, reason: str | None
) -> None:
    offers = prompt_offers(SUPPORT, MANIFESTS, SURFACES, KNOWN)
    templates = visible_templates(SUPPORT, MANIFESTS, SURFACES, KNOWN)
    decision = decide_completion(ref, offers, templates, 1 << 20)
    assert decision.reason == reason
    assert decision.target.method == "completion/complete"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("resources:\n  - allow: [x]\n    uris: ['file:///srv/../etc/**']\n", "resources[0].uris"),
        ("resources:\n  - allow: [x]\n    uris: ['/srv/kb/**']\n", "resources[0].uris"),
        ("resources:\n  - allow: [x]\n    uri: ['file:///srv/**']\n", "did you mean 'uris'"),
        ("resources:\n  - allow: [x]\n    uris: []\n", "resources[0].uris"),
        ("prompts:\n  triage: {alow: [x]}\n", "did you mean 'allow'"),
        ("prompts:\n  triage: {allow: [x], arguments: {severity: {maximum: 'x'}}}\n", "prompts.triage"),
        ("prompts:\n  'bad name': {allow: [x]}\n", "prompts"),
        ("resource:\n  - allow: [x]\n", "did you mean 'resources'"),
    ],
)
def test_a_bad_resources_or_prompts_key_is_a_load_error_that_says_where(
    tmp_path: Path, body: str, where: str
) -> None:
    path = tmp_path / "kb.yaml"
    path.write_text("server: kb\nupstream: {command: x}\n" + body, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    assert where in str(caught.value)
