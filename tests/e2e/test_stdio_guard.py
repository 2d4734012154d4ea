"""The real `mcp-guard serve` command over real stdio, in front of the bundled example upstreams:
what a client sees, what the upstreams received (their journals) and what the ledger file holds.
The raw-wire tests write JSON-RPC lines themselves, as a hostile client would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from tests.helpers import (
    HOSTILE_SECRET,
    TIMEOUT,
    Deployment,
    RawGuard,
    assert_denied,
    cli,
    guard_command,
    guard_env,
    ledger_events,
    raw_guard,
    stdio_guard,
    text_of,
)

REFUND = {"order_id": "ORD-1001", "amount": 40, "currency": "USD"}


async def test_support_bot_over_stdio_sees_only_its_tools_and_every_call_is_decided_and_recorded(
    deployment: Deployment,
) -> None:
    deployment.with_examples()
    async with stdio_guard(deployment, "support-bot") as session:
        with anyio.fail_after(TIMEOUT):
            listed = {tool.name: tool for tool in (await session.list_tools()).tools}
            allowed = await session.call_tool("billing__refund", REFUND)
            over_cap = await session.call_tool("billing__refund", {**REFUND, "amount": 400})
            wrong_type = await session.call_tool("billing__refund", {**REFUND, "amount": "40"})
            with pytest.raises(MCPError) as hidden:
                await session.call_tool(
                    "billing__set_payout_destination", {"account": "GB33BUKB20201555555555"}
                )
            with pytest.raises(MCPError) as finance_only:
                await session.call_tool("billing__diagnostics", {})
            no_such_order = await session.call_tool("billing__lookup_order", {"order_id": "ORD-9999"})

    assert set(listed) == {
        "billing__lookup_order",
        "billing__refund",
        "tickets__search_tickets",
        "tickets__get_ticket",
        "tickets__add_comment",
        "tickets__close_ticket",
    }
    assert listed["billing__refund"].input_schema["properties"]["amount"]["maximum"] == 100

    assert allowed.is_error is False
    assert isinstance(allowed.structured_content, dict)
    assert allowed.structured_content["amount"] == 40.0
    assert text_of(allowed).startswith("Refunded 40.00 USD on ORD-1001")
    assert_denied(over_cap, "limit_exceeded")
    assert text_of(over_cap) == "denied (limit_exceeded): amount must be <= 100"
    assert_denied(wrong_type, "invalid_arguments")
    assert hidden.value.error.code == types.INVALID_PARAMS
    assert hidden.value.error.message == "Unknown tool: billing__set_payout_destination"
    assert finance_only.value.error.code == types.INVALID_PARAMS
    assert no_such_order.is_error is True  # the upstream's own isError result: forwarded, outcome "error"

    assert deployment.journal("billing") == [
        {"server": "billing", "tool": "refund", "arguments": REFUND, "meta": None},
        {"server": "billing", "tool": "lookup_order", "arguments": {"order_id": "ORD-9999"}, "meta": None},
    ]
    assert deployment.journal("tickets") == []
    rows = deployment.ledger()
    assert [(r["server"], r["tool"], r["decision"], r["reason"], r["outcome"]) for r in rows] == [
        ("billing", "refund", "allow", None, "ok"),
        ("billing", "refund", "deny", "limit_exceeded", None),
        ("billing", "refund", "deny", "invalid_arguments", None),
        (None, "billing__set_payout_destination", "deny", "unknown_tool", None),
        (None, "billing__diagnostics", "deny", "unknown_tool", None),
        ("billing", "lookup_order", "allow", None, "error"),
    ]
    assert rows[0]["arguments"] == REFUND
    assert rows[1]["arguments"] == {**REFUND, "amount": 400}
    assert rows[0]["duration_ms"] is not None
    assert {r["agent"] for r in rows} == {"support-bot"}
    assert len({r["session"] for r in rows}) == 1
    assert "Traceback" not in deployment.stderr()
    verified = await cli("--config", str(deployment.config_path), "ledger", "verify")
    assert verified.returncode == 0, verified


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def call_line(msg_id: int, name: str, arguments_json: str) -> bytes:
    return (
        f'{{"jsonrpc":"2.0","id":{msg_id},"method":"tools/call",'
        f'"params":{{"name":"{name}","arguments":{arguments_json}}}}}'
    ).encode()


def refund_line(msg_id: int, amount_json: str) -> bytes:
    return call_line(
        msg_id, "billing__refund", f'{{"order_id":"ORD-1001","amount":{amount_json},"currency":"USD"}}'
    )


MAX_MESSAGE_BYTES = 32 * 1024

# Lines the strict parser must refuse with -32700 before anything is dispatched.
UNPARSABLE: list[tuple[str, bytes]] = [
    ("duplicate keys", call_line(1, "billing__refund", '{"order_id":"ORD-1001","amount":5,"amount":5000,"currency":"USD"}')),
    ("duplicate tool names", b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"billing__lookup_order","name":"billing__refund","arguments":{}}}'),
    ("NaN", refund_line(3, "NaN")),
    ("Infinity", refund_line(4, "Infinity")),
    ("-Infinity", refund_line(5, "-Infinity")),
    ("1e999", refund_line(6, "1e999")),
    ("more precision than a double", refund_line(7, "100.0000000000000001")),
    ("a 5000-digit integer", refund_line(8, "9" * 5000)),
    ("invalid UTF-8", b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"billing__lookup_order","arguments":{"order_id":"ORD-\xff\xfe"}}}'),
    ("a lone surrogate", call_line(10, "billing__lookup_order", '{"order_id":"ORD-\\ud800"}')),
    ("a byte order mark", b"\xef\xbb\xbf" + call_line(11, "billing__lookup_order", '{"order_id":"ORD-1001"}')),
    ("nesting deeper than 64", refund_line(12, nested(70))),
    ("100,000 nested brackets", refund_line(13, nested(100_000))),
    ("a line over max_message_bytes", refund_line(14, "5") + b" " * MAX_MESSAGE_BYTES),
    ("a line over several read chunks", refund_line(15, '"' + "9" * 300_000 + '"')),
    ("not JSON at all", b"refund everything now"),
    ("truncated JSON", b'{"jsonrpc":"2.0","id":16,"method":"tools/call","params":{"name":"billing__refund"'),
]  # fmt: skip


LOOKUP_PARAMS = '"params":{"name":"billing__lookup_order","arguments":{"order_id":"ORD-1001"}}'
INVALID_REQUESTS: list[tuple[str, bytes]] = [
    ("a batch", b'[{"jsonrpc":"2.0","id":1,"method":"tools/call",' + LOOKUP_PARAMS.encode() + b"}]"),
    ("no jsonrpc version", b'{"id":2,"method":"tools/call",' + LOOKUP_PARAMS.encode() + b"}"),
    ("a bare string", b'"tools/call"'),
    ("arguments that are a list", b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"billing__lookup_order","arguments":["ORD-1001"]}}'),
    ("a progress token that is a float", b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"billing__lookup_order","arguments":{"order_id":"ORD-1001"},"_meta":{"progressToken":1.5}}}'),
]  # fmt: skip
INVALID_IDS: list[tuple[str, bytes]] = [
    (f"an id of {label}", b'{"jsonrpc":"2.0","id":' + value + b',"method":"tools/call",' + LOOKUP_PARAMS.encode() + b"}")
    for label, value in [("true", b"true"), ("null", b"null"), ("9.5", b"9.5"), ("an object", b'{"n":1}')]
]  # fmt: skip


async def answer_to(guard: RawGuard, line: bytes) -> list[dict[str, Any]]:
    """What a line gets back: its own response when it carries a usable id, else what arrives
    before the answer to a ping sent after it (the transport answers unusable lines at once)."""
    try:
        msg_id = json.loads(line).get("id")
    except (ValueError, AttributeError):
        msg_id = None
    if type(msg_id) is not int:
        return await guard.request_line(line)
    await guard.send_line(line)
    return [await guard.response(msg_id)]


async def test_malformed_lines_and_invalid_messages_get_errors_and_the_guard_keeps_serving(
    deployment: Deployment,
) -> None:
    deployment.with_billing()
    deployment.limits = {"max_message_bytes": MAX_MESSAGE_BYTES}
    answers: dict[str, list[dict[str, Any]]] = {}
    invalid: dict[str, list[dict[str, Any]]] = {}
    async with raw_guard(deployment, "support-bot") as guard:
        for label, line in UNPARSABLE:
            answers[label] = await guard.request_line(line)
        for label, line in INVALID_REQUESTS:
            invalid[label] = await answer_to(guard, line)
        resources = await guard.request("resources/list")
        prompts = await guard.request("prompts/list")
        templates = await guard.request("resources/templates/list")
        completion = await guard.request(
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "x"}, "argument": {"name": "a", "value": "b"}},
        )
        listed = await guard.request("tools/list")
        lookup = await guard.request(
            "tools/call", {"name": "billing__lookup_order", "arguments": {"order_id": "ORD-1001"}}
        )
    for label, got in answers.items():
        assert len(got) == 1, (label, got)
        assert got[0]["error"]["code"] == types.PARSE_ERROR, (label, got)
        assert got[0]["id"] is None, (label, got)
    for label, got in invalid.items():
        assert len(got) == 1, (label, got)
        assert got[0]["error"]["code"] in (types.INVALID_REQUEST, types.PARSE_ERROR, types.INVALID_PARAMS), (
            label,
            got,
        )
    for refused in (resources, prompts, templates, completion):
        assert refused["error"]["code"] == types.METHOD_NOT_FOUND, refused
    assert len(listed["result"]["tools"]) == 2
    assert lookup["result"]["isError"] is False
    assert deployment.journals() == [
        {"server": "billing", "tool": "lookup_order", "arguments": {"order_id": "ORD-1001"}, "meta": None}
    ]
    assert [(r["tool"], r["decision"]) for r in deployment.ledger()] == [("lookup_order", "allow")]


async def test_a_request_whose_id_is_not_a_string_or_integer_gets_an_invalid_request_error(
    deployment: Deployment,
) -> None:
    # MCP requests carry a string or integer id; JSON-RPC answers an unusable id with -32600 and id null.
    deployment.with_billing()
    async with raw_guard(deployment, "support-bot") as guard:
        for _, line in INVALID_IDS:
            await guard.send_line(line)
        # A full round trip through the upstream: any answer to the lines above has been written by then.
        lookup = await guard.request("tools/call", json.loads("{" + LOOKUP_PARAMS + "}")["params"])
    assert lookup["result"]["isError"] is False
    assert len(deployment.journals()) == 1
    errors = [(m.get("id"), m.get("error", {}).get("code")) for m in guard.other]
    assert errors == [(None, types.INVALID_REQUEST)] * len(INVALID_IDS), guard.other


# Arguments that parse but must be refused by the policy: an error result, a ledger row, no forward.
DENIED_CALLS: list[tuple[str, bytes, str]] = [
    ("a number as a string", refund_line(101, '"40"'), "invalid_arguments"),
    ("a number with spaces", refund_line(102, '" 50 "'), "invalid_arguments"),
    ("a boolean", refund_line(103, "true"), "invalid_arguments"),
    ("null", refund_line(104, "null"), "invalid_arguments"),
    ("just over the cap", refund_line(105, "100.0000000001"), "limit_exceeded"),
    ("over the cap in exponent form", refund_line(106, "1e3"), "limit_exceeded"),
    ("negative", refund_line(107, "-5"), "invalid_arguments"),
    ("negative zero", refund_line(108, "-0"), "invalid_arguments"),
    ("beyond 2**53", refund_line(109, "9007199254740993"), "invalid_arguments"),
    ("nested lists", refund_line(110, nested(40)), "invalid_arguments"),
    ("an object", refund_line(111, '{"value":5,"currency":"USD"}'), "invalid_arguments"),
    ("a huge string", refund_line(112, '"' + "9" * 20_000 + '"'), "invalid_arguments"),
    ("an argument the tool does not have", call_line(113, "billing__refund", '{"order_id":"ORD-1001","amount":5,"currency":"USD","payout_account":"GB33BUKB20201555555555"}'), "invalid_arguments"),
    ("a differently cased argument", call_line(114, "billing__refund", '{"order_id":"ORD-1001","Amount":5,"currency":"USD"}'), "invalid_arguments"),
    ("an argument the grant forbids", call_line(115, "billing__refund", '{"order_id":"ORD-1001","amount":5,"currency":"USD","note":"x"}'), "limit_exceeded"),
    ("a currency outside the grant", call_line(116, "billing__refund", '{"order_id":"ORD-1001","amount":5,"currency":"GBP"}'), "limit_exceeded"),
    ("a look-alike currency", call_line(117, "billing__refund", '{"order_id":"ORD-1001","amount":5,"currency":"US\\u0044\\u200b"}'), "invalid_arguments"),
    ("an order id with a newline", call_line(118, "billing__refund", '{"order_id":"ORD-1001\\n","amount":5,"currency":"USD"}'), "invalid_arguments"),
    ("an order id with a command", call_line(119, "billing__lookup_order", '{"order_id":"ORD-1001; rm -rf /"}'), "invalid_arguments"),
]  # fmt: skip

LOOK_ALIKE_NAMES = [
    "billing__Refund",
    "billing__refund\u200b",
    "billing__refund ",
    " billing__refund",
    "tickets__refund",
    "billing__rеfund",  # Cyrillic e
    "ｂilling__refund",  # fullwidth b
    "billing.refund",
    "refund",
    "billing__set_payout_destination",
    "billing__refund\x00",
    "",
    "x" * 1000,
]


async def test_adversarial_arguments_and_names_are_denied_recorded_and_never_forwarded(
    deployment: Deployment,
) -> None:
    deployment.with_examples()
    deployment.limits = {"max_argument_bytes": 8192}
    answers: dict[str, dict[str, Any]] = {}
    unknown: dict[str, dict[str, Any]] = {}
    async with raw_guard(deployment, "support-bot") as guard:
        for label, line, _ in DENIED_CALLS:
            msg_id = json.loads(line)["id"]
            await guard.send_line(line)
            answers[label] = await guard.response(msg_id)
        for name in LOOK_ALIKE_NAMES:
            unknown[name] = await guard.request(
                "tools/call", {"name": name, "arguments": {"order_id": "ORD-1001"}}
            )
        # The one allowed call carries client-only fields: none of them may reach the upstream.
        allowed = await guard.request(
            "tools/call",
            {
                "name": "billing__refund",
                "arguments": REFUND,
                "_meta": {
                    "io.modelcontextprotocol/related-task": {"taskId": "t-1"},
                    "trace": "agent-trace",
                    "authorization": "Bearer agent-credential-123456",
                },
                "task": {"ttl": 60000},
                "agent": "finance-bot",
            },
        )

    for label, _, reason in DENIED_CALLS:
        result = answers[label].get("result")
        assert result is not None, (label, answers[label])
        assert result["isError"] is True, (label, result)
        assert result["content"][0]["text"].startswith(f"denied ({reason}): "), (label, result)
    for name, answer in unknown.items():
        assert answer.get("error", {}).get("code") == types.INVALID_PARAMS, (name, answer)
    assert allowed["result"]["isError"] is False

    assert deployment.journals() == [
        {"server": "billing", "tool": "refund", "arguments": REFUND, "meta": None}
    ]
    rows = deployment.ledger()
    assert len(rows) == len(DENIED_CALLS) + len(LOOK_ALIKE_NAMES) + 1
    policy_rows, name_rows, last = rows[: len(DENIED_CALLS)], rows[len(DENIED_CALLS) : -1], rows[-1]
    assert [(r["decision"], r["reason"], r["server"]) for r in policy_rows] == [
        ("deny", reason, "billing") for _, _, reason in DENIED_CALLS
    ]
    assert [(r["decision"], r["reason"], r["server"]) for r in name_rows] == [
        ("deny", "unknown_tool", None) for _ in LOOK_ALIKE_NAMES
    ]
    expected_names = [json.dumps(name, ensure_ascii=True)[1:-1][:256] for name in LOOK_ALIKE_NAMES]
    assert [r["tool"] for r in name_rows] == expected_names
    assert (last["decision"], last["outcome"], last["agent"]) == ("allow", "ok", "support-bot")


def script(*requests: tuple[str, dict[str, Any]]) -> bytes:
    """initialize, initialized, then the requests numbered from 2: what a script pipes in."""
    lines: list[dict[str, Any]] = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "script", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    lines += [
        {"jsonrpc": "2.0", "id": n, "method": method, "params": params}
        for n, (method, params) in enumerate(requests, start=2)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


SCRIPT = script(
    ("tools/list", {}),
    ("tools/call", {"name": "billing__lookup_order", "arguments": {"order_id": "ORD-1001"}}),
    ("tools/call", {"name": "billing__refund", "arguments": {**REFUND, "amount": 400}}),
    ("ping", {}),
)


def spawn(deployment: Deployment, agent: str, errlog: Any) -> subprocess.Popen[bytes]:
    """The real guard with pipes for a hand-driven client; stderr to `errlog`."""
    return subprocess.Popen(
        guard_command(deployment, agent),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errlog,
        env=guard_env(),
        cwd=deployment.root,
    )


@pytest.mark.parametrize("io", ["pipes", "files"])
async def test_every_request_read_before_end_of_input_is_answered_before_the_guard_exits(
    deployment: Deployment, io: str
) -> None:
    # A script ends its input right after its last request: the guard answers them all, over
    # pipes (read on the event loop) and over regular files (read in a worker thread) alike.
    deployment.with_billing()
    deployment.write()
    command = guard_command(deployment, "support-bot")
    script_file, out_file = deployment.root / "script.jsonl", deployment.root / "out.jsonl"
    script_file.write_bytes(SCRIPT)

    def run() -> bytes:
        with deployment.stderr_path.open("ab") as errlog:
            if io == "pipes":
                done = subprocess.run(
                    command,
                    input=SCRIPT,
                    capture_output=False,
                    stdout=subprocess.PIPE,
                    stderr=errlog,
                    env=guard_env(),
                    cwd=deployment.root,
                    timeout=TIMEOUT,
                    check=True,
                )
                return done.stdout
            with script_file.open("rb") as stdin, out_file.open("wb") as stdout:
                subprocess.run(
                    command,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=errlog,
                    env=guard_env(),
                    cwd=deployment.root,
                    timeout=TIMEOUT,
                    check=True,
                )
            return out_file.read_bytes()

    output = await anyio.to_thread.run_sync(run)
    answers = {m["id"]: m for m in map(json.loads, output.splitlines())}
    assert sorted(answers) == [1, 2, 3, 4, 5], answers
    assert len(answers[2]["result"]["tools"]) == 2
    assert answers[3]["result"]["isError"] is False
    assert answers[4]["result"]["content"][0]["text"].startswith("denied (limit_exceeded): ")
    assert answers[5]["result"] == {}
    assert deployment.journals() == [
        {"server": "billing", "tool": "lookup_order", "arguments": {"order_id": "ORD-1001"}, "meta": None}
    ]
    # Requests run concurrently: their entries may land in either order.
    assert sorted((r["tool"], r["decision"], r["outcome"]) for r in deployment.ledger()) == [
        ("lookup_order", "allow", "ok"),
        ("refund", "deny", None),
    ]


async def test_a_client_that_stops_reading_ends_the_guard_and_nothing_reaches_an_upstream_unrecorded(
    deployment: Deployment,
) -> None:
    deployment.with_billing()
    deployment.write()
    lines = SCRIPT.splitlines(keepends=True)

    def run() -> tuple[int, bytes]:
        with deployment.stderr_path.open("ab") as errlog:
            guard = spawn(deployment, "support-bot", errlog)
            assert guard.stdin is not None
            assert guard.stdout is not None
            guard.stdin.write(lines[0])
            guard.stdin.flush()
            first = guard.stdout.readline()
            guard.stdout.close()  # the client stops reading, but keeps its input open
            guard.stdin.writelines(lines[1:])
            guard.stdin.flush()
            try:
                return guard.wait(timeout=TIMEOUT), first
            finally:
                guard.kill()
                guard.stdin.close()

    code, first = await anyio.to_thread.run_sync(run)
    assert json.loads(first)["id"] == 1
    assert code == 0
    assert "the client no longer reads the guard's output" in deployment.stderr()
    rows = deployment.ledger()
    assert all(r["outcome"] in ("ok", "cancelled") for r in rows if r["decision"] == "allow"), rows
    forwarded = [(j["tool"], j["arguments"]) for j in deployment.journals()]
    allowed = [(r["tool"], r["arguments"]) for r in rows if r["decision"] == "allow"]
    assert forwarded == allowed[: len(forwarded)]
    assert len(forwarded) <= 1


HANG = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "hostile__hang", "arguments": {}},
}


def forwarded(deployment: Deployment) -> None:
    """Wait (in a thread) until the hostile upstream has received a call."""
    deadline = time.monotonic() + TIMEOUT
    while not deployment.journal("hostile") and time.monotonic() < deadline:
        time.sleep(0.01)


async def test_sigterm_stops_the_guard_cleanly_with_every_call_and_outcome_in_the_ledger(
    deployment: Deployment,
) -> None:
    # A client stopping its server sends SIGTERM: the call still in flight is cancelled and
    # recorded so, and the outcome of the call just answered (not committed yet: it waits to
    # ride on the next transaction) is committed before the guard exits.
    deployment.with_hostile()
    deployment.write()
    echo = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "hostile__echo", "arguments": {"text": "hi"}},
    }

    def run() -> tuple[int, dict[str, Any]]:
        with deployment.stderr_path.open("ab") as errlog:
            guard = spawn(deployment, "qa-bot", errlog)
            assert guard.stdin is not None
            assert guard.stdout is not None
            try:
                init, initialized = SCRIPT.splitlines(keepends=True)[:2]
                guard.stdin.write(init)
                guard.stdin.flush()
                assert json.loads(guard.stdout.readline())["id"] == 1
                guard.stdin.write(initialized + json.dumps(HANG).encode() + b"\n")
                guard.stdin.flush()
                forwarded(deployment)
                guard.stdin.write(json.dumps(echo).encode() + b"\n")
                guard.stdin.flush()
                answer = json.loads(guard.stdout.readline())
                guard.send_signal(signal.SIGTERM)
                return guard.wait(timeout=TIMEOUT), answer
            finally:
                guard.kill()
                guard.stdin.close()
                guard.stdout.close()

    code, answer = await anyio.to_thread.run_sync(run)
    assert answer["id"] == 3
    assert answer["result"]["isError"] is False
    assert code == 0
    assert "stopping on SIGTERM" in deployment.stderr()
    assert [(j["tool"]) for j in deployment.journal("hostile")] == ["hang", "echo"]
    assert [(r["tool"], r["decision"], r["outcome"]) for r in deployment.ledger()] == [
        ("hang", "allow", "cancelled"),
        ("echo", "allow", "ok"),
    ]


async def test_the_serving_guard_puts_an_edited_manifest_in_force_and_reloads_on_sighup(
    deployment: Deployment,
) -> None:
    deployment.with_billing()
    async with raw_guard(deployment, "support-bot") as guard:
        before = {t["name"] for t in (await guard.request("tools/list"))["result"]["tools"]}
        deployment.manifests["billing"]["tools"]["diagnostics"] = {"allow": ["role:support"]}
        deployment.write()
        with anyio.fail_after(TIMEOUT):  # the guard polls its files every second
            while not any(m.get("method") == "notifications/tools/list_changed" for m in guard.other):
                guard.other.append(await guard.receive())
        after = {t["name"] for t in (await guard.request("tools/list"))["result"]["tools"]}
        loaded = len(ledger_events(deployment.ledger_path, "policy"))
        guard.process.send_signal(signal.SIGHUP)  # nothing changed: a forced reload all the same
        with anyio.fail_after(TIMEOUT):
            for _ in iter(int, 1):
                if len(ledger_events(deployment.ledger_path, "policy")) > loaded:
                    break
                await anyio.sleep(0.05)
        still = await guard.request("tools/list")
    assert before == {"billing__lookup_order", "billing__refund"}
    assert after == before | {"billing__diagnostics"}
    assert {t["name"] for t in still["result"]["tools"]} == after
    assert [e["action"] for e in ledger_events(deployment.ledger_path, "policy")] == [
        "loaded",
        "loaded",
        "loaded",
    ]


async def test_a_cancelled_request_is_not_waited_for_at_end_of_input(deployment: Deployment) -> None:
    # A cancelled request is never answered, so end of input must not wait the drain out for it.
    deployment.with_hostile()
    deployment.write()
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}

    def run() -> float:
        with deployment.stderr_path.open("ab") as errlog:
            guard = spawn(deployment, "qa-bot", errlog)
            assert guard.stdin is not None
            assert guard.stdout is not None
            try:
                guard.stdin.write(SCRIPT.splitlines(keepends=True)[0])
                guard.stdin.flush()
                assert json.loads(guard.stdout.readline())["id"] == 1
                guard.stdin.write(SCRIPT.splitlines(keepends=True)[1] + json.dumps(HANG).encode() + b"\n")
                guard.stdin.flush()
                forwarded(deployment)
                guard.stdin.write(json.dumps(cancel).encode() + b"\n")
                guard.stdin.close()
                started = time.monotonic()
                assert guard.wait(timeout=TIMEOUT) == 0
                return time.monotonic() - started
            finally:
                guard.kill()
                guard.stdout.close()

    took = await anyio.to_thread.run_sync(run)
    assert took < 10  # the drain's bound is 30 s
    assert [(r["tool"], r["decision"], r["outcome"]) for r in deployment.ledger()] == [
        ("hang", "allow", "cancelled")
    ]


async def test_the_guard_leaves_a_shared_input_descriptor_blocking_as_it_found_it(
    deployment: Deployment,
) -> None:
    # Read on the event loop, the descriptor is made non-blocking; a terminal shares that mode
    # with the shell that started the guard, so it must be put back at exit.
    deployment.with_billing()
    deployment.write()
    ours, theirs = socket.socketpair()

    def run() -> tuple[int, bytes]:
        with ours, theirs, deployment.stderr_path.open("ab") as errlog:
            assert os.get_blocking(theirs.fileno())
            guard = subprocess.Popen(
                guard_command(deployment, "support-bot"),
                stdin=theirs.fileno(),
                stdout=subprocess.PIPE,
                stderr=errlog,
                env=guard_env(),
                cwd=deployment.root,
            )
            ours.sendall(SCRIPT)
            ours.shutdown(socket.SHUT_WR)
            output, _ = guard.communicate(timeout=TIMEOUT)
            return int(os.get_blocking(theirs.fileno())), output

    still_blocking, output = await anyio.to_thread.run_sync(run)
    assert still_blocking == 1
    assert sorted(m["id"] for m in map(json.loads, output.splitlines())) == [1, 2, 3, 4, 5]


async def test_upstream_stderr_and_log_messages_reach_the_operator_prefixed_scrubbed_and_one_line_each(
    deployment: Deployment,
) -> None:
    deployment.with_hostile()
    forged = "mcp-guard: upstream 'billing' stopped\x1b[2J\x1b]0;owned\x07"
    async with stdio_guard(deployment, "qa-bot") as session:
        with anyio.fail_after(TIMEOUT):
            await session.call_tool(
                "hostile__stderr",
                {"text": f"debug key=sk_live_0123456789abcdefgh {HOSTILE_SECRET}\n{forged}"},
            )
            await session.call_tool("hostile__log", {"text": f"ok\n{forged}\u202e"})
    err = deployment.stderr()
    assert HOSTILE_SECRET not in err
    assert "sk_live_0123456789" not in err
    assert "\x1b" not in err
    lines = err.splitlines()
    assert "mcp-guard: hostile: debug key=[REDACTED] [REDACTED]" in lines
    assert "mcp-guard: hostile: mcp-guard: upstream 'billing' stopped\\x1b[2J\\x1b]0;owned\\x07" in lines
    assert (
        "mcp-guard: upstream 'hostile' [warning]: ok\\nmcp-guard: upstream 'billing' stopped"
        "\\x1b[2J\\x1b]0;owned\\x07\\u202e"
    ) in lines
    assert not any(line.startswith("mcp-guard: upstream 'billing'") for line in lines)


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
async def test_a_result_over_max_result_bytes_is_refused_unread_and_the_guard_keeps_serving(
    deployment: Deployment,
) -> None:
    deployment.limits["max_result_bytes"] = 64 * 1024
    deployment.with_hostile()

    def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return {"name": f"hostile__{tool}", "arguments": arguments}

    async with raw_guard(deployment, "qa-bot") as guard:
        under = await guard.request("tools/call", call("sized", {"kib": 32}))
        before = peak_rss_kib(guard.process.pid)
        over = [
            await guard.request("tools/call", call("sized", {"kib": 1024})),
            await guard.request("tools/call", call("huge", {"mb": 20})),
        ]
        grown = peak_rss_kib(guard.process.pid) - before
        after = await guard.request("tools/call", call("echo", {"text": "still serving"}))
    assert len(under["result"]["content"][0]["text"]) == 32 * 1024
    for response in over:
        assert response["result"]["isError"] is True
        assert response["result"]["content"] == [
            {"type": "text", "text": "error (upstream_error): the call may have taken effect"}
        ]
    assert after["result"]["content"][0]["text"] == "still serving"
    # Read whole, the 20 MiB result alone would have cost the guard far more than this.
    assert grown < 16 * 1024, f"the guard's peak memory grew by {grown} KiB"
    assert [(r["tool"], r["outcome"]) for r in deployment.ledger()] == [
        ("sized", "ok"),
        ("sized", "upstream_error"),
        ("huge", "upstream_error"),
        ("echo", "ok"),
    ]
    assert "over 65536 bytes (limits.max_result_bytes)" in deployment.stderr()
