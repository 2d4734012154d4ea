"""Which agent opened each MCP session of the HTTP listener, and how many each has open. Knows
nothing of requests or credentials: the middleware tells it who opened what. Imports nothing from
mcp_guard."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

SESSION_IDLE_TIMEOUT = 30 * 60.0
"""Seconds the SDK keeps an idle session; past it (and a minute more) a session stops counting."""


@dataclass
class _Owned:
    agent: str
    in_flight: int = 0
    idle_since: float = 0.0


class SessionOwners:
    """Which agent opened each MCP session. A session id is not a credential: it only ever serves
    the agent that opened it, and an id we did not see opened serves nobody."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._owned: dict[str, _Owned] = {}
        self._clock = clock

    def owner(self, sid: str) -> str | None:
        entry = self._owned.get(sid)
        return entry.agent if entry else None

    def opened(self, sid: str, agent: str) -> None:
        self._owned[sid] = _Owned(agent, in_flight=1)

    def begin(self, sid: str) -> None:
        if (entry := self._owned.get(sid)) is not None:
            entry.in_flight += 1

    def end(self, sid: str) -> None:
        if (entry := self._owned.get(sid)) is not None:
            entry.in_flight -= 1
            entry.idle_since = self._clock()

    def forget(self, sid: str) -> None:
        self._owned.pop(sid, None)

    def count(self, agent: str) -> int:
        """Open sessions of `agent`, after forgetting those the SDK has surely expired: idle
        longer than its idle timeout (it sees exactly the requests we pass it)."""
        horizon = self._clock() - SESSION_IDLE_TIMEOUT - 60.0
        for sid, entry in list(self._owned.items()):
            if entry.in_flight <= 0 and entry.idle_since < horizon:
                del self._owned[sid]
        return sum(1 for entry in self._owned.values() if entry.agent == agent)
