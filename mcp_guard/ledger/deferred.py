"""Deferred outcomes (`durability: normal`), as every store keeps them: an outcome rides on the next
transaction that appends, and one that no transaction carried within OUTCOME_DELAY is committed on
its own by the store's `maintain` task. One waiter and one loop, shared by the stores."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from mcp_guard.errors import LedgerError

OUTCOME_DELAY = 0.02
"""How long an outcome may wait for the next decision's transaction to carry it before it is
committed on its own."""


class DeferredOutcomes:
    """Told of each deferred outcome (`deferred`); `run` commits them (`flush`) once OUTCOME_DELAY
    has passed with them still waiting. A failure is logged once and retried, `pause` seconds
    later, until the ledger takes them."""

    def __init__(self) -> None:
        self._waiting: anyio.Event | None = None  # made on the event loop, when first needed

    def deferred(self) -> None:
        if self._waiting is None:
            self._waiting = anyio.Event()
        self._waiting.set()

    async def run(
        self, flush: Callable[[], Awaitable[None]], log: Callable[[str], None], pause: float = 0.0
    ) -> None:
        failing = False
        while True:
            if self._waiting is None:
                self._waiting = anyio.Event()
            await self._waiting.wait()
            self._waiting = anyio.Event()
            await anyio.sleep(OUTCOME_DELAY)
            try:
                await flush()
                failing = False
            except LedgerError as exc:
                if not failing:
                    log(f"could not record call outcomes yet; retrying: {exc}")
                failing = True
                await anyio.sleep(pause)
                self._waiting.set()
