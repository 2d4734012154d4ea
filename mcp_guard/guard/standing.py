"""What the ledger says of each agent's standing now: the just-in-time activations in force and
the lockouts. A guard process keeps the latest reading (what it lists and decides with), reads it
again every `POLL` seconds and tells its clients when it changed, whichever process wrote the
change or whenever one expired. The transaction that records a decision checks it again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mcp_guard.ledger.base import Window

POLL = 0.5
"""Seconds between readings: a change reaches connected clients within about twice this."""


@dataclass(frozen=True, slots=True)
class Standing:
    """Each agent's activations in force ((server, tool) pairs) and the agents locked out."""

    active: Mapping[str, frozenset[tuple[str, str]]] = field(default_factory=dict)
    locked: frozenset[str] = frozenset()

    def of(self, agent: str) -> tuple[frozenset[tuple[str, str]], bool]:
        """(the agent's activations in force, whether it is locked out)."""
        return self.active.get(agent, frozenset()), agent in self.locked


def read(window: Window) -> Standing:
    """The standing of every agent as `window` sees it now."""
    active: dict[str, set[tuple[str, str]]] = {}
    for event in window.activations():
        if event.agent and event.server and event.tool:
            active.setdefault(event.agent, set()).add((event.server, event.tool))
    locked = frozenset(e.agent for e in window.lockouts() if e.agent)
    return Standing({agent: frozenset(pairs) for agent, pairs in active.items()}, locked)
