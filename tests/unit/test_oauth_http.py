"""The HTTP listener with `oauth` configured, driven as raw ASGI: the RFC 9728 metadata served
without a credential, the challenges (401 with resource_metadata and scope, 403
insufficient_scope, 403 for a subject that is no agent), and the guard's own keys and tokens
still accepted beside the authorization server's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mcp_guard.config import HttpConfig
from mcp_guard.guard.caller import AGENT_SCOPE_KEY
from mcp_guard.identity.base import Chain
from mcp_guard.identity.keys import StaticKeys
from mcp_guard.identity.tokens import SignedTokens, issue_token
from mcp_guard.policy.engine import Agent, Policy
from mcp_guard.transports.http import GuardMiddleware, allowed_sources
from tests.unit.oauth_fixtures import ISSUER, NOW, POLICY, RESOURCE, Issuer, verifier

METADATA = "https://guard.example.test/.well-known/oauth-protected-resource/mcp"


@dataclass
class FakeGuard:
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


@pytest.fixture(scope="module")
def issuer_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def ask(
    issuer: Issuer,
    *authorization: str,
    path: str = "/mcp",
    method: str = "GET",
    guard: FakeGuard | None = None,
) -> Answer:
    guard = guard or FakeGuard()
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

    authenticator = Chain(
        StaticKeys(lambda: guard.policy),
        verifier(issuer, policy=guard.policy),
        SignedTokens(lambda: guard.policy, lambda: NOW),
    )
    allowed = allowed_sources(HttpConfig(), "127.0.0.1")[0]
    middleware = GuardMiddleware(inner, guard, allowed, authenticator)  # type: ignore[arg-type]
    headers = [(b"host", b"127.0.0.1:8765")] + [(b"authorization", a.encode()) for a in authorization]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }
    await middleware(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    headers_out = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return Answer(sent[0]["status"], headers_out, json.loads(body) if body else None, reached)


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"]
)
async def test_the_protected_resource_metadata_is_served_without_a_credential(
    issuer_key: Any, path: str
) -> None:
    answer = await ask(Issuer(keys={"k1": issuer_key}), path=path)
    assert answer.status == 200
    assert answer.body["resource"] == RESOURCE
    assert answer.body["authorization_servers"] == [ISSUER]
    assert answer.body["scopes_supported"] == ["mcp:tools"]
    assert answer.body["bearer_methods_supported"] == ["header"]
    assert answer.reached == []
    assert (await ask(Issuer(), path=path, method="POST")).status == 405


async def test_a_request_without_a_token_gets_401_pointing_at_the_metadata(issuer_key: Any) -> None:
    answer = await ask(Issuer(keys={"k1": issuer_key}))
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == (
        f'Bearer realm="mcp-guard", resource_metadata="{METADATA}", scope="mcp:tools"'
    )


async def test_a_bad_token_gets_invalid_token_with_the_metadata_and_a_token_without_scope_403(
    issuer_key: Any,
) -> None:
    issuer = Issuer(keys={"k1": issuer_key})
    answer = await ask(issuer, f"Bearer {issuer.sign('k1', aud='https://elsewhere.test')}")
    assert answer.status == 401
    challenge = answer.headers["www-authenticate"]
    assert f'resource_metadata="{METADATA}"' in challenge
    assert 'error="invalid_token"' in challenge
    answer = await ask(issuer, f"Bearer {issuer.sign('k1', scope='openid')}")
    assert (answer.status, answer.body["error"]) == (403, "insufficient_scope")
    assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    assert 'scope="mcp:tools"' in answer.headers["www-authenticate"]
    answer = await ask(issuer, f"Bearer {issuer.sign('k1', client_id='stranger')}")
    assert (answer.status, answer.body["error"], answer.reached) == (403, "access_denied", [])


async def test_oauth_tokens_keys_and_the_guards_own_tokens_all_work_side_by_side(issuer_key: Any) -> None:
    from mcp_guard.config import AgentConfig, GuardConfig
    from mcp_guard.identity.keys import hash_key

    agents = dict(POLICY.config.agents)
    agents["keyed-bot"] = AgentConfig(keys=(hash_key("mcpg_keyed-bot-key-0123456789"),))
    policy = Policy(GuardConfig(agents=agents, oauth=POLICY.config.oauth, tokens=POLICY.config.tokens), [])
    guard = FakeGuard(policy)
    issuer = Issuer(keys={"k1": issuer_key})
    assert policy.config.tokens is not None
    own, own_claims = issue_token(policy.config.tokens, "finance-bot", 600, NOW)
    expected = [
        (f"Bearer {issuer.sign('k1')}", "support-bot", "oauth:support-client:jti-1"),
        (f"Bearer {own}", "finance-bot", f"token:{own_claims['jti']}"),
        (
            "Bearer mcpg_keyed-bot-key-0123456789",
            "keyed-bot",
            "key:" + hash_key("mcpg_keyed-bot-key-0123456789")[7:19],
        ),
    ]
    for authorization, name, credential in expected:
        answer = await ask(issuer, authorization, guard=guard)
        assert answer.status == 200, answer.body
        assert [(a.name, a.credential) for a in answer.reached] == [(name, credential)]
