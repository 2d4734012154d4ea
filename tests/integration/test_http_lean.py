"""The lean HTTP path answers exactly as the SDK's Streamable HTTP handling does: each request of
the table goes through the guard's ASGI app twice, once with the lean path and once without it
(the same guard, ledger and upstreams), and both answers must be the same status, headers and
body. The table says which requests the lean path itself must serve; everything else must reach
the SDK's path unchanged."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from mcp_guard.guard.app import open_guard
from mcp_guard.identity.keys import hash_key, new_key
from mcp_guard.transports.http import GuardMiddleware, build_app
from mcp_guard.upstream.transports import memory_transport
from tests.helpers import BILLING_TOOLS, Deployment, memory_transports
from tests.upstreams.asking import SECRET_ENV, Observed
from tests.upstreams.asking import build_server as build_asking

KEY, OTHER_KEY = new_key(), new_key()
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "table", "version": "1"},
}
HEADERS = {
    "host": "127.0.0.1:8765",
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": MODERN,
    "authorization": f"Bearer {KEY}",
}


def call(name: str, arguments: Any, **meta: Any) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments, "_meta": {**ENVELOPE, **meta}}
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}


def routed(body: dict[str, Any]) -> dict[str, str]:
    """The routing headers a 2026-07-28 client sends for the body."""
    headers = {"mcp-method": str(body.get("method"))}
    params = body.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return {**headers, "mcp-name": name} if isinstance(name, str) else headers


LOOKUP = call("billing__lookup_order", {"order_id": "ORD-1001"})
LISTING = {"jsonrpc": "2.0", "id": "l", "method": "tools/list", "params": {"_meta": ENVELOPE}}
OVER_LIMIT = call("billing__refund", {"order_id": "ORD-1001", "amount": 500, "currency": "USD"})


@dataclass(frozen=True)
class Case:
    body: Any  # a dict is sent as JSON with its routing headers; bytes as they are
    headers: dict[str, str | None] | None = None  # changes to HEADERS (None removes one)
    extra: tuple[tuple[str, str], ...] = ()  # header lines added as they are (duplicates)
    lean: bool = False  # the lean path itself must answer
    method: str = "POST"


CASES: dict[str, Case] = {
    "an allowed call": Case(LOOKUP, lean=True),
    "a call over its limit": Case(OVER_LIMIT, lean=True),
    "a tools/list": Case(LISTING, lean=True),
    "a string request id": Case({**LOOKUP, "id": "call-1"}, lean=True),
    "an Mcp-Param header the schema does not declare": Case(LOOKUP, {"mcp-param-order_id": "x"}, lean=True),
    "arguments of the wrong type": Case(call("billing__lookup_order", "ORD-1001"), lean=True),
    "a tool the agent is not shown": Case(call("billing__diagnostics", {})),
    "a tool that does not exist": Case(call("billing__nothing", {})),
    "a progress token": Case(call("billing__lookup_order", {"order_id": "ORD-1002"}, progressToken="p")),
    "a ping": Case({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": ENVELOPE}}),
    "a notification": Case({"jsonrpc": "2.0", "method": "tools/call", "params": LOOKUP["params"]}),
    "params that are not an object": Case({**LOOKUP, "params": [1]}),
    "no envelope": Case({**LOOKUP, "params": {"name": "billing__lookup_order", "arguments": {}}}),
    "an unsupported protocol version": Case(LOOKUP, {"mcp-protocol-version": "2099-01-01"}),
    "a header version the envelope does not name": Case(
        call("billing__lookup_order", {}), {"mcp-protocol-version": "2030-01-01"}
    ),
    "an Mcp-Method that is not the body's": Case(LOOKUP, {"mcp-method": "tools/list"}),
    "an Mcp-Name that is not the body's": Case(LOOKUP, {"mcp-name": "billing__refund"}),
    "no Mcp-Method": Case(LOOKUP, {"mcp-method": None}),
    "a duplicated Mcp-Method": Case(LOOKUP, extra=(("mcp-method", "tools/call"),)),
    "a 2025 protocol version without a session": Case(LOOKUP, {"mcp-protocol-version": "2025-11-25"}),
    "no protocol version": Case(LOOKUP, {"mcp-protocol-version": None}),
    "an Accept without SSE": Case(LOOKUP, {"accept": "application/json"}),
    "an Accept without JSON": Case(LOOKUP, {"accept": "text/event-stream"}),
    "an Accept of anything": Case(LOOKUP, {"accept": "*/*"}, lean=True),
    "a Content-Type that is not JSON": Case(LOOKUP, {"content-type": "text/plain"}),
    "a GET": Case(b"", method="GET"),
    "a DELETE": Case(b"", method="DELETE"),
    "a body that is not JSON": Case(b'{"jsonrpc": "2.0", "id": 1,'),
    "a duplicate key": Case(b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list","params":{}}'),
    "NaN in the arguments": Case(json.dumps(LOOKUP).replace('"ORD-1001"', "NaN").encode()),
    "a batch": Case(json.dumps([LOOKUP]).encode()),
    "no credential": Case(LOOKUP, {"authorization": None}),
    "a wrong key": Case(LOOKUP, {"authorization": f"Bearer {new_key()}"}),
    "another agent's key": Case(
        call("billing__diagnostics", {}), {"authorization": f"Bearer {OTHER_KEY}"}, lean=True
    ),
    "a call of a tool whose grant may ask for approval": Case(
        call("billing__refund", {"order_id": "ORD-1002", "amount": 5, "currency": "USD"}),  # refused upstream
        {"authorization": f"Bearer {OTHER_KEY}"},
    ),
    "an Origin of another site": Case(LOOKUP, {"origin": "http://evil.example"}),
    "a Host of another site": Case(LOOKUP, {"host": "evil.example"}),
    "a session id nobody opened": Case(LOOKUP, {"mcp-session-id": "abc"}),
}


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: Any


async def send(app: Any, case: Case) -> Answer:
    body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers: dict[str, str | None] = {**HEADERS, **(routed(case.body) if isinstance(case.body, dict) else {})}
    headers.update(case.headers or {})
    raw = [(k.encode(), v.encode()) for k, v in headers.items() if v is not None]
    raw += [(k.encode(), v.encode()) for k, v in case.extra]
    raw.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "method": case.method,
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()  # the client waits for its answer (as uvicorn's receive does)
        raise AssertionError

    async def collect(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, collect)
    start = sent[0]
    content = b"".join(m.get("body", b"") for m in sent[1:])
    kept = sorted(
        (k.decode(), "<new>" if k == b"mcp-session-id" else v.decode()) for k, v in start["headers"]
    )
    return Answer(start["status"], kept, json.loads(content) if content.startswith(b"{") else content)


@asynccontextmanager
async def two_apps(deployment: Deployment) -> AsyncIterator[tuple[Any, Any, list[bool]]]:
    """The guard's app with its lean path, the same app without it, and what the lean path did
    with each request it was offered (True: answered it)."""
    tools = copy.deepcopy(BILLING_TOOLS)
    tools["refund"][1]["approval"] = {"when": {"amount": {"exclusiveMinimum": 1000}}, "wait": "1s"}
    deployment.with_billing(tools=tools)
    deployment.extra_config["agents"] = {
        "support-bot": {"roles": ["support"], "keys": [hash_key(KEY)]},
        "finance-bot": {"roles": ["finance"], "keys": [hash_key(OTHER_KEY)]},
    }
    config, manifests = deployment.load()
    agents = ("support-bot", "finance-bot")
    async with open_guard(config, manifests, agents, memory_transports(manifests)) as guard:
        app = build_app(guard, "127.0.0.1")
        lean = app.lean
        assert lean is not None
        plain = GuardMiddleware(app.app, guard, app.allowed, app.authenticator)
        served: list[bool] = []
        offered: Callable[..., Any] = lean.serve

        async def watched(*args: Any) -> bool:
            answered = bool(await offered(*args))
            served.append(answered)
            return answered

        lean.serve = watched  # type: ignore[method-assign,assignment]
        await guard.warm()
        inner: Any = app.app
        async with inner.router.lifespan_context(inner):
            yield app, plain, served


async def test_every_request_of_the_table_is_answered_alike_by_the_lean_path_and_the_sdks(
    deployment: Deployment,
) -> None:
    async with two_apps(deployment) as (app, plain, served):
        for label, case in CASES.items():
            served.clear()
            lean_answer = await send(app, case)
            assert served[-1:] == ([True] if case.lean else [False] if served else []), label
            sdk_answer = await send(plain, case)
            assert lean_answer == sdk_answer, label
    ledger = deployment.ledger()
    lookups = [c for c in ledger if c["tool"] == "lookup_order" and c["decision"] == "allow"]
    assert all(c["outcome"] == "ok" for c in lookups)


async def test_a_call_the_lean_path_refuses_never_reaches_the_upstream_and_is_recorded(
    deployment: Deployment,
) -> None:
    async with two_apps(deployment) as (app, _, served):
        answer = await send(app, CASES["a call over its limit"])
        assert served == [True]
        assert answer.status == 200
        assert answer.body["result"]["isError"] is True
    assert deployment.journal("billing") == []
    [decision] = deployment.ledger()
    assert (decision["tool"], decision["decision"], decision["reason"]) == (
        "refund",
        "deny",
        "limit_exceeded",
    )
    assert decision["agent"] == "support-bot"


async def test_an_allowed_call_on_the_lean_path_is_recorded_before_and_after_it_reaches_the_upstream(
    deployment: Deployment,
) -> None:
    amount = 5
    refund = call("billing__refund", {"order_id": "ORD-1001", "amount": amount, "currency": "USD"})
    async with two_apps(deployment) as (app, _, served):
        answer = await send(app, Case(refund))
        assert served == [True]
        assert answer.body["result"]["structuredContent"]["amount"] == amount
    [seen] = deployment.journal("billing")
    assert seen["arguments"]["amount"] == amount
    [decision] = deployment.ledger()
    assert (decision["decision"], decision["outcome"], decision["session"]) == ("allow", "ok", None)


async def test_a_modern_calls_input_request_and_its_retry_are_served_alike_on_both_paths(
    deployment: Deployment,
) -> None:
    """A relayed elicitation reaches a 2026-07-28 client over HTTP as its call's result, and the
    retry with the answer completes the call, whether the lean path or the SDK's serves it."""
    upstream = {
        "command": "python",
        "args": ["-m", "asking"],
        "env": {SECRET_ENV: "s"},
        "relay": {"elicitation": True},
    }
    deployment.agents = {"qa-bot": ["qa"]}
    deployment.add(
        "asking", {"server": "asking", "upstream": upstream, "tools": {"elicit": {"allow": ["role:qa"]}}}
    )
    deployment.extra_config["agents"] = {"qa-bot": {"roles": ["qa"], "keys": [hash_key(KEY)]}}
    config, manifests = deployment.load()
    observed = Observed()
    transport = memory_transport(lambda m: build_asking(observed, m.upstream.env[SECRET_ENV]))
    envelope = {**ENVELOPE, "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}
    asked = {"name": "asking__elicit", "arguments": {"message": "name?"}, "_meta": envelope}
    async with open_guard(config, manifests, ("qa-bot",), {"asking": transport}) as guard:
        app = build_app(guard, "127.0.0.1")
        plain = GuardMiddleware(app.app, guard, app.allowed, app.authenticator)
        assert app.lean is not None
        offered: Callable[..., Any] = app.lean.serve
        served: list[bool] = []

        async def watched(*args: Any) -> bool:
            served.append(bool(await offered(*args)))
            return served[-1]

        app.lean.serve = watched  # type: ignore[method-assign,assignment]
        await guard.warm()
        inner: Any = app.app
        async with inner.router.lifespan_context(inner):
            said = []
            for served_by in (app, plain):
                first = await send(
                    served_by, Case({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": asked})
                )
                result = first.body["result"]
                assert result["resultType"] == "input_required", first
                [(key, request)] = result["inputRequests"].items()
                assert request["method"] == "elicitation/create"
                answer = {key: {"action": "accept", "content": {"name": "ada"}}}
                retry = {**asked, "inputResponses": answer, "requestState": result["requestState"]}
                done = await send(
                    served_by, Case({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": retry})
                )
                said.append(done.body["result"]["content"][0]["text"])
    assert said == ['accept {"name": "ada"}'] * 2
    assert served == [True, True]  # the lean path answered the call and its retry
    assert [c["tool"] for c in deployment.ledger()] == ["elicit", "elicit"]  # decided once per call
