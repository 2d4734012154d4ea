"""Short-lived HS256 tokens: `token issue` signs them and the `SignedTokens` authenticator verifies
them, both with PyJWT. The guard adds what PyJWT leaves open: one strict encoding and JSON per
token (no padding, no duplicate keys), HS256 named in the header, and the times against the clock
passed in. Imports no mcp, guard or transports."""

from __future__ import annotations

import binascii
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import jwt
from jwt.exceptions import (
    InvalidAudienceError,
    InvalidJTIError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
    PyJWTError,
)
from jwt.utils import base64url_decode, base64url_encode

from mcp_guard.config import TokensConfig
from mcp_guard.identity.base import (
    MAX_CREDENTIAL_CHARS,
    PolicySource,
    Refusal,
    Revoked,
    looks_like_jwt,
    not_mine,
)
from mcp_guard.policy.engine import Agent
from mcp_guard.wire import StrictJSONError, parse_strict

ALGORITHM = "HS256"
CLOCK_SKEW = 30.0
"""Seconds a token's `iat`/`nbf` may lie in the future (clocks of issuer and guard differ)."""
REQUIRED_CLAIMS = ("sub", "aud", "iat", "exp", "jti")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


class _Malformed(jwt.DecodeError):
    """Claims that PyJWT's own JSON parser would have read one way and another parser another."""


class StrictClaims(jwt.PyJWT):
    """PyJWT reading the claims with the guard's strict parser (PyJWT keeps the last of two
    duplicate keys and accepts NaN). It runs after the signature is verified."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            claims = parse_strict(decoded["payload"], MAX_CREDENTIAL_CHARS)
        except StrictJSONError:
            msg = "the token claims are malformed"
            raise _Malformed(msg) from None
        if not isinstance(claims, dict):
            msg = "the token claims are not an object"
            raise _Malformed(msg)
        return claims


_PYJWT = StrictClaims(
    options={
        "require": list(REQUIRED_CLAIMS),
        # The times are checked in _check_times against the clock passed in (PyJWT reads its own),
        # and only as JSON numbers (PyJWT would take the string "1800000900").
        "verify_exp": False,
        "verify_iat": False,
        "verify_nbf": False,
    }
)


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
    token = jwt.encode(claims, tokens.signing_key.get_secret_value(), algorithm=ALGORITHM)
    return token, claims


def segment(part: str) -> bytes:
    """One base64url segment, in its one canonical encoding (no padding, no loose trailing bits)."""
    if not _B64URL.match(part) or len(part) % 4 == 1:
        msg = "not base64url"
        raise ValueError(msg)
    data = base64url_decode(part)
    if base64url_encode(data).decode("ascii") != part:
        msg = "not canonical base64url"
        raise ValueError(msg)
    return data


def _check_form(token: str) -> str | None:
    """Why the token is not one compact JWS with a plain HS256 header, or None. Checked before
    PyJWT sees it, whose reading is lenient (padding, duplicate header keys)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return "the token is not a compact JWS"
    try:
        header = parse_strict(segment(parts[0]), MAX_CREDENTIAL_CHARS)
    except (ValueError, binascii.Error, StrictJSONError):
        return "the token header is malformed"
    if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
        alg = header.get("alg") if isinstance(header, dict) else None
        return f"token algorithm {str(alg)[:20]!r} is refused (only {ALGORITHM})"
    if header.get("typ", "JWT") != "JWT" or "crit" in header:
        return "the token header is not a plain JWT header"
    try:
        segment(parts[2])
    except (ValueError, binascii.Error):
        return "the token signature is malformed"
    try:
        segment(parts[1])
    except (ValueError, binascii.Error):
        return "the token claims are malformed"
    return None


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _check_times(claims: Mapping[str, Any], tokens: TokensConfig, now: float) -> str | None:
    exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
    if exp is None or iat is None:
        return "the token lacks numeric `exp` and `iat` claims"
    if now >= exp:
        return "the token has expired"
    if iat > now + CLOCK_SKEW or (nbf is not None and nbf > now + CLOCK_SKEW):
        return "the token is not valid yet (`iat` or `nbf` in the future)"
    if exp - iat > tokens.max_ttl + CLOCK_SKEW:
        return "the token lives longer than tokens.max_ttl allows"
    return None


def verify_token(
    token: str, tokens: TokensConfig | None, agents: Mapping[str, Agent], now: float
) -> Agent | Refusal:
    """The agent a token names, or why it is refused. Checked in this order: its form and header,
    the signature (HS256 only), the claims' JSON, the required claims and the audience (these by
    PyJWT), then the times, `jti`, and that the agent still exists in `agents`."""
    if tokens is None:
        return Refusal("a signed token was presented but guard.yaml has no `tokens` section")
    if len(token) > MAX_CREDENTIAL_CHARS:
        return Refusal("the token is too long")
    if (problem := _check_form(token)) is not None:
        return Refusal(problem)
    audience = f"the token is for another audience, not {tokens.audience!r}"
    try:
        claims = _PYJWT.decode(
            token, tokens.signing_key.get_secret_value(), algorithms=[ALGORITHM], audience=tokens.audience
        )
    except _Malformed as exc:
        return Refusal(str(exc))
    except InvalidSignatureError:
        return Refusal("the token signature does not match")
    except MissingRequiredClaimError as exc:
        return Refusal(audience if exc.claim == "aud" else f"the token lacks the `{exc.claim}` claim")
    except InvalidAudienceError:
        return Refusal(audience)
    except InvalidSubjectError:
        return Refusal("the token names an unknown agent (its `sub` is not a string)")
    except InvalidJTIError:
        return Refusal("the token's `jti` claim is not a string")
    except PyJWTError as exc:
        return Refusal(f"the token is refused ({type(exc).__name__})")
    if (problem := _check_times(claims, tokens, now)) is not None:
        return Refusal(problem)
    if not claims["jti"]:
        return Refusal("the token lacks a `jti` claim")
    agent = agents.get(claims["sub"])
    if agent is None:
        return Refusal(f"the token names an unknown agent {str(claims['sub'])[:64]!r}")
    return agent


class SignedTokens:
    """Authenticator for the tokens `token issue` makes, checked with the `tokens` section and the
    agents of the policy in force. Every credential that says it is a JWT is mine."""

    def __init__(
        self, policy: PolicySource, clock: Callable[[], float] = time.time, *, revoked: Revoked | None = None
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.revoked = revoked

    async def authenticate(self, credential: str) -> Agent | Refusal:
        if not looks_like_jwt(credential):
            return not_mine("a token")
        policy = self.policy()
        agent = verify_token(credential, policy.config.tokens, policy.agents, self.clock())
        if isinstance(agent, Refusal):
            return agent
        jti = token_id(credential)
        if self.revoked is not None and await self.revoked(jti):
            return Refusal(f"token {jti[:64]!r} has been revoked")
        return replace(agent, credential=f"token:{jti}")


def token_id(token: str) -> str:
    """The `jti` of a token `verify_token` accepted (so its claims are a JSON object with one)."""
    claims = parse_strict(segment(token.split(".")[1]), MAX_CREDENTIAL_CHARS)
    return str(claims["jti"]) if isinstance(claims, dict) else ""
