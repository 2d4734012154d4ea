"""Who is calling, from an HTTP `Authorization: Bearer` value: a static API key whose `sha256:`
hash guard.yaml lists for an agent, or a short-lived HS256 token signed with `tokens.signing_key`.
Pure: values and the clock passed in; no mcp, no network, no files. A refusal is a value."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.config import AgentConfig, TokensConfig
from mcp_guard.wire import StrictJSONError, parse_strict

KEY_PREFIX = "mcpg_"
CLOCK_SKEW = 30.0
"""Seconds a token's `iat`/`nbf` may lie in the future (clocks of issuer and guard differ)."""
MAX_CREDENTIAL_CHARS = 4096
_HEADER = {"alg": "HS256", "typ": "JWT"}
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
# RFC 6750 b64token: what may follow "Bearer ".
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)$")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one credential: the agent it names, or why it was refused.
    `problem` is for the operator's log; it never contains the credential."""

    agent: str | None
    problem: str = ""

    @property
    def accepted(self) -> bool:
        return self.agent is not None


def _refuse(problem: str) -> Verdict:
    return Verdict(None, problem)


# -- static keys ---------------------------------------------------------------------------------


def new_key() -> str:
    """A new random API key (256 bits), shown once and stored nowhere but with its agent."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The `sha256:<hex>` line guard.yaml lists for a key."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def agent_for_key(key: str, agents: Mapping[str, AgentConfig]) -> str | None:
    """The agent one of whose key hashes matches, comparing every listed hash in constant time."""
    presented = hash_key(key).encode()
    found: str | None = None
    for name, agent in agents.items():
        for listed in agent.keys:
            if hmac.compare_digest(presented, listed.encode()) and found is None:
                found = name
    return found


# -- signed tokens (JWT, HS256) ------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str) -> bytes:
    if not _B64URL.match(part) or len(part) % 4 == 1:
        msg = "not base64url"
        raise ValueError(msg)
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if _b64encode(data) != part:  # one encoding per value: no malleable trailing bits
        msg = "not canonical base64url"
        raise ValueError(msg)
    return data


def _sign(signing_input: str, tokens: TokensConfig) -> bytes:
    key = tokens.signing_key.get_secret_value().encode("utf-8")
    return hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()


def _compact(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()


def issue_token(tokens: TokensConfig, agent: str, ttl: float, now: float) -> tuple[str, dict[str, Any]]:
    """A token for `agent` valid for `ttl` seconds from `now`, and its claims. The caller checks
    that the agent exists and that `ttl` is within `tokens.max_ttl`."""
    issued = int(now)
    claims: dict[str, Any] = {
        "sub": agent,
        "aud": tokens.audience,
        "iat": issued,
        "exp": issued + int(ttl),
        "jti": uuid.uuid4().hex,
    }
    signing_input = f"{_b64encode(_compact(_HEADER))}.{_b64encode(_compact(claims))}"
    return f"{signing_input}.{_b64encode(_sign(signing_input, tokens))}", claims


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def verify_token(
    token: str, tokens: TokensConfig | None, agents: Mapping[str, AgentConfig], now: float
) -> Verdict:
    """Check a token's form, algorithm, signature, audience, times and subject, in that order."""
    if tokens is None:
        return _refuse("a signed token was presented but guard.yaml has no `tokens` section")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return _refuse("the token is not a compact JWS")
    try:
        header = parse_strict(_b64decode(parts[0]), MAX_CREDENTIAL_CHARS)
    except (ValueError, binascii.Error, StrictJSONError):
        return _refuse("the token header is malformed")
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        alg = header.get("alg") if isinstance(header, dict) else None
        return _refuse(f"token algorithm {str(alg)[:20]!r} is refused (only HS256)")
    if header.get("typ", "JWT") != "JWT" or "crit" in header:
        return _refuse("the token header is not a plain JWT header")
    try:
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        return _refuse("the token signature is malformed")
    if not hmac.compare_digest(signature, _sign(f"{parts[0]}.{parts[1]}", tokens)):
        return _refuse("the token signature does not match")
    try:
        claims = parse_strict(_b64decode(parts[1]), MAX_CREDENTIAL_CHARS)
    except (ValueError, binascii.Error, StrictJSONError):
        return _refuse("the token claims are malformed")
    if not isinstance(claims, dict):
        return _refuse("the token claims are not an object")
    return _check_claims(claims, tokens, agents, now)


def _check_claims(
    claims: Mapping[str, Any], tokens: TokensConfig, agents: Mapping[str, AgentConfig], now: float
) -> Verdict:
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if tokens.audience not in audiences:
        return _refuse(f"the token is for another audience, not {tokens.audience!r}")
    exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
    if exp is None or iat is None:
        return _refuse("the token lacks numeric `exp` and `iat` claims")
    if now >= exp:
        return _refuse("the token has expired")
    if iat > now + CLOCK_SKEW or (nbf is not None and nbf > now + CLOCK_SKEW):
        return _refuse("the token is not valid yet (`iat` or `nbf` in the future)")
    if exp - iat > tokens.max_ttl + CLOCK_SKEW:
        return _refuse("the token lives longer than tokens.max_ttl allows")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        return _refuse("the token lacks a `jti` claim")
    sub = claims.get("sub")
    if not isinstance(sub, str) or sub not in agents:
        return _refuse(f"the token names an unknown agent {str(sub)[:64]!r}")
    return Verdict(sub)


# -- the Authorization header --------------------------------------------------------------------


def authenticate(
    authorization: str | None,
    agents: Mapping[str, AgentConfig],
    tokens: TokensConfig | None,
    now: float,
) -> Verdict:
    """The agent an `Authorization` header value proves, or why it proves nobody. A value with
    two dots is a token; anything else is a static key."""
    if authorization is None or not authorization.strip():
        return _refuse("no Authorization header")
    if len(authorization) > MAX_CREDENTIAL_CHARS:
        return _refuse("the Authorization header is too long")
    match = _BEARER.match(authorization.strip())
    if match is None:
        # Name the scheme only when there is one: a bare credential must not reach the log.
        scheme, space, _ = authorization.strip().partition(" ")
        shown = f" {scheme!r}" if space and scheme.isalpha() and len(scheme) <= 20 else ""
        return _refuse(f"the Authorization value{shown} is not a Bearer credential")
    credential = match.group(1)
    if credential.count(".") == 2:
        return verify_token(credential, tokens, agents, now)
    agent = agent_for_key(credential, agents)
    if agent is None:
        return _refuse("the key matches no agent's key hash")
    return Verdict(agent)
