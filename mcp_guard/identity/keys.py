"""Static API keys: `agent key` makes them, guard.yaml lists only their `sha256:` hashes, and the
`StaticKeys` authenticator finds the agent whose listed hash a key matches, in constant time.
Imports no mcp, guard or transports."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import replace

from mcp_guard.config import AgentConfig
from mcp_guard.identity.base import PolicySource, Refusal, looks_like_jwt, not_mine
from mcp_guard.policy.engine import Agent

KEY_PREFIX = "mcpg_"
"""What `agent key` puts in front of every key, so that a leaked key is recognisable as ours."""


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


class StaticKeys:
    """Authenticator for static keys. Every bearer credential that is not a JWT is a key (guard.yaml
    may list the hash of any string, not only of keys `agent key` made); a JWT is not mine."""

    def __init__(self, policy: PolicySource) -> None:
        self.policy = policy

    async def authenticate(self, credential: str) -> Agent | Refusal:
        if looks_like_jwt(credential):
            return not_mine("a static key")
        policy = self.policy()
        name = agent_for_key(credential, policy.config.agents)
        agent = policy.agents.get(name) if name is not None else None
        if agent is None:
            return Refusal("the key matches no agent's key hash")
        return replace(agent, credential=key_credential(credential))


def key_credential(key: str) -> str:
    """How the ledger names a key: `key:` and the first 12 hex digits of its listed hash."""
    return "key:" + hash_key(key).removeprefix("sha256:")[:12]
