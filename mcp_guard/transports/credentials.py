"""What the HTTP listener answers about credentials: the authenticators it asks (static keys, the
authorization server's tokens, the guard's own tokens, with revocations read from the ledger), the
`WWW-Authenticate` challenge of a refusal, and where the RFC 9728 metadata is served. Imports the
guard for its type only; knows nothing of MCP messages."""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.responses import Response

from mcp_guard.config import OAuthConfig
from mcp_guard.identity.base import Chain, Refusal
from mcp_guard.identity.keys import StaticKeys
from mcp_guard.identity.oauth import OAuthTokens, metadata_url
from mcp_guard.identity.tokens import SignedTokens
from mcp_guard.ledger.base import Window
from mcp_guard.policy.engine import Policy

if TYPE_CHECKING:
    from mcp_guard.guard.app import Guard

REALM = "mcp-guard"
WELL_KNOWN = "/.well-known/oauth-protected-resource"
MCP_PATH = "/mcp"


def refused(refusal: Refusal, oauth: OAuthConfig | None) -> Response:
    error = refusal.error or ("access_denied" if refusal.status == 403 else "invalid_request")
    body = {"error": error, "error_description": refusal.description}
    if oauth is None:
        challenge = refusal.challenge(REALM)
    else:  # an OAuth client finds its authorization server from here (RFC 9728 section 5.1)
        challenge = refusal.challenge(REALM, metadata_url(oauth.resource), " ".join(oauth.scopes) or None)
    content = json.dumps(body, separators=(",", ":"))
    headers = {"WWW-Authenticate": challenge}
    return Response(content, status_code=refusal.status, media_type="application/json", headers=headers)


def metadata_paths(oauth: OAuthConfig) -> frozenset[str]:
    """Where the RFC 9728 document is served: the root form, the form for /mcp, and the form for
    the path of `oauth.resource` (the same one when the guard is reached at /mcp)."""
    return frozenset({WELL_KNOWN, WELL_KNOWN + MCP_PATH, urlsplit(metadata_url(oauth.resource)).path})


def authenticators(guard: Guard) -> Chain:
    """Keys, then the authorization server's tokens, then the guard's own. A key is never a JWT
    and a token always is; a JWT is the OAuth check's unless it is an HS256 token that does not
    name the issuer. Keys go first because their check is the cheapest."""

    async def revoked(jti: str) -> bool:
        try:
            return await guard.ledger.read(partial(_revoked, jti))
        except Exception as exc:  # fail closed: a token that cannot be checked is refused
            guard.log(f"cannot read token revocations from the ledger: {exc}")
            return True

    def policy() -> Policy:
        return guard.policy

    return Chain(
        StaticKeys(policy),
        OAuthTokens(policy, guard.log, revoked=revoked),
        SignedTokens(policy, revoked=revoked),
    )


def _revoked(jti: str, window: Window) -> bool:
    return window.revoked(jti)
