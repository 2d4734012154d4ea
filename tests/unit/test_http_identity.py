"""The HTTP middleware's identity step, driven as raw ASGI: what each refused credential is
answered (byte for byte as before the Authenticator seam) and that only an Agent gets through."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mcp_guard.config import GuardConfig, HttpConfig
from mcp_guard.guard.caller import AGENT_SCOPE_KEY
from mcp_guard.identity.base import Chain
from mcp_guard.identity.keys import StaticKeys
from mcp_guard.identity.tokens import SignedTokens, issue_token
from mcp_guard.policy.engine import Agent, Policy
from mcp_guard.transports.http import GuardMiddleware, allowed_sources
from tests.unit.identity_fixtures import AGENTS, FINANCE_KEY, NOW, POLICY, SUPPORT_KEY, TOKENS

INVALID = 'Bearer realm="mcp-guard", error="invalid_token", error_description="the credential is invalid or expired"'


@dataclass
class FakeGuard:
    """What the middleware's identity step uses of the Guard: the policy in force and the log."""

    policy: Policy = POLICY
    logged: list[str] = field(default_factory=list)

    def log(self, text: str) -> None:
        self.logged.append(text)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    reached: list[Agent]


async def get(guard: FakeGuard, *authorization: str, query: str = "") -> Answer:
    reached: list[Agent] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope[AGENT_SCOPE_KEY])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    authenticator = Chain(StaticKeys(lambda: guard.policy), SignedTokens(lambda: guard.policy, lambda: NOW))
    middleware = GuardMiddleware(inner, guard, allowed_sources(HttpConfig(), "127.0.0.1")[0], authenticator)  # type: ignore[arg-type]
    headers = [(b"host", b"127.0.0.1:8765")] + [
        (b"authorization", a.encode("latin-1")) for a in authorization
    ]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }
    await middleware(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return Answer(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        json.loads(body),
        reached,
    )


async def test_a_request_without_a_credential_is_told_how_to_send_one_and_is_not_logged() -> None:
    guard = FakeGuard()
    answer = await get(guard)
    assert (answer.status, answer.headers["www-authenticate"]) == (401, 'Bearer realm="mcp-guard"')
    assert answer.body == {
        "error": "invalid_request",
        "error_description": "send Authorization: Bearer <key or token>",
    }
    assert answer.reached == []
    assert guard.logged == []


async def test_a_refused_credential_gets_invalid_token_and_a_log_line_without_the_credential() -> None:
    guard = FakeGuard()
    answer = await get(guard, "Bearer mcpg_" + "z" * 40)
    assert (answer.status, answer.headers["www-authenticate"]) == (401, INVALID)
    assert answer.body == {
        "error": "invalid_token",
        "error_description": "the credential is invalid or expired",
    }
    assert answer.reached == []
    [line] = guard.logged
    assert line.startswith("HTTP 401 for 127.0.0.1: ")
    assert "zzzz" not in line


async def test_only_an_authenticated_agent_reaches_the_sdk_with_its_roles_in_the_scope() -> None:
    token, _ = issue_token(TOKENS, "finance-bot", 600, NOW)
    for authorization, agent in [
        (f"Bearer {SUPPORT_KEY}", "support-bot"),
        (f"Bearer {token}", "finance-bot"),
    ]:
        answer = await get(FakeGuard(), authorization)
        assert answer.status == 200
        assert answer.reached == [POLICY.agents[agent]]


async def test_two_credentials_at_once_are_refused_before_either_is_checked() -> None:
    token, _ = issue_token(TOKENS, "finance-bot", 600, NOW)
    for pair in [
        (f"Bearer {SUPPORT_KEY}", f"Bearer {token}"),
        (f"Bearer {SUPPORT_KEY}", f"Bearer {FINANCE_KEY}"),
    ]:
        guard = FakeGuard()
        answer = await get(guard, *pair)
        assert (answer.status, answer.headers["www-authenticate"], answer.reached) == (401, INVALID, [])
        assert "more than one Authorization header" in guard.logged[0]
    answer = await get(FakeGuard(), f"Bearer {SUPPORT_KEY}", query=f"access_token={token}")
    assert (answer.status, answer.reached) == (400, [])
    assert "www-authenticate" not in answer.headers


async def test_a_reload_that_removes_the_agent_ends_its_key_and_its_token_at_the_next_request() -> None:
    token, _ = issue_token(TOKENS, "support-bot", 600, NOW)
    guard = FakeGuard()
    assert (await get(guard, f"Bearer {token}")).status == 200
    without = {name: agent for name, agent in AGENTS.items() if name != "support-bot"}
    guard.policy = Policy(GuardConfig(agents=without, tokens=TOKENS), [])
    for authorization in (f"Bearer {token}", f"Bearer {SUPPORT_KEY}"):
        answer = await get(guard, authorization)
        assert (answer.status, answer.reached) == (401, [])
