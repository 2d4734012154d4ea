"""identity/ as tables: the one Bearer header, static keys, and the chain that hands a credential to
the authenticator of its kind. Every refusal is a value with a reason; none quotes the credential."""

from __future__ import annotations

import base64
import hashlib

import pytest

from mcp_guard.config import GuardConfig
from mcp_guard.identity.base import (
    NO_CREDENTIAL,
    Chain,
    Refusal,
    bearer_credential,
    looks_like_jwt,
    not_mine,
)
from mcp_guard.identity.keys import KEY_PREFIX, StaticKeys, agent_for_key, hash_key, new_key
from mcp_guard.identity.tokens import SignedTokens, issue_token
from mcp_guard.policy.engine import Agent, Policy
from tests.unit.identity_fixtures import AGENTS, FINANCE_KEY, NOW, POLICY, SUPPORT_KEY, TOKENS, claims, forge

CHAIN = Chain(StaticKeys(lambda: POLICY), SignedTokens(lambda: POLICY, clock=lambda: NOW))


async def authenticate(values: list[str]) -> Agent | Refusal:
    """What the HTTP transport does with a request's Authorization header values."""
    credential = bearer_credential(values)
    if isinstance(credential, Refusal):
        return credential
    return await CHAIN.authenticate(credential)


def name(result: Agent | Refusal) -> str | None:
    return result.name if isinstance(result, Agent) else None


# -- static keys ---------------------------------------------------------------------------------


def test_new_keys_are_random_prefixed_and_hash_to_the_guard_yaml_form() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert len(key) >= 40
        assert "." not in key
        assert not looks_like_jwt(key)
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


@pytest.mark.parametrize(
    "key",
    [
        SUPPORT_KEY[:-1],  # a prefix of a valid key
        SUPPORT_KEY[:8],
        KEY_PREFIX,
        SUPPORT_KEY + "x",  # a valid key with more after it
        SUPPORT_KEY.removeprefix(KEY_PREFIX),  # without our prefix
        hash_key(SUPPORT_KEY).removeprefix("sha256:"),  # the listed hash itself
    ],
)
async def test_a_key_that_only_resembles_a_valid_key_is_refused(key: str) -> None:
    result = await StaticKeys(lambda: POLICY).authenticate(key)
    assert isinstance(result, Refusal)
    assert not result.not_mine
    assert "no agent's key" in result.problem


async def test_a_key_authenticates_as_the_agent_with_its_roles_in_the_policy_in_force() -> None:
    policies = [POLICY]
    keys = StaticKeys(lambda: policies[-1])
    assert await keys.authenticate(SUPPORT_KEY) == Agent("support-bot", frozenset({"support"}))
    policies.append(Policy(GuardConfig(agents={"support-bot": AGENTS["keyless-bot"]}), []))
    assert isinstance(await keys.authenticate(SUPPORT_KEY), Refusal)  # its hash is gone
    policies.append(Policy(GuardConfig(agents={"finance-bot": AGENTS["finance-bot"]}), []))
    assert isinstance(await keys.authenticate(SUPPORT_KEY), Refusal)  # the agent is gone


async def test_a_jwt_is_not_a_key_and_a_key_is_not_a_token() -> None:
    token, _ = issue_token(TOKENS, "support-bot", 60, NOW)
    on_token = await StaticKeys(lambda: POLICY).authenticate(token)
    on_key = await SignedTokens(lambda: POLICY, clock=lambda: NOW).authenticate(SUPPORT_KEY)
    assert isinstance(on_token, Refusal)
    assert on_token.not_mine
    assert isinstance(on_key, Refusal)
    assert on_key.not_mine


# -- the chain -----------------------------------------------------------------------------------


class Fixed:
    """An authenticator that always gives the same answer and counts its calls."""

    def __init__(self, answer: Agent | Refusal) -> None:
        self.answer = answer
        self.calls = 0

    async def authenticate(self, credential: str) -> Agent | Refusal:
        self.calls += 1
        return self.answer


AGENT = Agent("support-bot", frozenset({"support"}))


async def test_the_chain_passes_a_credential_on_only_when_it_is_not_mine() -> None:
    later = Fixed(AGENT)
    assert await Chain(Fixed(not_mine("a test")), later).authenticate("c") == AGENT
    refused = Refusal("refused by the first")
    assert await Chain(Fixed(refused), later).authenticate("c") == refused
    assert later.calls == 1  # a refusal is final: the next authenticator never sees the credential


@pytest.mark.parametrize("chain", [Chain(), Chain(Fixed(not_mine("a")), Fixed(not_mine("b")))])
async def test_a_credential_no_authenticator_claims_is_refused(chain: Chain) -> None:
    result = await chain.authenticate(SUPPORT_KEY)
    assert isinstance(result, Refusal)
    assert not result.not_mine
    assert result.status == 401


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
    # Two kinds of credential in one value: never the one or the other.
    (f"Bearer {SUPPORT_KEY} {forge(claims())}", None),
    (f"Bearer {SUPPORT_KEY}.{forge(claims())}", None),
    (f"Bearer {forge(claims())}.{SUPPORT_KEY}", None),
    (f"Bearer {forge(claims())}{SUPPORT_KEY}", None),
]


@pytest.mark.parametrize(("header", "agent"), HEADERS)
async def test_only_a_bearer_key_or_token_names_an_agent(header: str | None, agent: str | None) -> None:
    result = await authenticate([] if header is None else [header])
    assert name(result) == agent
    if isinstance(result, Refusal):
        assert result.problem
        assert result.status == 401
        assert SUPPORT_KEY[5:15] not in result.problem  # no part of a credential reaches the log


@pytest.mark.parametrize(
    "values",
    [
        [f"Bearer {SUPPORT_KEY}", f"Bearer {SUPPORT_KEY}"],
        [f"Bearer {SUPPORT_KEY}", f"Bearer {forge(claims())}"],
        [f"Bearer {forge(claims())}", f"Bearer {FINANCE_KEY}"],
        [f"Bearer {SUPPORT_KEY}", ""],
    ],
)
async def test_two_authorization_headers_are_refused_whatever_they_hold(values: list[str]) -> None:
    result = await authenticate(values)
    assert isinstance(result, Refusal)
    assert "more than one" in result.problem


def test_refusals_tell_the_client_what_rfc_6750_says_and_nothing_of_the_credential() -> None:
    assert NO_CREDENTIAL.challenge("mcp-guard") == 'Bearer realm="mcp-guard"'
    assert bearer_credential([]) == NO_CREDENTIAL
    invalid = Refusal("the key matches no agent's key hash")
    assert invalid.challenge("mcp-guard") == (
        'Bearer realm="mcp-guard", error="invalid_token", '
        'error_description="the credential is invalid or expired"'
    )
    scoped = Refusal("no scope", status=403, error="insufficient_scope", description="needs mcp:tools")
    assert scoped.challenge("g").endswith('error="insufficient_scope", error_description="needs mcp:tools"')
