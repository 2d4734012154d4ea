"""Resources, templates, subscriptions, prompts and completion through the in-process guard, the
upstream (tests/conformance/upstream.py) in memory: default deny, listing equals reading, every
refusal recorded with its method and never seen by the upstream, every result and listing scrubbed,
and a locked-out agent refused all of it (and `explain` saying so)."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from mcp_guard.cli.surfaces import agent_view, explain_surface
from mcp_guard.policy.engine import Policy
from tests.helpers import (
    REPO_ROOT,
    TIMEOUT,
    Deployment,
    assert_no_secret,
    dumped,
    inprocess_guard,
    inprocess_guards,
    ledger_events,
    memory_transports,
)

SECRET = "docs-secret-7f3a9c1e55"
SERVER = "docs"


def deployment(root: Path, **manifest: Any) -> Deployment:
    d = Deployment(root)
    block = d.stdio_upstream(
        SERVER, "tests.conformance.upstream", {"CONFORMANCE_SECRET": SECRET}, cwd=str(REPO_ROOT)
    )
    d.add(
        SERVER,
        {
            "server": SERVER,
            "upstream": block,
            "tools": {"test_simple_text": {"allow": ["role:support"]}},
            "resources": [
                {
                    "allow": ["role:support"],
                    "uris": [
                        "test://static-*",
                        "test://template/*/data",
                        "test://watched-resource",
                        "test://leaky",
                    ],
                },
                {"allow": ["finance-bot"], "uris": ["test://private/**"]},
            ],
            "prompts": {
                "test_prompt_with_arguments": {
                    "allow": ["role:support"],
                    "arguments": {"arg1": {"enum": ["low", "high"]}},
                },
                "test_prompt_with_embedded_resource": {"allow": ["role:support"]},
                "test_simple_prompt": {"allow": ["finance-bot"]},
            },
            **manifest,
        },
    )
    return d


async def subscribe(session: Any, uri: str, *, undo: bool = False) -> None:
    """resources/subscribe (or unsubscribe), which the SDK marks deprecated for 2026-era servers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await (session.unsubscribe_resource(uri) if undo else session.subscribe_resource(uri))


def seen(d: Deployment, method: str) -> list[dict[str, Any]]:
    return [e for e in d.journal(SERVER) if e.get("method") == method]


def decisions(d: Deployment) -> list[dict[str, Any]]:
    import sqlite3

    conn = sqlite3.connect(d.ledger_path)
    try:
        rows = conn.execute(
            "SELECT method, server, tool, decision, reason FROM entries WHERE kind = 'decision' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [dict(zip(("method", "server", "tool", "decision", "reason"), r, strict=True)) for r in rows]


async def test_listing_equals_reading_and_what_is_not_granted_is_neither_listed_nor_read(
    tmp_path: Path,
) -> None:
    d = deployment(tmp_path)
    async with inprocess_guards(d, ["support-bot", "finance-bot", "idle-bot"]) as sessions:
        support = sessions["support-bot"]
        listed = {str(r.uri) for r in (await support.list_resources()).resources}
        assert listed == {
            "test://static-text",
            "test://static-binary",
            "test://watched-resource",
            "test://leaky",
        }
        for uri in sorted(listed):
            assert (await support.read_resource(uri)).contents
        templates = (await support.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["test://template/{id}/data"]
        data = await support.read_resource("test://template/123/data")
        assert "123" in dumped(data)
        refused = ["test://private/payroll", "test://template/1/2/data", "test://nowhere"]
        for uri in refused:
            with pytest.raises(MCPError) as caught:
                await support.read_resource(uri)
            assert caught.value.error.code == -32002
        finance = {str(r.uri) for r in (await sessions["finance-bot"].list_resources()).resources}
        assert finance == {"test://private/payroll"}
        assert (await sessions["idle-bot"].list_resources()).resources == []
        assert (await sessions["idle-bot"].list_resource_templates()).resource_templates == []
    reads = [e["params"]["uri"] for e in seen(d, "resources/read")]
    assert not set(refused) & set(reads)
    denied = [e for e in decisions(d) if e["decision"] == "deny"]
    assert [(e["method"], e["tool"], e["reason"]) for e in denied] == [
        ("resources/read", uri, "unknown_resource") for uri in refused
    ]
    allowed = [e for e in decisions(d) if e["decision"] == "allow"]
    assert {e["method"] for e in allowed} == {"resources/read"}
    assert all(e["server"] == SERVER for e in allowed)


SMUGGLED = [
    "test://static-text/../private/payroll",
    "test://static-%2e%2e/private/payroll",
    "test://template/%2e%2e/data",
    "test://template/..%2fprivate/data",
    "test://user@static-text",
    "test://static-text\n",
    "test://static-text\u200b",
    "TEST://static-text",
    "test://Static-text",
    "test://template/./data",
]


async def test_a_smuggled_uri_is_refused_recorded_and_never_reaches_the_upstream(tmp_path: Path) -> None:
    d = deployment(tmp_path)
    async with inprocess_guard(d, "support-bot") as session:
        for uri in SMUGGLED:
            with pytest.raises(MCPError) as caught:
                await session.read_resource(uri)
            assert caught.value.error.code == -32002, uri
            with pytest.raises(MCPError):
                await subscribe(session, uri)
    assert seen(d, "resources/read") == []
    assert seen(d, "resources/subscribe") == []
    assert [e["reason"] for e in decisions(d)] == ["unknown_resource"] * len(SMUGGLED)


async def test_a_uri_two_servers_claim_is_withheld_from_both(tmp_path: Path) -> None:
    d = deployment(tmp_path)
    twin = d.stdio_upstream("twin", "tests.conformance.upstream", {}, cwd=str(REPO_ROOT))
    d.add(
        "twin",
        {
            "server": "twin",
            "upstream": twin,
            "resources": [{"allow": ["role:support"], "uris": ["test://static-text"]}],
        },
    )
    async with inprocess_guard(d, "support-bot") as session:
        listed = {str(r.uri) for r in (await session.list_resources()).resources}
        assert listed == {"test://leaky"}  # the twin lists every other URI too, unsecreted
        with pytest.raises(MCPError):
            await session.read_resource("test://static-text")
    assert seen(d, "resources/read") == []
    assert d.journal("twin") == []


async def test_resource_contents_are_scrubbed_text_and_blob_and_contents_of_unreadable_uris_dropped(
    tmp_path: Path,
) -> None:
    d = deployment(tmp_path)
    async with inprocess_guard(d, "support-bot") as session:
        result = await session.read_resource("test://leaky")
    assert_no_secret(dumped(result), SECRET)
    blob = next(c for c in result.contents if isinstance(c, types.BlobResourceContents))
    assert SECRET not in base64.b64decode(blob.blob).decode(errors="replace")
    assert {str(c.uri) for c in result.contents} == {"test://leaky"}  # test://private/payroll dropped


async def test_prompts_are_listed_prefixed_limited_and_embedded_resources_withheld(tmp_path: Path) -> None:
    d = deployment(tmp_path)
    d.manifests[SERVER]["resources"][0]["uris"].append("test://example-resource")
    async with inprocess_guards(d, ["support-bot", "finance-bot"]) as sessions:
        support = sessions["support-bot"]
        names = [p.name for p in (await support.list_prompts()).prompts]
        assert names == ["docs__test_prompt_with_arguments", "docs__test_prompt_with_embedded_resource"]
        got = await support.get_prompt("docs__test_prompt_with_arguments", {"arg1": "low", "arg2": "x"})
        assert "arg1='low'" in dumped(got)
        for name, args, reason in [
            ("docs__test_prompt_with_arguments", {"arg1": "urgent", "arg2": "x"}, "limit_exceeded"),
            ("docs__test_prompt_with_arguments", {"arg1": "low"}, "invalid_arguments"),
            (
                "docs__test_prompt_with_arguments",
                {"arg1": "low", "arg2": "x", "arg3": "y"},
                "invalid_arguments",
            ),
            (
                "docs__test_prompt_with_arguments",
                {"arg1": "low", "arg2": "x" * 2_000_000},
                "invalid_arguments",
            ),
            ("docs__test_simple_prompt", {}, None),
            ("test_prompt_with_arguments", {"arg1": "low", "arg2": "x"}, None),
        ]:
            with pytest.raises(MCPError) as caught:
                await support.get_prompt(name, args)
            assert caught.value.error.code == types.INVALID_PARAMS
            expected = f"denied ({reason}): " if reason else "Unknown prompt: "
            assert caught.value.error.message.startswith(expected), caught.value.error.message
        kept = await support.get_prompt(
            "docs__test_prompt_with_embedded_resource", {"resourceUri": "test://example-resource"}
        )
        assert kept.messages[0].content.type == "resource"
        held = await support.get_prompt(
            "docs__test_prompt_with_embedded_resource", {"resourceUri": "test://private/payroll"}
        )
        assert held.messages[0].content == types.TextContent(
            type="text", text="[withheld: test://private/payroll]"
        )
        assert [p.name for p in (await sessions["finance-bot"].list_prompts()).prompts] == [
            "docs__test_simple_prompt"
        ]
    gets = seen(d, "prompts/get")
    assert [g["params"]["name"] for g in gets] == ["test_prompt_with_arguments"] + [
        "test_prompt_with_embedded_resource"
    ] * 2
    rows = [e for e in decisions(d) if e["method"] == "prompts/get"]
    assert [r["reason"] for r in rows if r["decision"] == "deny"] == [
        "limit_exceeded",
        "invalid_arguments",
        "invalid_arguments",
        "invalid_arguments",
        "unknown_prompt",
        "unknown_prompt",
    ]


async def test_completion_only_for_granted_prompts_and_templates_with_values_the_limit_allows(
    tmp_path: Path,
) -> None:
    d = deployment(tmp_path)
    async with inprocess_guard(d, "support-bot") as session:
        prompt = types.PromptReference(type="ref/prompt", name="docs__test_prompt_with_arguments")
        done = await session.complete(prompt, {"name": "arg1", "value": ""})
        assert done.completion.values == ["low", "high"]  # "paris", "park", "1" are outside the enum
        free = await session.complete(prompt, {"name": "arg2", "value": "pa"})
        assert free.completion.values == ["paris", "park", "pa1"]
        template = types.ResourceTemplateReference(type="ref/resource", uri="test://template/{id}/data")
        assert (await session.complete(template, {"name": "id", "value": "1"})).completion.values == ["11"]
        refused = [
            (types.PromptReference(type="ref/prompt", name="docs__test_simple_prompt"), "x"),
            (types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments"), "arg1"),
            (prompt, "arg9"),
            (types.ResourceTemplateReference(type="ref/resource", uri="test://private/{name}"), "name"),
            (template, "name"),
        ]
        for ref, argument in refused:
            with pytest.raises(MCPError) as caught:
                await session.complete(ref, {"name": argument, "value": "a"})
            assert caught.value.error.code == types.INVALID_PARAMS
    assert len(seen(d, "completion/complete")) == 3
    rows = [e for e in decisions(d) if e["method"] == "completion/complete"]
    assert [r["decision"] for r in rows] == ["allow"] * 3 + ["deny"] * 5


async def test_a_subscription_needs_read_permission_and_updates_reach_its_subscriber(tmp_path: Path) -> None:
    d = deployment(tmp_path)
    updated = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.set()

    async with inprocess_guards(d, ["support-bot", "finance-bot"], message_handler=on_message) as sessions:
        await subscribe(sessions["support-bot"], "test://watched-resource")
        with anyio.fail_after(TIMEOUT):
            await updated.wait()
        with pytest.raises(MCPError) as caught:
            await subscribe(sessions["finance-bot"], "test://watched-resource")
        assert caught.value.error.code == -32002
        await subscribe(sessions["support-bot"], "test://watched-resource", undo=True)
    assert len(seen(d, "resources/subscribe")) == 1


async def test_capabilities_offer_resources_prompts_and_completion_only_when_granted(tmp_path: Path) -> None:
    d = deployment(tmp_path)
    async with inprocess_guard(d, "support-bot") as session:
        caps = session.initialize_result.capabilities if session.initialize_result else None
        assert caps is not None
        assert caps.resources is not None
        assert caps.resources.subscribe
        assert caps.prompts is not None
        assert caps.completions is not None
    bare = Deployment(tmp_path / "bare").with_billing()
    async with inprocess_guard(bare, "support-bot") as session:
        caps = session.initialize_result.capabilities if session.initialize_result else None
        assert caps is not None
        assert caps.resources is None
        assert caps.prompts is None
        assert caps.completions is None
        with pytest.raises(MCPError) as caught:
            await session.read_resource("test://static-text")
        assert caught.value.error.code == types.METHOD_NOT_FOUND


async def test_a_resource_or_prompt_whose_definition_is_not_its_pin_is_withheld(tmp_path: Path) -> None:
    from mcp_guard.guard.convert import surface_def
    from tests.conformance.upstream import RESOURCES
    from tests.helpers import ledger_events, write_private

    d = deployment(tmp_path)
    d.write()
    text = surface_def("resource", RESOURCES[0])
    lock = {
        text.name: text.digest,
        "resource:test://static-binary": "0" * 64,
        "prompt:test_prompt_with_arguments": "0" * 64,
    }
    write_private(d.manifests_dir / f"{SERVER}.lock", json.dumps(lock))
    async with inprocess_guard(d, "support-bot") as session:
        assert {str(r.uri) for r in (await session.list_resources()).resources} == {"test://static-text"}
        assert (await session.list_prompts()).prompts == []
        with pytest.raises(MCPError) as caught:
            await session.read_resource("test://static-binary")
        assert caught.value.error.code == -32002
        assert (await session.read_resource("test://static-text")).contents
        withheld = types.PromptReference(name=f"{SERVER}__test_prompt_with_arguments")
        with pytest.raises(MCPError) as caught:  # nor are its arguments completed
            await session.complete(withheld, {"name": "arg1", "value": "a"})
        assert "pin_mismatch" in caught.value.error.message
    assert [e["params"]["uri"] for e in seen(d, "resources/read")] == ["test://static-text"]
    assert seen(d, "completion/complete") == []
    denied = [(e["method"], e["reason"]) for e in decisions(d) if e["decision"] == "deny"]
    assert denied == [("resources/read", "pin_mismatch"), ("completion/complete", "pin_mismatch")]
    held = {e["tool"] for e in ledger_events(d.ledger_path, "pin") if e.get("action") == "withheld"}
    assert {"resource:test://static-binary", "prompt:test_prompt_with_arguments"} <= held


async def test_every_surface_is_scrubbed_of_the_upstream_credential_before_the_client_sees_it(
    tmp_path: Path,
) -> None:
    d = deployment(tmp_path)
    d.manifests[SERVER]["resources"][0]["uris"].append("test://leaky/*")
    d.manifests[SERVER]["prompts"]["test_leaky_prompt"] = {"allow": ["role:support"]}
    async with inprocess_guard(d, "support-bot") as session:
        resources = await session.list_resources()
        templates = await session.list_resource_templates()
        prompts = await session.list_prompts()
        got = await session.get_prompt("docs__test_leaky_prompt", {})
        ref = types.PromptReference(type="ref/prompt", name="docs__test_leaky_prompt")
        done = await session.complete(ref, {"name": "key", "value": "k"})
    leaky = next(r for r in resources.resources if str(r.uri) == "test://leaky")
    assert leaky.description  # relayed, scrubbed
    assert leaky.title
    assert [t.uri_template for t in templates.resource_templates if "leaky" in t.uri_template] == [
        "test://leaky/{id}"
    ]
    assert "docs__test_leaky_prompt" in [p.name for p in prompts.prompts]
    assert [m.content.type for m in got.messages] == ["text", "resource", "resource"]
    blob = next(
        m.content.resource
        for m in got.messages
        if isinstance(m.content, types.EmbeddedResource)
        and isinstance(m.content.resource, types.BlobResourceContents)
    )
    assert SECRET not in base64.b64decode(blob.blob).decode(errors="replace")
    assert len(done.completion.values) == 2
    for result in (resources, templates, prompts, got, done):
        assert_no_secret(dumped(result), SECRET)
    assert [e["method"] for e in d.journal(SERVER)] == ["prompts/get", "completion/complete"]


async def test_a_locked_out_agent_is_listed_nothing_and_refused_reads_prompts_completion_and_subscriptions(
    tmp_path: Path,
) -> None:
    d = deployment(tmp_path)
    d.extra_config["lockout"] = {"denials": 2, "within": "5m", "for": "15m"}
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.PromptListChangedNotification):
            changed.set()

    async with inprocess_guard(d, "support-bot", message_handler=on_message) as session:
        assert (await session.list_prompts()).prompts
        for _ in range(2):  # the second refusal locks the agent out
            with pytest.raises(MCPError):
                await session.read_resource("test://private/payroll")
        with anyio.fail_after(TIMEOUT):
            await changed.wait()
        assert (await session.list_resources()).resources == []
        assert (await session.list_resource_templates()).resource_templates == []
        assert (await session.list_prompts()).prompts == []
        prompt = types.PromptReference(type="ref/prompt", name="docs__test_prompt_with_arguments")
        refused: list[tuple[str, Any]] = [
            ("resources/read", session.read_resource("test://static-text")),
            ("prompts/get", session.get_prompt(prompt.name, {"arg1": "low", "arg2": "x"})),
            ("completion/complete", session.complete(prompt, {"name": "arg2", "value": "pa"})),
            ("resources/subscribe", subscribe(session, "test://watched-resource")),
        ]
        said = {}
        for method, request in refused:
            with pytest.raises(MCPError) as caught:
                await request
            said[method] = caught.value.error.message
            assert said[method].startswith("denied (locked_out): "), (method, caught.value)
    assert d.journal(SERVER) == []  # the upstream saw none of them
    before = d.ledger()
    config, manifests = d.load()
    agent = Policy(config, manifests).agents["support-bot"]

    def explained(name: str, arguments: dict[str, str]) -> tuple[bool, str]:
        return explain_surface(config, manifests, agent, name, arguments, memory_transports(manifests))

    for name, arguments, method in [
        ("test://static-text", {}, "resources/read"),
        (prompt.name, {"arg1": "low", "arg2": "x"}, "prompts/get"),
    ]:
        assert await anyio.to_thread.run_sync(explained, name, arguments) == (False, said[method])
    view, until = await anyio.to_thread.run_sync(
        agent_view, config, manifests, agent, memory_transports(manifests)
    )
    assert until is not None
    assert view.surfaces == {}
    assert d.ledger() == before  # explain and reads record nothing
    assert [(e["method"], e["reason"]) for e in decisions(d)][2:] == [
        ("resources/read", "locked_out"),
        ("prompts/get", "locked_out"),
        ("completion/complete", "locked_out"),
    ]
    assert len(ledger_events(d.ledger_path, "lockout")) == 1
