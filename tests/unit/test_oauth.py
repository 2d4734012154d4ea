"""Every refusal of an authorization server's access token, with keys generated here: the checks
on the token (signature, algorithm, key type, iss, aud, times, scope, jti, subject, revocation),
key discovery and caching (rotation, an unknown kid, the issuer unreachable), and the adversarial
inputs (malformed and huge tokens, weird JWKS, metadata that points elsewhere)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mcp_guard.config import AgentConfig, GuardConfig, OAuthConfig
from mcp_guard.identity.base import MAX_CREDENTIAL_CHARS, Refusal
from mcp_guard.identity.jwks import MAX_DOCUMENT_BYTES, IssuerKeys, discovery_urls, lifetime, parse_jwks
from mcp_guard.identity.oauth import granted_scopes, metadata_url, protected_resource_metadata
from mcp_guard.policy.engine import Agent, Policy
from tests.unit.oauth_fixtures import (
    AGENTS,
    ISSUER,
    NOW,
    OAUTH,
    POLICY,
    RESOURCE,
    Clock,
    Issuer,
    b64,
    claims,
    ec_key,
    forge_hs256_with_public_key,
    public_jwk,
    unsigned,
    verifier,
)


@pytest.fixture(scope="module")
def issuer_keys() -> dict[str, Any]:
    return {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture
def issuer(issuer_keys: dict[str, Any]) -> Issuer:
    return Issuer(keys=dict(issuer_keys))


def refused(result: Agent | Refusal, fragment: str, status: int = 401) -> Refusal:
    assert isinstance(result, Refusal), result
    assert fragment in result.problem
    assert result.status == status
    assert not result.not_mine
    return result


async def test_a_valid_token_proves_the_agent_its_subject_is_listed_under() -> None:
    issuer = Issuer(keys={"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)})
    agent = await verifier(issuer).authenticate(issuer.sign("k1"))
    assert agent == POLICY.agents["support-bot"]
    assert isinstance(agent, Agent)
    assert agent.credential == "oauth:support-client:jti-1"
    assert issuer.fetches == [
        "https://login.example.test/realms/agents/.well-known/openid-configuration",
        "https://login.example.test/jwks",
    ]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"aud": "https://other.example.test"}, "another audience"),
        ({"aud": [f"{RESOURCE}/"]}, "another audience"),
        ({"aud": None}, "another audience"),
        ({"iss": "https://evil.example.test"}, "another issuer"),
        ({"iss": ISSUER + "/"}, "another issuer"),
        ({"exp": int(NOW)}, "expired"),
        ({"exp": None}, "lacks the `exp` claim"),
        ({"exp": str(int(NOW) + 600)}, "not a number"),
        ({"nbf": "0"}, "not a number"),
        ({"nbf": int(NOW) + 31}, "not valid yet"),
        ({"iat": int(NOW) + 31}, "not valid yet"),
        ({"jti": None}, "lacks the `jti` claim"),
        ({"jti": ""}, "`jti`"),
        ({"jti": "j" * 257}, "`jti`"),
        ({"client_id": None}, "`client_id` claim"),
        ({"client_id": ["support-client"]}, "`client_id` claim"),
    ],
)
async def test_a_token_that_fails_a_claim_check_is_refused_401(
    issuer: Issuer, changes: dict[str, Any], fragment: str
) -> None:
    refused(await verifier(issuer).authenticate(issuer.sign("k1", **changes)), fragment)


async def test_clock_skew_of_30_seconds_is_allowed_for_nbf_and_iat_but_not_for_exp(issuer: Issuer) -> None:
    check = verifier(issuer)
    assert isinstance(
        await check.authenticate(issuer.sign("k1", nbf=int(NOW) + 30, iat=int(NOW) + 30)), Agent
    )
    refused(await check.authenticate(issuer.sign("k1", exp=int(NOW) - 1)), "expired")


async def test_a_token_without_the_scope_gets_403_insufficient_scope_naming_the_scopes(
    issuer: Issuer,
) -> None:
    for scope in ({"scope": "openid"}, {"scope": None}, {"scope": "mcp:tools2"}, {"scope": "MCP:TOOLS"}):
        refusal = refused(await verifier(issuer).authenticate(issuer.sign("k1", **scope)), "scope", 403)
        assert (refusal.error, refusal.scope) == ("insufficient_scope", "mcp:tools")
        assert 'error="insufficient_scope"' in refusal.challenge("r", "https://m", "x")
        assert 'scope="mcp:tools"' in refusal.challenge("r", "https://m", "x")
    # Providers that write `scp` (a list) are read too.
    assert isinstance(
        await verifier(issuer).authenticate(issuer.sign("k1", scope=None, scp=["mcp:tools"])), Agent
    )


async def test_a_subject_listed_under_no_agent_or_under_two_gets_403(issuer: Issuer) -> None:
    for subject in ("stranger", "twice", "SUPPORT-CLIENT"):
        refusal = refused(
            await verifier(issuer).authenticate(issuer.sign("k1", client_id=subject)), "listed", 403
        )
        assert refusal.error is None


async def test_a_revoked_token_id_is_refused(issuer: Issuer) -> None:
    refused(await verifier(issuer, revoked={"jti-1"}).authenticate(issuer.sign("k1")), "revoked")


async def test_alg_none_and_hs256_signed_with_the_rsa_public_key_are_refused(issuer: Issuer) -> None:
    check = verifier(issuer)
    for header in ({"alg": "none"}, {"alg": "None", "kid": "k1"}, {"alg": "HS256", "kid": "k1"}):
        refused(await check.authenticate(unsigned(header, claims())), "algorithm")
    refused(await check.authenticate(forge_hs256_with_public_key(issuer, "k1")), "algorithm 'HS256'")
    # An algorithm outside the pinned list, even an asymmetric one the key could do.
    refused(await check.authenticate(issuer.sign("k1", alg="RS512")), "algorithm 'RS512'")
    assert issuer.jwks_fetches <= 1


async def test_a_key_only_verifies_its_own_algorithm_family(issuer: Issuer) -> None:
    issuer.rotate("ec1", ec_key())
    check = verifier(issuer)
    assert isinstance(await check.authenticate(issuer.sign("ec1", alg="ES256")), Agent)
    # An RS256 token naming the EC key's kid (and the reverse) finds no key that fits.
    forged = issuer.sign("k1", alg="RS256").split(".")
    header = b64(json.dumps({"alg": "RS256", "kid": "ec1"}).encode())
    refused(await check.authenticate(f"{header}.{forged[1]}.{forged[2]}"), "no key of the issuer fits")
    refused(await check.authenticate(issuer.sign("ec1", alg="ES256", header={"kid": "k1"})), "no key of the")


async def test_a_tampered_signature_or_body_is_refused(issuer: Issuer) -> None:
    head, body, signature = issuer.sign("k1").split(".")
    other = b64(json.dumps(claims(client_id="finance-client")).encode())
    refused(await verifier(issuer).authenticate(f"{head}.{other}.{signature}"), "signature")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    refused(await verifier(issuer).authenticate(f"{head}.{body}.{flipped}"), "")


async def test_an_unknown_kid_refetches_at_most_once_per_30_seconds(issuer: Issuer) -> None:
    clock = Clock()
    check = verifier(issuer, clock)
    assert isinstance(await check.authenticate(issuer.sign("k1")), Agent)
    assert issuer.jwks_fetches == 1
    clock.now += 31
    stranger = Issuer(keys={"k9": rsa.generate_private_key(public_exponent=65537, key_size=2048)})
    for _ in range(5):
        refused(await check.authenticate(stranger.sign("k9")), "no key of the issuer fits")
    assert issuer.jwks_fetches == 2  # one refetch for the unknown kid, then none within 30 s
    clock.now += 31
    refused(await check.authenticate(stranger.sign("k9")), "no key")
    assert issuer.jwks_fetches == 3


async def test_key_rotation_new_kid_is_fetched_and_a_removed_key_stops_working(issuer: Issuer) -> None:
    clock = Clock()
    check = verifier(issuer, clock)
    old = issuer.sign("k1")
    assert isinstance(await check.authenticate(old), Agent)
    clock.now += 31
    issuer.rotate("k2")
    assert isinstance(await check.authenticate(issuer.sign("k2", jti="jti-2")), Agent)
    del issuer.keys["k1"]
    assert isinstance(await check.authenticate(old), Agent)  # cached until the JWKS expires
    clock.now += 601
    refused(await check.authenticate(old), "no key")
    assert isinstance(await check.authenticate(issuer.sign("k2", jti="jti-3")), Agent)


async def test_the_issuer_unreachable_cached_keys_keep_working_new_ones_are_refused(issuer: Issuer) -> None:
    clock, logged = Clock(), []
    check = verifier(issuer, clock, logged=logged)
    assert isinstance(await check.authenticate(issuer.sign("k1")), Agent)
    issuer.down = True
    clock.now += 3600 * 5  # long past the cache's lifetime
    assert isinstance(await check.authenticate(issuer.sign("k1", jti="jti-2")), Agent)
    issuer.rotate("k2")
    refused(await check.authenticate(issuer.sign("k2")), "no key")
    assert any("cannot fetch the issuer's keys" in line for line in logged)


async def test_an_issuer_never_reached_refuses_every_token(issuer: Issuer) -> None:
    issuer.down = True
    refused(await verifier(issuer).authenticate(issuer.sign("k1")), "no key")


async def test_discovery_falls_back_to_rfc_8414_and_refuses_metadata_naming_another_issuer(
    issuer: Issuer,
) -> None:
    issuer.oidc = False
    assert isinstance(await verifier(issuer).authenticate(issuer.sign("k1")), Agent)
    assert discovery_urls(ISSUER)[1] in issuer.fetches
    bad_documents: list[dict[str, Any]] = [
        {"issuer": "https://evil.example.test", "jwks_uri": "https://login.example.test/jwks"},
        {"issuer": ISSUER, "jwks_uri": "http://evil.example.test/jwks"},
        {"issuer": ISSUER, "jwks_uri": "http://127.0.0.1/jwks"},  # an https issuer's keys over http
        {"issuer": ISSUER, "jwks_uri": "file:///etc/passwd"},
        {"issuer": ISSUER},
    ]
    for metadata in bad_documents:
        bad, logged = Issuer(keys=issuer.keys, metadata=metadata), []
        refused(await verifier(bad, logged=logged).authenticate(bad.sign("k1")), "no key")
        assert not any(url.startswith("http://") for url in bad.fetches)
        assert logged


def test_weird_jwks_keys_are_skipped_and_a_kid_published_twice_is_never_used() -> None:
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(good))
    logged: list[str] = []
    keys = parse_jwks(
        {
            "keys": [
                public_jwk(good, "good"),
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                private | {"kid": "private"},
                public_jwk(small, "small"),
                public_jwk(good, "enc", use="enc"),
                public_jwk(good, "dup"),
                public_jwk(good, "dup"),
                public_jwk(good, "hs", alg="HS256"),
                {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
                {"kty": "EC", "kid": "curve", "crv": "P-192", "x": "AA", "y": "AA"},
                public_jwk(good, 7),  # type: ignore[arg-type]
                "not a key",
            ]
        },
        logged.append,
    )
    assert list(keys) == ["good"]
    assert len(logged) == 10
    for document in ({}, {"keys": {}}, [], "x"):
        with pytest.raises(Exception, match="keys"):
            parse_jwks(document, logged.append)


async def test_a_huge_or_malformed_jwks_is_refused_and_the_cached_keys_stay(issuer: Issuer) -> None:
    clock, logged = Clock(), []
    check = verifier(issuer, clock, logged=logged)
    assert isinstance(await check.authenticate(issuer.sign("k1")), Agent)
    issuer.extra_jwks = [{"kty": "RSA", "pad": "x" * MAX_DOCUMENT_BYTES}]
    clock.now += 601
    assert isinstance(await check.authenticate(issuer.sign("k1", jti="jti-2")), Agent)
    assert any("larger than" in line for line in logged)


@pytest.mark.parametrize(
    "token",
    [
        "a.b",
        "a.b.c.d",
        "e30.e30.",
        b64(b'{"alg":"RS256","alg":"none"}') + "." + b64(b"{}") + ".x",
        b64(b'{"alg":"RS256","crit":["exp"],"kid":"k1"}')
        + "."
        + b64(json.dumps(claims()).encode())
        + ".AAAA",
        b64(b'{"alg":"RS256","typ":"JWE","kid":"k1"}') + "." + b64(json.dumps(claims()).encode()) + ".AAAA",
        b64(b'{"alg":"RS256","kid":""}') + "." + b64(json.dumps(claims()).encode()) + ".AAAA",
        b64(b'{"alg":"RS256","kid":"k1"}') + "." + b64(b'{"iss":NaN}') + ".AAAA",
        b64(b'{"alg":"RS256","kid":"k1"}') + "==." + b64(json.dumps(claims()).encode()) + ".AAAA",
        b64(b'{"alg":"RS256","kid":"k1","x":"' + b"y" * MAX_CREDENTIAL_CHARS + b'"}') + ".e30.AAAA",
    ],
)
async def test_malformed_and_huge_tokens_are_refused_without_a_key_fetch(issuer: Issuer, token: str) -> None:
    result = await verifier(issuer).authenticate(token)
    assert isinstance(result, Refusal)
    assert issuer.jwks_fetches == 0


async def test_the_guards_own_hs256_tokens_are_not_the_oauth_checks_and_nothing_without_oauth_is(
    issuer: Issuer,
) -> None:
    from mcp_guard.identity.tokens import issue_token

    assert POLICY.config.tokens is not None
    own, _ = issue_token(POLICY.config.tokens, "support-bot", 600, NOW)
    assert (await verifier(issuer).authenticate(own)).not_mine  # type: ignore[union-attr]
    assert (await verifier(issuer).authenticate("mcpg_key")).not_mine  # type: ignore[union-attr]
    without = Policy(GuardConfig(agents=AGENTS), [])
    assert (await verifier(issuer, policy=without).authenticate(issuer.sign("k1"))).not_mine  # type: ignore[union-attr]


def test_cache_lifetime_follows_cache_control_within_30_seconds_and_an_hour() -> None:
    assert [
        lifetime(v)
        for v in (
            None,
            "max-age=600",
            "public, max-age=86400",
            "max-age=1",
            "no-store",
            "max-age=x",
            "s-maxage=5",
        )
    ] == [300.0, 600.0, 3600.0, 30.0, 30.0, 300.0, 300.0]


def test_the_metadata_document_and_its_url() -> None:
    assert metadata_url(RESOURCE) == "https://guard.example.test/.well-known/oauth-protected-resource/mcp"
    assert metadata_url("https://g.test") == "https://g.test/.well-known/oauth-protected-resource"
    assert protected_resource_metadata(OAUTH) == {
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["mcp:tools"],
        "bearer_methods_supported": ["header"],
        "resource_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    }
    assert granted_scopes({"scope": "a  b", "scp": ["c", 5]}) == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"issuer": "http://login.example.test"}, "https"),
        ({"issuer": "http://127.0.0.1.evil.test"}, "https"),
        ({"issuer": "https://user:pw@login.example.test"}, "user"),
        ({"issuer": "ftp://login.example.test"}, "https"),
        ({"resource": "https://g.test/mcp#x"}, "fragment"),
        ({"resource": 'https://g.test/m"cp'}, "quotes"),
        ({"resource": "https://g.test/mcp\r\nX-Evil: 1"}, "quotes"),
        ({"algorithms": ["HS256"]}, "algorithms"),
        ({"algorithms": ["none"]}, "algorithms"),
        ({"algorithms": []}, "at least one"),
        ({"scopes": ["a b"]}, "scopes"),
        ({"agent_claim": "a b"}, "agent_claim"),
    ],
)
def test_oauth_config_refuses_what_would_weaken_it(changes: dict[str, Any], fragment: str) -> None:
    base = {"issuer": ISSUER, "resource": RESOURCE}
    with pytest.raises(ValueError, match=fragment):
        OAuthConfig.model_validate(base | changes)
    # Loopback issuers may be plain http (a provider on this very machine).
    assert OAuthConfig.model_validate(base | {"issuer": "http://127.0.0.1:9/x"}).issuer.startswith("http:")
    assert AgentConfig(subjects=("a",)).subjects == ("a",)


async def test_one_key_fetch_serves_callers_that_arrive_together(issuer: Issuer) -> None:
    import anyio

    check = verifier(issuer)
    token = issuer.sign("k1")
    results: list[Any] = []

    async def one() -> None:
        results.append(await check.authenticate(token))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert all(isinstance(r, Agent) for r in results)
    assert issuer.jwks_fetches == 1


async def test_a_kidless_token_uses_the_one_key_that_fits(issuer: Issuer) -> None:
    assert isinstance(await verifier(issuer).authenticate(issuer.sign(None)), Agent)
    issuer.rotate("k2")
    refused(await verifier(issuer).authenticate(issuer.sign(None)), "no key")


async def test_keys_from_an_explicit_jwks_uri_skip_discovery(issuer: Issuer) -> None:
    oauth = OAuthConfig(issuer=ISSUER, resource=RESOURCE, jwks_uri="https://login.example.test/jwks")
    keys = IssuerKeys(oauth, lambda _: None, transport=httpx2.MockTransport(issuer.handle), clock=Clock())
    assert await keys.find("k1", "RS256") is not None
    assert issuer.fetches == ["https://login.example.test/jwks"]


async def test_a_slow_refresh_holds_up_no_request_whose_key_is_cached(issuer: Issuer) -> None:
    import anyio

    clock, release = Clock(), anyio.Event()
    serve = issuer.handle

    async def slow(request: httpx2.Request) -> httpx2.Response:
        if issuer.jwks_fetches >= 1:
            await release.wait()
        return serve(request)

    keys = IssuerKeys(OAUTH, lambda _: None, transport=httpx2.MockTransport(slow), clock=clock)
    assert await keys.find("k1", "RS256") is not None
    clock.now += 601  # the cache has expired: the next look refreshes it
    async with anyio.create_task_group() as tg:
        tg.start_soon(keys.find, "k1", "RS256")
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(1):
            assert await keys.find("k1", "RS256") is not None  # served from the cache meanwhile
        release.set()
    assert issuer.jwks_fetches == 2


def test_check_warns_of_a_subject_under_two_agents_and_of_subjects_without_oauth() -> None:
    from mcp_guard.cli.tokens import oauth_warnings

    assert POLICY.config.oauth is not None
    [twice] = oauth_warnings(POLICY.config)
    assert "'twice' is listed under finance-bot, other-bot" in twice
    without = GuardConfig(agents=AGENTS)
    assert ["no `oauth` section" in w for w in oauth_warnings(without)] == [False, True]
    nobody = GuardConfig(agents={"a": AgentConfig()}, oauth=OAUTH)
    assert "no agent lists subjects" in oauth_warnings(nobody)[0]
    assert oauth_warnings(GuardConfig(agents={"a": AgentConfig()})) == []
