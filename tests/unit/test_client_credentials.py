"""The guard's client credentials toward an HTTP upstream, against mock token endpoints and
upstreams: fetched once and reused, renewed before it expires, renewed once after a 401, refused
answers of the token endpoint, every token handed over for scrubbing, and the manifest's rules."""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx2
import pytest

from mcp_guard.manifest import ClientCredentials, Upstream
from mcp_guard.upstream.credentials import ClientCredentialsAuth, TokenUnavailable
from mcp_guard.upstream.transports import capped_http_client
from tests.unit.oauth_fixtures import Clock

SETTINGS = ClientCredentials.model_validate(
    {
        "token_url": "https://login.example.test/token",
        "client_id": "guard-billing",
        "client_secret": "s3cret/with:odd chars",
        "scope": "billing:write",
        "resource": "https://billing.example.test/mcp",
    }
)


@dataclass
class TokenEndpoint:
    answers: list[Any] = field(default_factory=list)  # what to answer next (default: a fresh token)
    forms: list[dict[str, str]] = field(default_factory=list)
    basic: list[str] = field(default_factory=list)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.forms.append(dict(parse_qsl(request.content.decode())))
        self.basic.append(
            base64.b64decode(request.headers.get("authorization", "Basic ").split()[1]).decode()
        )
        if self.answers:
            answer = self.answers.pop(0)
            return answer if isinstance(answer, httpx2.Response) else httpx2.Response(200, json=answer)
        return httpx2.Response(
            200,
            json={
                "access_token": f"tok-{len(self.forms)}-abcdefgh",
                "token_type": "Bearer",
                "expires_in": 300,
            },
        )


@dataclass
class UpstreamSeen:
    authorizations: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # tokens answered 401

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        auth = request.headers.get("authorization", "")
        self.authorizations.append(auth)
        if auth.removeprefix("Bearer ") in self.refuse or auth == "":
            return httpx2.Response(401, json={"error": "invalid_token"})
        return httpx2.Response(200, json={"ok": True, "body": request.content.decode()})


def client(
    endpoint: TokenEndpoint, upstream: UpstreamSeen, clock: Clock, learned: list[str]
) -> httpx2.AsyncClient:
    auth = ClientCredentialsAuth(
        SETTINGS, learned.append, transport=httpx2.MockTransport(endpoint.handle), clock=clock
    )
    return capped_http_client({}, 5.0, 1 << 20, httpx2.MockTransport(upstream.handle), auth=auth)


async def test_a_token_is_fetched_once_reused_and_renewed_before_it_expires() -> None:
    endpoint, upstream, clock, learned = TokenEndpoint(), UpstreamSeen(), Clock(), []
    async with client(endpoint, upstream, clock, learned) as http:
        for _ in range(3):
            assert (await http.post("https://billing.example.test/mcp", content=b"{}")).status_code == 200
        clock.now += 239  # 300 s token, renewed 60 s before it ends
        await http.post("https://billing.example.test/mcp", content=b"{}")
        clock.now += 2
        await http.post("https://billing.example.test/mcp", content=b"{}")
    assert upstream.authorizations == ["Bearer tok-1-abcdefgh"] * 4 + ["Bearer tok-2-abcdefgh"]
    assert learned == ["tok-1-abcdefgh", "tok-2-abcdefgh"]
    assert endpoint.forms[0] == {
        "grant_type": "client_credentials",
        "scope": "billing:write",
        "resource": "https://billing.example.test/mcp",
    }
    # client_secret_basic: each part form-encoded (RFC 6749 2.3.1)
    assert endpoint.basic[0] == "guard-billing:s3cret%2Fwith%3Aodd%20chars"


async def test_a_401_gets_one_new_token_and_one_retry_with_the_same_body() -> None:
    endpoint, upstream, clock, learned = TokenEndpoint(), UpstreamSeen(refuse={"tok-1-abcdefgh"}), Clock(), []
    async with client(endpoint, upstream, clock, learned) as http:
        response = await http.post("https://billing.example.test/mcp", content=b'{"id":1}')
        assert response.status_code == 200
        assert response.json()["body"] == '{"id":1}'
        upstream.refuse.add("tok-2-abcdefgh")
        upstream.refuse.add("tok-3-abcdefgh")
        assert (await http.post("https://billing.example.test/mcp", content=b"{}")).status_code == 401
    assert upstream.authorizations == [
        "Bearer tok-1-abcdefgh",
        "Bearer tok-2-abcdefgh",
        "Bearer tok-2-abcdefgh",
        "Bearer tok-3-abcdefgh",
    ]


@pytest.mark.parametrize(
    "answer",
    [
        httpx2.Response(401, json={"error": "invalid_client"}),
        httpx2.Response(200, content=b"not json"),
        httpx2.Response(200, json={"token_type": "Bearer"}),
        httpx2.Response(200, json={"access_token": "x\r\nX-Evil: 1", "token_type": "Bearer"}),
        httpx2.Response(200, json={"access_token": "abcdefgh", "token_type": "mac"}),
        httpx2.Response(200, json={"access_token": "a" * 20000, "token_type": "Bearer"}),
        httpx2.Response(200, content=b"{" + b" " * (70 * 1024) + b"}"),
        httpx2.Response(200, content=gzip.compress(b"{}"), headers={"content-encoding": "gzip"}),
    ],
)
async def test_a_refused_token_answer_sends_nothing_upstream(answer: httpx2.Response) -> None:
    endpoint, upstream, learned = TokenEndpoint(answers=[answer]), UpstreamSeen(), []
    async with client(endpoint, upstream, Clock(), learned) as http:
        with pytest.raises(TokenUnavailable):
            await http.post("https://billing.example.test/mcp", content=b"{}")
    assert upstream.authorizations == []


async def test_a_token_endpoint_that_cannot_be_reached_is_token_unavailable() -> None:
    def down(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused")

    upstream = UpstreamSeen()
    auth = ClientCredentialsAuth(SETTINGS, lambda _: None, transport=httpx2.MockTransport(down))
    async with capped_http_client({}, 5.0, 1 << 20, httpx2.MockTransport(upstream.handle), auth=auth) as http:
        with pytest.raises(TokenUnavailable, match="ConnectError"):
            await http.get("https://billing.example.test/mcp")
    assert upstream.authorizations == []


async def test_expires_in_missing_or_absurd_means_five_minutes() -> None:
    for expires in (None, -5, "300", True, 1e12):
        answer = {"access_token": "abcdefgh", "token_type": "bearer", "expires_in": expires}
        endpoint, clock = TokenEndpoint(answers=[answer]), Clock()
        auth = ClientCredentialsAuth(
            SETTINGS, lambda _: None, transport=httpx2.MockTransport(endpoint.handle), clock=clock
        )
        assert await auth.current() == "abcdefgh"
        assert auth.renew_at == clock.now + 240


def test_manifest_rules_for_upstream_auth() -> None:
    good = {"url": "https://b.test/mcp", "auth": {"client_credentials": SETTINGS.model_dump(mode="python")}}
    good["auth"]["client_credentials"]["client_secret"] = "s3cret-value"
    assert Upstream.model_validate(good).auth is not None
    bad_cases = [
        ({"command": "x", "url": None}, "auth go with url"),
        ({"headers": {"Authorization": "Bearer x"}}, "Authorization header"),
    ]
    for changes, fragment in bad_cases:
        with pytest.raises(ValueError, match=fragment):
            Upstream.model_validate(good | changes)
    for cc_changes, fragment in [
        ({"token_url": "http://login.example.test/token"}, "https"),
        ({"resource": "https://b.test/mcp#frag"}, "fragment"),
        ({"scope": "a\\b"}, "scope"),
        ({"auth_method": "private_key_jwt"}, "auth_method"),
    ]:
        cc = good["auth"]["client_credentials"] | cc_changes
        with pytest.raises(ValueError, match=fragment):
            Upstream.model_validate(good | {"auth": {"client_credentials": cc}})


def test_a_learned_token_is_scrubbed_everywhere_a_secret_is_and_only_the_latest_are_kept() -> None:
    import base64 as b64

    from mcp_guard.secrets import MAX_LEARNED, REDACTED, Scrubber

    scrubber = Scrubber(["static-secret-value"])
    token = "tok+en/with=odd-chars-0123456789"
    scrubber.learn(token)
    assert scrubber.text(f"a {token} b") == f"a {REDACTED} b"
    assert (
        scrubber.text("x" + token.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"))
        == "x" + REDACTED
    )
    assert scrubber.texts(["one " + token[:10], token[10:] + " two"]) == [
        "one " + REDACTED,
        REDACTED + " two",
    ]
    assert scrubber.json({"k": [token]}) == {"k": [REDACTED]}
    blob = b64.b64encode(b"\x00\x01" + token.encode()).decode()
    assert token.encode() not in b64.b64decode(scrubber.binary(blob))
    assert scrubber.flags(f"opaque {token}")
    assert token not in scrubber.record(f"opaque {token}")
    assert scrubber.text("static-secret-value") == REDACTED  # the policy's secrets stay
    for n in range(MAX_LEARNED):
        scrubber.learn(f"later-token-{n:04d}")
    assert scrubber.text(token) == token  # the oldest fell out (it expired long ago)
    assert scrubber.text("later-token-0015") == REDACTED
