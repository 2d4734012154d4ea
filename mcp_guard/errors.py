"""The one exception tree of mcp-guard. Denials are values (policy.Decision), not exceptions;
these are for broken things: a bad config, a dead disk, an upstream that cannot be reached.

    GuardError
    ├── ConfigError            a config or manifest cannot be loaded (exit 2)
    ├── ListenError            the HTTP address cannot be parsed or bound
    ├── LedgerError            the ledger cannot be opened, read or verified
    │   └── LedgerUnavailable  a write could not be committed: the call is refused
    └── UpstreamError          an upstream failed after or while being contacted
        ├── UpstreamUnavailable  it cannot be started or reached
        └── UpstreamTimeout      it did not answer within its timeout
"""

from __future__ import annotations


class GuardError(Exception):
    """Base of every error mcp-guard raises on purpose."""


class ConfigError(GuardError):
    """A config or manifest problem, reported as `file:path: reason`."""

    def __init__(self, file: str, path: str, reason: str) -> None:
        self.file = file
        self.path = path
        self.reason = reason
        where = f"{file}:{path}" if path else file
        super().__init__(f"{where}: {reason}")


class UsageError(GuardError):
    """Bad usage of a command: exit 2."""


class ListenError(GuardError):
    """The HTTP address cannot be parsed or bound."""


class LedgerError(GuardError):
    """The ledger cannot be opened, read or verified."""


class LedgerUnavailable(LedgerError):
    """A ledger write could not be committed; the call it records must not go ahead."""


class UpstreamError(GuardError):
    """An upstream failed; the text is for operators, never for agents."""


class UpstreamUnavailable(UpstreamError):
    """The upstream cannot be started or reached."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""
