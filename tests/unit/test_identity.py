"""identity.py as tables: static keys and HS256 tokens, every refusal a value with a reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from mcp_guard.config import AgentConfig, TokensConfig
from mcp_guard.identity.base import (
    KEY_PREFIX,
    agent_for_key,
    authenticate,
    hash_key,
    issue_token,
    new_key,
    verify_token,
)

NOW = 1_800_000_000.0
SIGNING_KEY = "unit-test-signing-key-0123456789abcdef"
TOKENS = TokensConfig.model_validate({"signing_key": SIGNING_KEY, "max_ttl": "1h"})
SUPPORT_KEY = "mcpg_support-static-key-for-unit-tests"
FINANCE_KEY = "mcpg_finance-static-key-for-unit-tests"
AGENTS = {
    "support-bot": AgentConfig(roles=("support",), keys=(hash_key(SUPPORT_KEY),)),
    "finance-bot": AgentConfig(roles=("finance",), keys=(hash_key(FINANCE_KEY), hash_key("mcpg_second"))),
    "keyless-bot": AgentConfig(roles=("support",)),
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    claims: dict[str, Any],
    *,
    header: dict[str, Any] | None = None,
    key: str = SIGNING_KEY,
    raw: str | None = None,
) -> str:
    """A token built by hand (not by issue_token), so the verifier is checked against the format."""
    head = b64(json.dumps(header if header is not None else {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(raw.encode() if raw is not None else json.dumps(claims).encode())
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def claims(**changes: Any) -> dict[str, Any]:
    base = {"sub": "support-bot", "aud": "mcp-guard", "iat": int(NOW), "exp": int(NOW) + 900, "jti": "j-1"}
    return {k: v for k, v in (base | changes).items() if v is not None}


# -- static keys ---------------------------------------------------------------------------------


def test_new_keys_are_random_prefixed_and_hash_to_the_guard_yaml_form() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert len(key) >= 40
        assert "." not in key
        assert hash_key(key) == "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@pytest.mark.parametrize(
    ("key", "agent"),
    [
        (SUPPORT_KEY, "support-bot"),
        (FINANCE_KEY, "finance-bot"),
        ("mcpg_second", "finance-bot"),
        ("mcpg_unknown", None),
        (SUPPORT_KEY.upper(), None),
        (SUPPORT_KEY + " ", None),
        (hash_key(SUPPORT_KEY), None),  # the hash itself is not a key
        ("", None),
    ],
)
def test_a_key_names_the_agent_whose_hash_it_matches_and_nothing_else(key: str, agent: str | None) -> None:
    assert agent_for_key(key, AGENTS) == agent


# -- tokens --------------------------------------------------------------------------------------


def test_an_issued_token_verifies_and_carries_the_claims_the_spec_lists() -> None:
    token, issued = issue_token(TOKENS, "finance-bot", 900, NOW)
    assert set(issued) == {"sub", "aud", "iat", "exp", "jti"}
    assert (issued["sub"], issued["aud"], issued["exp"] - issued["iat"]) == ("finance-bot", "mcp-guard", 900)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    verdict = verify_token(token, TOKENS, AGENTS, NOW + 899)
    assert verdict.accepted
    assert verdict.agent == "finance-bot"


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


REFUSED: list[tuple[str, Callable[[], str], str]] = [
    ("expired", lambda: forge(claims(iat=int(NOW) - 900, exp=int(NOW))), "expired"),
    ("another audience", lambda: forge(claims(aud="another-guard")), "audience"),
    ("audience list without ours", lambda: forge(claims(aud=["a", "b"])), "audience"),
    ("no audience", lambda: forge(claims(aud=None)), "audience"),
    ("signed with another key", lambda: forge(claims(), key="k" * 40), "signature"),
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
    ("alg HS512", lambda: forge(claims(), header={"alg": "HS512"}), "algorithm"),
    ("alg RS256", lambda: forge(claims(), header={"alg": "RS256"}), "algorithm"),
    ("alg missing", lambda: forge(claims(), header={"typ": "JWT"}), "algorithm"),
    ("typ not JWT", lambda: forge(claims(), header={"alg": "HS256", "typ": "at+jwt+x"}), "header"),
    ("critical header", lambda: forge(claims(), header={"alg": "HS256", "crit": ["exp"]}), "header"),
    ("header not an object", lambda: forge(claims(), header=["HS256"]), "algorithm"),  # type: ignore[arg-type]
    ("iat far in the future", lambda: forge(claims(iat=int(NOW) + 300, exp=int(NOW) + 900)), "not valid yet"),
    ("nbf in the future", lambda: forge(claims(nbf=int(NOW) + 300)), "not valid yet"),
    ("lifetime over max_ttl", lambda: forge(claims(exp=int(NOW) + 7200)), "max_ttl"),
    ("exp missing", lambda: forge(claims(exp=None)), "exp"),
    ("exp a string", lambda: forge(claims(exp=str(int(NOW) + 900))), "exp"),
    ("exp a boolean", lambda: forge(claims(exp=True)), "exp"),
    ("jti missing", lambda: forge(claims(jti=None)), "jti"),
    ("unknown agent", lambda: forge(claims(sub="ghost-bot")), "unknown agent"),
    ("subject not a string", lambda: forge(claims(sub=["support-bot"])), "unknown agent"),
    ("claims not an object", lambda: forge({}, raw='["support-bot"]'), "not an object"),
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
    ("not base64", lambda: "e30!.e30.e30", "header"),
]


@pytest.mark.parametrize(("case", "make", "problem"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_token_that_fails_any_check_is_refused_with_a_reason(
    case: str, make: Callable[[], str], problem: str
) -> None:
    verdict = verify_token(make(), TOKENS, AGENTS, NOW)
    assert verdict.agent is None
    assert not verdict.accepted
    assert problem in verdict.problem


def test_a_token_is_refused_when_guard_yaml_has_no_tokens_section() -> None:
    verdict = verify_token(forge(claims()), None, AGENTS, NOW)
    assert verdict.agent is None
    assert "tokens" in verdict.problem


@pytest.mark.parametrize(
    ("changes", "at"),
    [
        ({}, NOW),
        ({"aud": ["other", "mcp-guard"]}, NOW),
        ({"iat": int(NOW) + 20, "exp": int(NOW) + 900}, NOW),  # within the clock skew
        ({"nbf": int(NOW) - 5}, NOW),
        ({}, NOW + 899.999),
    ],
)
def test_a_well_formed_token_within_its_window_is_accepted(changes: dict[str, Any], at: float) -> None:
    assert verify_token(forge(claims(**changes)), TOKENS, AGENTS, at).agent == "support-bot"


def test_a_token_is_refused_from_the_second_it_expires() -> None:
    token = forge(claims())
    assert verify_token(token, TOKENS, AGENTS, NOW + 900).agent is None


def test_a_token_checks_the_audience_the_config_names() -> None:
    tokens = TokensConfig.model_validate({"signing_key": SIGNING_KEY, "audience": "guard-eu"})
    token, _ = issue_token(tokens, "support-bot", 60, NOW)
    assert verify_token(token, tokens, AGENTS, NOW).agent == "support-bot"
    assert verify_token(token, TOKENS, AGENTS, NOW).agent is None


# -- the Authorization header ----------------------------------------------------------------------

HEADERS: list[tuple[str | None, str | None]] = [
    (f"Bearer {SUPPORT_KEY}", "support-bot"),
    (f"bearer {FINANCE_KEY}", "finance-bot"),
    (f"BEARER   {SUPPORT_KEY}", "support-bot"),
    (f"Bearer {forge(claims(sub='finance-bot'))}", "finance-bot"),
    (None, None),
    ("", None),
    ("Bearer", None),
    ("Bearer ", None),
    (SUPPORT_KEY, None),
    (f"Basic {base64.b64encode(f'support-bot:{SUPPORT_KEY}'.encode()).decode()}", None),
    (f"Token {SUPPORT_KEY}", None),
    (f"Bearer {SUPPORT_KEY} extra", None),
    (f"Digest {SUPPORT_KEY}", None),
    (f"Bearer {SUPPORT_KEY},Bearer {FINANCE_KEY}", None),
    (f"Bearer {'a' * 5000}", None),
    ("Bearer mcpg_nobody", None),
]


@pytest.mark.parametrize(("header", "agent"), HEADERS)
def test_only_a_bearer_key_or_token_names_an_agent(header: str | None, agent: str | None) -> None:
    verdict = authenticate(header, AGENTS, TOKENS, NOW)
    assert verdict.agent == agent
    if agent is None:
        assert verdict.problem
        assert SUPPORT_KEY[5:15] not in verdict.problem  # no part of a credential reaches the log
