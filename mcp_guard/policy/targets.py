"""What a request is about, at the policy boundary: a tool, a resource (by URI), a prompt, or a
completion of a prompt's or a resource template's argument, of one upstream server. The ledger
records the MCP method beside it. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["tool", "resource", "prompt", "completion"]
METHODS: dict[Kind, str] = {
    "tool": "tools/call",
    "resource": "resources/read",
    "prompt": "prompts/get",
    "completion": "completion/complete",
}
"""The MCP method that acts on each kind of target, as the ledger's `method` column records it."""


@dataclass(frozen=True, slots=True)
class Target:
    """A tool, resource, prompt or completion of one upstream server. `server` is None for a name that
    resolves to nothing the agent may see; `name` is then the name as sent (escaped)."""

    kind: Kind
    server: str | None
    name: str

    @property
    def method(self) -> str:
        return METHODS[self.kind]

    def __str__(self) -> str:
        return self.name if self.server is None else f"{self.server}.{self.name}"
