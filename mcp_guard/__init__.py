"""mcp-guard: an MCP server that stands between AI agents and the upstream MCP servers that hold
real tools, deciding every call against per-agent grants and recording it in a ledger."""

from mcp_guard.config import GuardConfig, load_config
from mcp_guard.errors import (
    ConfigError,
    GuardError,
    LedgerError,
    LedgerUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mcp_guard.manifest import Manifest, load_manifests
from mcp_guard.policy.engine import Agent, Decision, Policy

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "ConfigError",
    "Decision",
    "GuardConfig",
    "GuardError",
    "LedgerError",
    "LedgerUnavailable",
    "Manifest",
    "Policy",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "__version__",
    "load_config",
    "load_manifests",
]
