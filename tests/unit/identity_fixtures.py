"""Values shared by the identity tests: agents and keys, a policy, and tokens forged by hand (not
by issue_token), so that the verifier is checked against the format rather than against itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from mcp_guard.config import AgentConfig, GuardConfig, TokensConfig
from mcp_guard.identity.keys import hash_key
from mcp_guard.policy.engine import Policy

NOW = 1_800_000_000.0
SIGNING_KEY = "unit-test-signing-key-0123456789abcdef"
OTHER_KEY = "another-signing-key-of-at-least-32-bytes"
TOKENS = TokensConfig.model_validate({"signing_key": SIGNING_KEY, "max_ttl": "1h"})
SUPPORT_KEY = "mcpg_support-static-key-for-unit-tests"
FINANCE_KEY = "mcpg_finance-static-key-for-unit-tests"
AGENTS = {
    "support-bot": AgentConfig(roles=("support",), keys=(hash_key(SUPPORT_KEY),)),
    "finance-bot": AgentConfig(roles=("finance",), keys=(hash_key(FINANCE_KEY), hash_key("mcpg_second"))),
    "keyless-bot": AgentConfig(roles=("support",)),
}
POLICY = Policy(GuardConfig(agents=AGENTS, tokens=TOKENS), [])
ROSTER = POLICY.agents


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    claims: dict[str, Any],
    *,
    header: Any = None,
    key: str = SIGNING_KEY,
    raw: str | None = None,
    raw_header: str | None = None,
    digest: Callable[[], Any] = hashlib.sha256,
) -> str:
    """A token built by hand: any header, any payload text, any key, any HMAC digest."""
    if raw_header is None:
        raw_header = json.dumps(header if header is not None else {"alg": "HS256", "typ": "JWT"})
    head = b64(raw_header.encode())
    body = b64(raw.encode() if raw is not None else json.dumps(claims).encode())
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64(signature)}"


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for support-bot at NOW; a change to None removes that claim."""
    base = {"sub": "support-bot", "aud": "mcp-guard", "iat": int(NOW), "exp": int(NOW) + 900, "jti": "j-1"}
    return {k: v for k, v in (base | changes).items() if v is not None}
