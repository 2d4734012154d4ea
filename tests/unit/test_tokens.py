"""identity/tokens.py as tables: HS256 tokens issued and verified with PyJWT, and every way a
forged, stale, confused or oversized token is refused with a reason (a value, never an exception)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from mcp_guard.config import GuardConfig, TokensConfig
from mcp_guard.identity.base import Refusal
from mcp_guard.identity.tokens import SignedTokens, issue_token, verify_token
from mcp_guard.policy.engine import Agent, Policy
from tests.unit.identity_fixtures import (
    AGENTS,
    NOW,
    OTHER_KEY,
    POLICY,
    ROSTER,
    SIGNING_KEY,
    TOKENS,
    b64,
    claims,
    forge,
)


def refused(result: Agent | Refusal) -> str:
    assert isinstance(result, Refusal), result
    assert not result.not_mine
    assert result.status == 401
    return result.problem


def test_an_issued_token_verifies_and_carries_the_claims_the_spec_lists() -> None:
    token, issued = issue_token(TOKENS, "finance-bot", 900, NOW)
    assert set(issued) == {"sub", "aud", "iat", "exp", "jti"}
    assert (issued["sub"], issued["aud"], issued["exp"] - issued["iat"]) == ("finance-bot", "mcp-guard", 900)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert verify_token(token, TOKENS, ROSTER, NOW + 899) == Agent("finance-bot", frozenset({"finance"}))


def test_an_issued_token_is_a_standard_jwt_any_library_can_check() -> None:
    token, issued = issue_token(TOKENS, "support-bot", 900, NOW)
    decoded = jwt.decode(
        token,
        SIGNING_KEY,
        algorithms=["HS256"],
        audience="mcp-guard",
        options={"verify_exp": False, "verify_iat": False},  # NOW is in the future
    )
    assert decoded == issued


def test_two_issued_tokens_have_distinct_ids() -> None:
    assert (
        issue_token(TOKENS, "support-bot", 60, NOW)[1]["jti"]
        != issue_token(TOKENS, "support-bot", 60, NOW)[1]["jti"]
    )


def _tamper_signature(token: str) -> str:
    head, body, sig = token.split(".")
    return f"{head}.{body}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"


def _swap_payload(token: str) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{b64(json.dumps(claims(sub='finance-bot')).encode())}.{sig}"


def _noncanonical_signature(token: str) -> str:
    head, body, sig = token.split(".")
    # The last base64url character of a 32-byte signature carries 2 unused bits: flip one.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(sig[-1]) ^ 1]
    return f"{head}.{body}.{sig[:-1]}{last}"


def _huge() -> str:
    return forge(claims(pad="x" * 5000))


REFUSED: list[tuple[str, Callable[[], str], str]] = [
    ("expired", lambda: forge(claims(iat=int(NOW) - 900, exp=int(NOW))), "expired"),
    ("expired beyond the skew", lambda: forge(claims(iat=int(NOW) - 900, exp=int(NOW) - 31)), "expired"),
    ("another audience", lambda: forge(claims(aud="another-guard")), "audience"),
    ("audience list without ours", lambda: forge(claims(aud=["a", "b"])), "audience"),
    ("audience list with a non-string", lambda: forge(claims(aud=["mcp-guard", 5])), "audience"),
    ("audience not a string", lambda: forge(claims(aud=5)), "audience"),
    ("no audience", lambda: forge(claims(aud=None)), "audience"),
    ("empty audience", lambda: forge(claims(aud="")), "audience"),
    ("signed with another key", lambda: forge(claims(), key="k" * 40), "signature"),
    ("signed with an empty key", lambda: forge(claims(), key=""), "signature"),
    ("tampered signature", lambda: _tamper_signature(forge(claims())), "signature"),
    ("payload swapped", lambda: _swap_payload(forge(claims())), "signature"),
    ("non-canonical signature", lambda: _noncanonical_signature(forge(claims())), "signature"),
    (
        "alg none, no signature",
        lambda: forge(claims(), header={"alg": "none"}).rsplit(".", 1)[0] + ".",
        "JWS",
    ),
    ("alg none, with signature", lambda: forge(claims(), header={"alg": "none", "typ": "JWT"}), "algorithm"),
    ("alg None spelled otherwise", lambda: forge(claims(), header={"alg": "None"}), "algorithm"),
    ("alg hs256 in lower case", lambda: forge(claims(), header={"alg": "hs256"}), "algorithm"),
    ("alg HS512", lambda: forge(claims(), header={"alg": "HS512"}), "algorithm"),
    (
        "alg HS512 truly signed with our key",
        lambda: forge(claims(), header={"alg": "HS512"}, digest=hashlib.sha512),
        "algorithm",
    ),
    ("alg HS384", lambda: forge(claims(), header={"alg": "HS384"}, digest=hashlib.sha384), "algorithm"),
    ("alg RS256", lambda: forge(claims(), header={"alg": "RS256"}), "algorithm"),
    ("alg ES256", lambda: forge(claims(), header={"alg": "ES256"}), "algorithm"),
    ("alg missing", lambda: forge(claims(), header={"typ": "JWT"}), "algorithm"),
    ("alg a list", lambda: forge(claims(), header={"alg": ["HS256"]}), "algorithm"),
    ("typ not JWT", lambda: forge(claims(), header={"alg": "HS256", "typ": "at+jwt+x"}), "header"),
    ("critical header", lambda: forge(claims(), header={"alg": "HS256", "crit": ["exp"]}), "header"),
    (
        "unencoded payload (b64 false)",
        lambda: forge(claims(), header={"alg": "HS256", "b64": False}),
        "refused",
    ),
    ("kid not a string", lambda: forge(claims(), header={"alg": "HS256", "kid": 7}), "refused"),
    ("header not an object", lambda: forge(claims(), header=["HS256"]), "algorithm"),
    (
        "duplicate alg in the header",
        lambda: forge(claims(), raw_header='{"alg":"none","alg":"HS256"}'),
        "header is malformed",
    ),
    (
        "duplicate alg in the header, HS256 first",
        lambda: forge(claims(), raw_header='{"alg":"HS256","alg":"none"}'),
        "header is malformed",
    ),
    ("header not JSON", lambda: forge(claims(), raw_header="alg=HS256"), "header is malformed"),
    ("iat far in the future", lambda: forge(claims(iat=int(NOW) + 300, exp=int(NOW) + 900)), "not valid yet"),
    (
        "iat just beyond the skew",
        lambda: forge(claims(iat=int(NOW) + 31, exp=int(NOW) + 900)),
        "not valid yet",
    ),
    ("nbf in the future", lambda: forge(claims(nbf=int(NOW) + 300)), "not valid yet"),
    ("lifetime over max_ttl", lambda: forge(claims(exp=int(NOW) + 7200)), "max_ttl"),
    ("lifetime just over max_ttl and skew", lambda: forge(claims(exp=int(NOW) + 3631)), "max_ttl"),
    ("exp missing", lambda: forge(claims(exp=None)), "exp"),
    ("exp a string", lambda: forge(claims(exp=str(int(NOW) + 900))), "exp"),
    ("exp a boolean", lambda: forge(claims(exp=True)), "exp"),
    ("exp NaN", lambda: forge({}, raw=json.dumps(claims()).replace(f"{int(NOW) + 900}", "NaN")), "malformed"),
    (
        "exp beyond a double",
        lambda: forge({}, raw=json.dumps(claims()).replace(f"{int(NOW) + 900}", "1e999")),
        "malformed",
    ),
    ("iat missing", lambda: forge(claims(iat=None)), "iat"),
    ("jti missing", lambda: forge(claims(jti=None)), "jti"),
    ("jti empty", lambda: forge(claims(jti="")), "jti"),
    ("jti not a string", lambda: forge(claims(jti=7)), "jti"),
    ("sub missing", lambda: forge(claims(sub=None)), "sub"),
    ("unknown agent", lambda: forge(claims(sub="ghost-bot")), "unknown agent"),
    ("agent named in another case", lambda: forge(claims(sub="Support-Bot")), "unknown agent"),
    ("subject not a string", lambda: forge(claims(sub=["support-bot"])), "unknown agent"),
    ("claims not an object", lambda: forge({}, raw='["support-bot"]'), "not an object"),
    ("claims not JSON", lambda: forge({}, raw="sub=support-bot"), "malformed"),
    (
        "duplicate sub claim",
        lambda: forge(
            {}, raw='{"sub":"finance-bot","sub":"support-bot","aud":"mcp-guard","iat":1,"exp":2,"jti":"x"}'
        ),
        "malformed",
    ),
    ("two parts", lambda: ".".join(forge(claims()).split(".")[:2]), "JWS"),
    ("four parts", lambda: forge(claims()) + ".x", "JWS"),
    ("padding in base64", lambda: forge(claims()) + "=", "signature"),
    ("padding in the claims", lambda: forge(claims()).replace(".", "=.", 2).replace("=.", ".", 1), "claims"),
    ("not base64", lambda: "e30!.e30.e30", "header"),
    ("a huge token", _huge, "too long"),
]


@pytest.mark.parametrize(("case", "make", "problem"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_token_that_fails_any_check_is_refused_with_a_reason(
    case: str, make: Callable[[], str], problem: str
) -> None:
    assert problem in refused(verify_token(make(), TOKENS, ROSTER, NOW))


def test_a_token_is_refused_when_guard_yaml_has_no_tokens_section() -> None:
    assert "tokens" in refused(verify_token(forge(claims()), None, ROSTER, NOW))


@pytest.mark.parametrize(
    ("changes", "at"),
    [
        ({}, NOW),
        ({"aud": ["other", "mcp-guard"]}, NOW),
        ({"iat": int(NOW) + 20, "exp": int(NOW) + 900}, NOW),  # within the clock skew
        ({"iat": int(NOW) + 30, "exp": int(NOW) + 900}, NOW),
        ({"exp": int(NOW) + 3630}, NOW),  # max_ttl and the skew, exactly
        ({"nbf": int(NOW) - 5}, NOW),
        ({}, NOW + 899.999),
    ],
)
def test_a_well_formed_token_within_its_window_is_accepted(changes: dict[str, Any], at: float) -> None:
    assert verify_token(forge(claims(**changes)), TOKENS, ROSTER, at) == ROSTER["support-bot"]


def test_a_token_is_refused_from_the_second_it_expires() -> None:
    assert "expired" in refused(verify_token(forge(claims()), TOKENS, ROSTER, NOW + 900))


def test_a_token_checks_the_audience_the_config_names() -> None:
    tokens = TokensConfig.model_validate({"signing_key": SIGNING_KEY, "audience": "guard-eu"})
    token, _ = issue_token(tokens, "support-bot", 60, NOW)
    assert verify_token(token, tokens, ROSTER, NOW) == ROSTER["support-bot"]
    assert "audience" in refused(verify_token(token, TOKENS, ROSTER, NOW))


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "typ": "JWT", "kid": "attacker"},
        {"alg": "HS256", "jku": "https://attacker.example/jwks.json"},
        {"alg": "HS256", "x5u": "https://attacker.example/cert.pem"},
        {"alg": "HS256", "jwk": {"kty": "oct", "k": b64(OTHER_KEY.encode())}},
    ],
)
def test_key_hints_in_a_header_are_never_fetched_nor_used(
    header: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the verifier reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    # Signed with the key the header points to: the signature is checked with ours only.
    assert "signature" in refused(
        verify_token(forge(claims(), header=header, key=OTHER_KEY), TOKENS, ROSTER, NOW)
    )
    # Signed with ours: the hint changes nothing.
    assert verify_token(forge(claims(), header=header), TOKENS, ROSTER, NOW) == ROSTER["support-bot"]


async def test_a_token_stops_working_once_its_agent_is_removed_from_guard_yaml() -> None:
    token, _ = issue_token(TOKENS, "support-bot", 600, NOW)
    policies = [POLICY]
    verifier = SignedTokens(lambda: policies[-1], clock=lambda: NOW)
    assert await verifier.authenticate(token) == Agent("support-bot", frozenset({"support"}))
    without = {name: agent for name, agent in AGENTS.items() if name != "support-bot"}
    policies.append(Policy(GuardConfig(agents=without, tokens=TOKENS), []))
    assert "unknown agent" in refused(await verifier.authenticate(token))


async def test_a_rotated_signing_key_ends_every_earlier_token() -> None:
    token, _ = issue_token(TOKENS, "support-bot", 600, NOW)
    rotated = TokensConfig.model_validate({"signing_key": OTHER_KEY, "max_ttl": "1h"})
    policy = Policy(GuardConfig(agents=AGENTS, tokens=rotated), [])
    assert "signature" in refused(await SignedTokens(lambda: policy, clock=lambda: NOW).authenticate(token))


async def test_the_token_authenticator_reads_the_clock_on_every_credential() -> None:
    now = [NOW]
    verifier = SignedTokens(lambda: POLICY, clock=lambda: now[0])
    token = forge(claims())
    assert await verifier.authenticate(token) == ROSTER["support-bot"]
    now[0] = NOW + 900
    assert "expired" in refused(await verifier.authenticate(token))
