"""Access tokens from the organisation's OAuth 2.1 authorization server: the guard is a resource
server (MCP authorization, RFC 9068 JWT access tokens, RFC 9728 metadata). `OAuthTokens` checks
every token: its form, an algorithm from the pinned list (never HS* or none), the signature with
the issuer's keys only, `iss`, `aud` (the guard's resource URI), the times, the scopes, `jti`, its
revocation and the agent its subject is. Imports no mcp, guard or transports."""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from jwt.exceptions import (
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWKError,
    PyJWTError,
)

from mcp_guard.config import GuardConfig, OAuthConfig
from mcp_guard.identity.base import (
    MAX_CREDENTIAL_CHARS,
    PolicySource,
    Refusal,
    Revoked,
    looks_like_jwt,
    not_mine,
)
from mcp_guard.identity.jwks import IssuerKeys
from mcp_guard.identity.tokens import CLOCK_SKEW, StrictClaims, segment
from mcp_guard.policy.engine import Agent
from mcp_guard.wire import StrictJSONError, parse_strict

REQUIRED_CLAIMS = ("iss", "aud", "exp", "jti")
MAX_ID_CHARS = 256
"""A subject or a token id longer than this is refused (both are recorded in the ledger)."""
TOKEN_TYPES = frozenset({"JWT", "at+jwt", "application/at+jwt"})

_PYJWT = StrictClaims(
    options={
        "require": list(REQUIRED_CLAIMS),
        "verify_exp": False,  # checked in _check_times against the clock passed in
        "verify_iat": False,
        "verify_nbf": False,
        "enforce_minimum_key_length": True,
    }
)


def metadata_url(resource: str) -> str:
    """RFC 9728: the protected resource metadata URL, `/.well-known/oauth-protected-resource`
    inserted before the resource's path."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path.rstrip('/')}"


def protected_resource_metadata(oauth: OAuthConfig) -> dict[str, Any]:
    """The RFC 9728 document the guard serves without a credential."""
    return {
        "resource": oauth.resource,
        "authorization_servers": [oauth.issuer],
        "scopes_supported": list(oauth.scopes),
        "bearer_methods_supported": ["header"],
        "resource_signing_alg_values_supported": list(oauth.algorithms),
    }


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(header, claims) read without any check but strict JSON, or None when they cannot be read."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = parse_strict(segment(parts[0]), MAX_CREDENTIAL_CHARS)
        claims = parse_strict(segment(parts[1]), MAX_CREDENTIAL_CHARS)
    except (ValueError, binascii.Error, StrictJSONError):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return header, claims


def is_for_issuer(token: str, oauth: OAuthConfig) -> bool:
    """Whether an OAuth check should decide this JWT: it names our issuer, or is signed with
    anything but the guard's own HS256 (a token of another issuer is refused as such, not tried
    against the guard's signing key)."""
    read = _unverified(token)
    if read is None:
        return False
    header, claims = read
    return claims.get("iss") == oauth.issuer or header.get("alg") != "HS256"


def granted_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes a token grants: `scope` (RFC 9068, space-separated) or `scp` (a list or a
    string, as some providers write it)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


def agents_for(subject: str, config: GuardConfig) -> list[str]:
    return [name for name, agent in config.agents.items() if subject in agent.subjects]


def _check_header(header: Mapping[str, Any], oauth: OAuthConfig) -> str | None:
    alg = header.get("alg")
    if alg not in oauth.algorithms:
        return f"token algorithm {str(alg)[:20]!r} is refused (only {', '.join(oauth.algorithms)})"
    if header.get("typ", "JWT") not in TOKEN_TYPES or "crit" in header:
        return "the token header is not a plain JWT access token header"
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_ID_CHARS):
        return "the token's key id is malformed"
    return None


def _check_times(claims: Mapping[str, Any], now: float) -> str | None:
    def number(name: str) -> float | None:
        value = claims.get(name)
        return None if isinstance(value, bool) or not isinstance(value, int | float) else float(value)

    exp, iat, nbf = number("exp"), number("iat"), number("nbf")
    if exp is None or (claims.get("iat") is not None and iat is None):
        return "the token's `exp` or `iat` is not a number"
    if claims.get("nbf") is not None and nbf is None:
        return "the token's `nbf` is not a number"
    if now >= exp:
        return "the token has expired"
    if (iat is not None and iat > now + CLOCK_SKEW) or (nbf is not None and nbf > now + CLOCK_SKEW):
        return "the token is not valid yet (`iat` or `nbf` in the future)"
    return None


class OAuthTokens:
    """Authenticator for the authorization server's access tokens (see the module docstring).
    Mine: every JWT when `oauth` is configured, except the guard's own HS256 tokens that do not
    name the issuer. The keys are fetched through `IssuerKeys`, made again when `oauth` changes."""

    def __init__(
        self,
        policy: PolicySource,
        log: Callable[[str], None],
        *,
        revoked: Revoked | None = None,
        clock: Callable[[], float] = time.time,
        keys: Callable[[OAuthConfig], IssuerKeys] | None = None,
    ) -> None:
        self.policy = policy
        self.log = log
        self.revoked = revoked
        self.clock = clock
        self._make_keys = keys or (lambda oauth: IssuerKeys(oauth, log))
        self._keys: IssuerKeys | None = None

    def keys_for(self, oauth: OAuthConfig) -> IssuerKeys:
        if self._keys is None or self._keys.oauth != oauth:
            self._keys = self._make_keys(oauth)
        return self._keys

    async def authenticate(self, credential: str) -> Agent | Refusal:
        policy = self.policy()
        oauth = policy.config.oauth
        if oauth is None or not looks_like_jwt(credential) or not is_for_issuer(credential, oauth):
            return not_mine("an OAuth access token")
        if len(credential) > MAX_CREDENTIAL_CHARS:
            return Refusal("the token is too long")
        read = _unverified(credential)
        if read is None:
            return Refusal("the token is not a compact JWS with JSON header and claims")
        header, _ = read
        if (problem := _check_header(header, oauth)) is not None:
            return Refusal(problem)
        alg, kid = str(header["alg"]), header.get("kid")
        key = await self.keys_for(oauth).find(kid, alg)
        if key is None:
            return Refusal(f"no key of the issuer fits the token (kid {str(kid)[:64]!r}, {alg})")
        claims = self._decode(credential, key.verifier, alg, oauth)
        if isinstance(claims, Refusal):
            return claims
        if (problem := _check_times(claims, self.clock())) is not None:
            return Refusal(problem)
        return await self._identify(claims, oauth, policy.config, policy.agents)

    def _decode(
        self, token: str, verifier: Callable[[str], Any], alg: str, oauth: OAuthConfig
    ) -> dict[str, Any] | Refusal:
        audience = f"the token is for another audience, not {oauth.resource!r}"
        try:
            return _PYJWT.decode(
                token, verifier(alg), algorithms=[alg], audience=oauth.resource, issuer=oauth.issuer
            )
        except InvalidSignatureError:
            return Refusal("the token signature does not match the issuer's key")
        except MissingRequiredClaimError as exc:
            return Refusal(audience if exc.claim == "aud" else f"the token lacks the `{exc.claim}` claim")
        except InvalidAudienceError:
            return Refusal(audience)
        except InvalidIssuerError:
            return Refusal(f"the token is from another issuer, not {oauth.issuer!r}")
        except ImmatureSignatureError:
            return Refusal("the token is not valid yet")
        except (PyJWKError, PyJWTError) as exc:
            return Refusal(f"the token is refused ({type(exc).__name__})")

    async def _identify(
        self, claims: Mapping[str, Any], oauth: OAuthConfig, config: GuardConfig, agents: Mapping[str, Agent]
    ) -> Agent | Refusal:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_ID_CHARS:
            return Refusal("the token's `jti` is not a short string")
        if self.revoked is not None and await self.revoked(jti):
            return Refusal(f"token {jti[:64]!r} has been revoked")
        needed = " ".join(oauth.scopes)
        if not set(oauth.scopes) <= granted_scopes(claims):
            return Refusal(
                f"the token lacks a required scope (needs {needed!r})",
                status=403,
                error="insufficient_scope",
                description=f"the token needs the scopes: {needed}",
                scope=needed,
            )
        subject = claims.get(oauth.agent_claim)
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_ID_CHARS:
            return Refusal(f"the token's `{oauth.agent_claim}` claim is not a short string")
        names = agents_for(subject, config)
        if len(names) != 1 or names[0] not in agents:
            which = "no agent" if not names else "more than one agent"
            return Refusal(
                f"the token's {oauth.agent_claim} {subject[:64]!r} is listed under {which}'s subjects",
                status=403,
                error=None,
                description="the token's subject is no agent of this guard",
            )
        return replace(agents[names[0]], credential=f"oauth:{subject}:{jti}")
