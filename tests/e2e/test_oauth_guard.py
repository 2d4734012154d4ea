"""End to end against a real authorization server: node-oidc-provider on loopback issues JWT
access tokens (client credentials, resource indicators) and the real `mcp-guard serve --http`
accepts them; the SDK's own OAuth client finds the provider from the guard's 401; the guard
fetches its own token for an HTTP upstream that checks the token's audience; refused tokens
reach no upstream; `token revoke` refuses a token from the next request on."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from tests.e2e.oauth_provider import Provider, install, run_provider
from tests.helpers import Deployment, drain_serving, free_port, ledger_calls, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
SIGNING_KEY = "e2e-oauth-signing-key-7a1c0e55d2b94f13"
UPSTREAM_SECRET = "guard-billing-secret-5f2e9c07"
CLIENTS = [
    {"client_id": "support-client", "client_secret": "support-secret-0c9d8e7f", "scope": "mcp:tools"},
    {"client_id": "stranger-client", "client_secret": "stranger-secret-1a2b3c4d", "scope": "mcp:tools"},
    {"client_id": "noscope-client", "client_secret": "noscope-secret-5e6f7a8b", "scope": "other"},
    {"client_id": "guard-billing", "client_secret": UPSTREAM_SECRET, "scope": "billing:write"},
]
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="session")
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = (
        cache.mkdir("oidc-provider") if cache is not None else REPO_ROOT / ".pytest_cache" / "oidc-provider"
    )
    folder.mkdir(parents=True, exist_ok=True)
    entry = install(folder)
    with run_provider(entry, CLIENTS) as running:
        yield running


@dataclass
class Running:
    url: str
    resource: str
    deployment: Deployment
    upstream_url: str
    upstream_journal: Path
    stderr: list[str] = field(default_factory=list)

    def upstream_seen(self) -> list[dict[str, Any]]:
        if not self.upstream_journal.exists():
            return []
        return [json.loads(line) for line in self.upstream_journal.read_text(encoding="utf-8").splitlines()]

    def decisions(self) -> list[dict[str, Any]]:
        return ledger_calls(self.deployment.ledger_path)

    def credentials(self) -> list[str | None]:
        import sqlite3

        conn = sqlite3.connect(f"file:{self.deployment.ledger_path}?mode=ro", uri=True)
        try:
            return [
                r[0]
                for r in conn.execute("SELECT credential FROM entries WHERE kind = 'decision' ORDER BY id")
            ]
        finally:
            conn.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mcp_guard", "--config", str(self.deployment.config_path), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.fixture(scope="module")
def guard(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """An upstream that checks its tokens' audience, and `mcp-guard serve --http` in front of it
    and of the example billing upstream, taking the provider's tokens."""
    root = tmp_path_factory.mktemp("oauth-guard")
    upstream_port, guard_port = free_port(), free_port()
    journal = root / "audience-journal.jsonl"
    with (root / "audience-stderr.log").open("w") as errors:
        upstream = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.upstreams.audience",
                str(upstream_port),
                provider.issuer,
                str(journal),
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            text=True,
        )
    upstream_url = f"http://127.0.0.1:{upstream_port}/mcp"
    resource = f"http://127.0.0.1:{guard_port}/mcp"
    deployment = Deployment(root).with_billing()
    deployment.extra_config = {
        "agents": {"support-bot": {"roles": ["support"], "subjects": ["support-client"]}},
        "tokens": {"signing_key": SIGNING_KEY},
        "oauth": {
            "issuer": provider.issuer,
            "resource": resource,
            "scopes": ["mcp:tools"],
            "agent_claim": "client_id",
        },
    }
    deployment.add(
        "audience",
        {
            "server": "audience",
            "upstream": {
                "url": upstream_url,
                "auth": {
                    "client_credentials": {
                        "token_url": provider.token_endpoint,
                        "client_id": "guard-billing",
                        "client_secret": UPSTREAM_SECRET,
                        "scope": "billing:write",
                        "resource": upstream_url,
                    }
                },
            },
            "tools": {"whoami": {"allow": ["role:support"]}},
        },
    )
    deployment.write()
    running = Running(f"{resource}", resource, deployment, upstream_url, journal)
    wait_for_port(upstream_port, time.monotonic() + TIMEOUT)
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_guard", "--config", str(deployment.config_path), "serve", "--http",
         f"127.0.0.1:{guard_port}"],
        cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    ready: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=drain_serving, args=(process.stderr, running.stderr, ready), daemon=True)
    reader.start()
    try:
        assert ready.get(timeout=TIMEOUT), f"the guard exited before serving: {''.join(running.stderr)}"
        wait_for_port(guard_port, time.monotonic() + TIMEOUT)
        yield running
    finally:
        code = _stop(process)
        reader.join(timeout=TIMEOUT)
        _stop(upstream)
        process.stderr.close()
    assert code == 0, "".join(running.stderr)
    log = "".join(running.stderr)
    assert UPSTREAM_SECRET not in log
    assert "eyJ" not in log  # no token of any kind reached the operator's log whole


class Storage:
    """Token storage for the SDK's OAuth client, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@asynccontextmanager
async def oauth_session(guard: Running, provider: Provider, storage: Storage) -> AsyncIterator[ClientSession]:
    """The SDK's client with its client credentials OAuth provider: it starts without a token,
    and must find the authorization server from the guard's 401 and metadata."""
    auth = ClientCredentialsOAuthProvider(
        server_url=guard.url,
        storage=storage,
        client_id="support-client",
        client_secret=provider.clients["support-client"],
        scope="mcp:tools",
        issuer=provider.issuer,
    )
    async with (
        httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(TIMEOUT)) as http,
        streamable_http_client(guard.url, http_client=http) as streams,
        ClientSession(streams[0], streams[1], read_timeout_seconds=TIMEOUT) as session,
    ):
        await session.initialize()
        yield session


async def test_the_sdks_oauth_client_finds_the_provider_and_calls_through_the_guard(
    guard: Running, provider: Provider
) -> None:
    storage = Storage()
    async with oauth_session(guard, provider, storage) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert {"billing__lookup_order", "billing__refund", "audience__whoami"} <= names
        looked = await session.call_tool("billing__lookup_order", {"order_id": "ORD-1001"})
        assert not looked.is_error
        hello = await session.call_tool("audience__whoami", {"note": "from support"})
        assert not hello.is_error
        assert hello.content[0].text == "hello from support"  # type: ignore[union-attr]
    assert storage.tokens is not None
    agent_token = storage.tokens.access_token
    claims = jwt.decode(agent_token, options={"verify_signature": False})
    assert claims["aud"] == guard.resource
    # The ledger says which credential made each call, and never holds the token.
    calls = [c for c in guard.decisions() if c["tool"] in ("lookup_order", "whoami")]
    assert [c["decision"] for c in calls[-2:]] == ["allow", "allow"]
    assert guard.credentials()[-1] == f"oauth:support-client:{claims['jti']}"
    assert agent_token not in guard.deployment.ledger_path.read_bytes().decode("utf-8", "replace")
    # The upstream saw only the guard's own token, issued for the upstream, never the agent's. It
    # refused the first one it got: the guard fetched another and sent that request again.
    seen = guard.upstream_seen()
    assert seen[0]["refused"] == "the first token is refused"
    assert seen[1]["refused"] is None
    assert seen[1]["authorization"] != seen[0]["authorization"]
    assert all(entry["refused"] is None for entry in seen[1:])
    for entry in seen:
        token = entry["authorization"].removeprefix("Bearer ")
        assert token != agent_token
        upstream_claims = jwt.decode(token, options={"verify_signature": False})
        assert (upstream_claims["aud"], upstream_claims["client_id"]) == (guard.upstream_url, "guard-billing")
    assert agent_token not in json.dumps(guard.deployment.journal("billing"))


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("another audience", 401, "invalid_token"),
        ("no agent's subject", 403, "access_denied"),
        ("without the scope", 403, "insufficient_scope"),
        ("signature tampered", 401, "invalid_token"),
        ("the guard's resource, wrong issuer key", 401, "invalid_token"),
    ],
)
async def test_refused_provider_tokens_reach_no_upstream_and_decide_nothing(
    guard: Running, provider: Provider, case: str, status: int, error: str
) -> None:
    if case == "another audience":
        token = provider.token("support-client", f"http://127.0.0.1:{free_port()}/mcp")
    elif case == "no agent's subject":
        token = provider.token("stranger-client", guard.resource)
    elif case == "without the scope":
        token = provider.token("noscope-client", guard.resource, scope="other")
    elif case == "signature tampered":
        head, body, signature = provider.token("support-client", guard.resource).split(".")
        token = f"{head}.{body}.{signature[::-1]}"
    else:  # a token claiming to be the provider's, signed with a key of our own
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        claims = jwt.decode(
            provider.token("support-client", guard.resource), options={"verify_signature": False}
        )
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "e2e-key-1"})
    before_upstream, before_billing = len(guard.upstream_seen()), len(guard.deployment.journal("billing"))
    before_decisions = len(guard.decisions())
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        answer = await http.post(
            guard.url, json=INITIALIZE, headers=HEADERS | {"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == status, answer.text
        assert answer.json()["error"] == error
        challenge = answer.headers["www-authenticate"]
        assert 'resource_metadata="http://127.0.0.1:' in challenge
        if error == "insufficient_scope":
            assert 'error="insufficient_scope"' in challenge
            assert 'scope="mcp:tools"' in challenge
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "audience__whoami", "arguments": {}}}  # fmt: skip
        again = await http.post(guard.url, json=call, headers=HEADERS | {"Authorization": f"Bearer {token}"})
        assert again.status_code == status
    # Nothing reached an upstream; nothing was decided for nobody (the refusal is in the guard's log).
    assert len(guard.upstream_seen()) == before_upstream
    assert len(guard.deployment.journal("billing")) == before_billing
    assert len(guard.decisions()) == before_decisions


async def test_a_call_refused_by_policy_is_recorded_with_the_oauth_credential_and_never_forwarded(
    guard: Running, provider: Provider
) -> None:
    storage = Storage()
    async with oauth_session(guard, provider, storage) as session:
        refused = await session.call_tool(
            "billing__refund", {"order_id": "ORD-9009", "amount": 4000, "currency": "USD"}
        )
    assert refused.is_error
    assert "limit_exceeded" in refused.content[0].text  # type: ignore[union-attr]
    assert storage.tokens is not None
    jti = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})["jti"]
    last = guard.decisions()[-1]
    assert (last["tool"], last["decision"], last["reason"]) == ("refund", "deny", "limit_exceeded")
    assert guard.credentials()[-1] == f"oauth:support-client:{jti}"
    assert not [
        e for e in guard.deployment.journal("billing") if e.get("arguments", {}).get("order_id") == "ORD-9009"
    ]


async def test_the_metadata_document_names_the_provider_and_the_provider_serves_its_metadata(
    guard: Running, provider: Provider
) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        base = guard.url.removesuffix("/mcp")
        document = (await http.get(f"{base}/.well-known/oauth-protected-resource/mcp")).json()
        assert document["resource"] == guard.resource
        assert document["authorization_servers"] == [provider.issuer]
        assert document["scopes_supported"] == ["mcp:tools"]
        discovered = (await http.get(f"{provider.issuer}/.well-known/openid-configuration")).json()
        assert discovered["issuer"] == provider.issuer
        bare = await http.post(guard.url, json=INITIALIZE, headers=HEADERS)
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"] == (
            f'Bearer realm="mcp-guard", resource_metadata="{base}/.well-known/oauth-protected-resource/mcp", '
            'scope="mcp:tools"'
        )


async def test_token_revoke_refuses_provider_and_guard_tokens_from_the_next_request(
    guard: Running, provider: Provider
) -> None:
    oauth_token = provider.token("support-client", guard.resource)
    issued = guard.cli("token", "issue", "--agent", "support-bot", "--ttl", "5m")
    assert issued.returncode == 0, issued.stderr
    own_token = issued.stdout.strip()
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        for token in (oauth_token, own_token):
            authorization = {"Authorization": f"Bearer {token}"}
            assert (
                await http.post(guard.url, json=INITIALIZE, headers=HEADERS | authorization)
            ).status_code == 200
            jti = jwt.decode(token, options={"verify_signature": False})["jti"]
            revoked = guard.cli("token", "revoke", "--", jti)  # a jti may begin with "-"
            assert revoked.returncode == 0, revoked.stderr
            assert f"revoked: token {jti}" in revoked.stdout
            answer = await http.post(guard.url, json=INITIALIZE, headers=HEADERS | authorization)
            assert answer.status_code == 401
            assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert guard.cli("token", "revoke", "").returncode == 2
    # Another token of the same client is not revoked.
    fresh = provider.token("support-client", guard.resource)
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        answer = await http.post(
            guard.url, json=INITIALIZE, headers=HEADERS | {"Authorization": f"Bearer {fresh}"}
        )
        assert answer.status_code == 200
