"""Who is calling: the `Authenticator` protocol (shaped like the MCP SDK's `TokenVerifier`), the
`Refusal` it returns instead of an `Agent`, the chain that tries authenticators in order, and the
one `Authorization: Bearer` header a request may carry. Imports no mcp, guard or transports."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mcp_guard.policy.engine import Agent, Policy

PolicySource = Callable[[], Policy]
"""The policy in force, read on every request: a reload changes keys, tokens and agents at once."""

Revoked = Callable[[str], Awaitable[bool]]
"""Whether a token id (`jti`) has been revoked: read from the ledger, shared by every guard process."""

MAX_CREDENTIAL_CHARS = 4096
INVALID = "the credential is invalid or expired"
# RFC 6750 b64token: what may follow "Bearer ".
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)$")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a credential proves nobody, and what to answer. `problem` is for the operator's log and
    never contains the credential; `status`, `error`, `description` and `scope` are what the client
    is told (RFC 6750: 401 `invalid_token`; no `error` when no credential was sent; later 403
    `insufficient_scope`). `not_mine` means the credential is not of this authenticator's kind, so
    the next one in a chain may try it; otherwise it is refused and no other authenticator sees it."""

    problem: str
    status: int = 401
    error: str | None = "invalid_token"
    description: str = INVALID
    scope: str | None = None
    not_mine: bool = False

    def challenge(self, realm: str, resource_metadata: str | None = None, scope: str | None = None) -> str:
        """The `WWW-Authenticate` value to send with this refusal; with OAuth configured, where
        its RFC 9728 metadata is and the scopes a token needs (the refusal's own, if it has one)."""
        params = [f'realm="{realm}"']
        if resource_metadata is not None:
            params.append(f'resource_metadata="{resource_metadata}"')
        if self.error is not None:
            params += [f'error="{self.error}"', f'error_description="{self.description}"']
        if (shown := self.scope or scope) is not None:
            params.append(f'scope="{shown}"')
        return "Bearer " + ", ".join(params)


NO_CREDENTIAL = Refusal(
    "no Authorization header", error=None, description="send Authorization: Bearer <key or token>"
)


class Authenticator(Protocol):
    """Turns one bearer credential into the agent it proves, resolved against the policy in force,
    or a `Refusal`. Like the SDK's `TokenVerifier.verify_token`, but a refusal says why."""

    async def authenticate(self, credential: str) -> Agent | Refusal: ...


class Chain:
    """Authenticators tried in the order given. The first that claims the credential decides: its
    agent or its refusal is the answer. A credential that none claims is refused (fail closed)."""

    def __init__(self, *authenticators: Authenticator) -> None:
        self.authenticators = authenticators

    async def authenticate(self, credential: str) -> Agent | Refusal:
        for authenticator in self.authenticators:
            result = await authenticator.authenticate(credential)
            if isinstance(result, Agent) or not result.not_mine:
                return result
        return Refusal("the credential is of no kind this guard accepts")


def not_mine(kind: str) -> Refusal:
    return Refusal(f"the credential is not {kind}", not_mine=True)


def looks_like_jwt(credential: str) -> bool:
    """True when the credential says it is a JWT: dot-separated, its first segment base64url of a
    JSON object (what a JWT library reads first). Read leniently on purpose, so that a malformed
    token is refused by the token verifier with a reason instead of being tried as a key."""
    head, dot, _ = credential.partition(".")
    if not dot or not head or len(head) > MAX_CREDENTIAL_CHARS:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return False
    return isinstance(header, dict)


def bearer_credential(values: Sequence[str]) -> str | Refusal:
    """The credential of a request's `Authorization` header values: exactly one header, whose
    value is `Bearer <b64token>` and at most MAX_CREDENTIAL_CHARS long; or why there is none."""
    if not values:
        return NO_CREDENTIAL
    if len(values) > 1:
        return Refusal("more than one Authorization header")
    value = values[0].strip()
    if not value:
        return Refusal("the Authorization header is empty")
    if len(values[0]) > MAX_CREDENTIAL_CHARS:
        return Refusal("the Authorization header is too long")
    match = _BEARER.match(value)
    if match is None:
        # Name the scheme only when there is one: a bare credential must not reach the log.
        scheme, space, _ = value.partition(" ")
        shown = f" {scheme!r}" if space and scheme.isalpha() and len(scheme) <= 20 else ""
        return Refusal(f"the Authorization value{shown} is not a Bearer credential")
    return match.group(1)
