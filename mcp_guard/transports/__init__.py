"""How clients reach the guard: stdio and Streamable HTTP. What both share: stopping cleanly on
SIGTERM or SIGINT (calls in flight end and are recorded, every outcome is committed)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import anyio

from mcp_guard.secrets import LOGGER


async def stop_on_signal(stop: Callable[[], object]) -> None:
    """Wait for SIGTERM or SIGINT, say which, and call `stop` once, so the transport ends serving
    and the guard closes its upstreams and its ledger instead of dying mid-write."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            LOGGER.warning(f"stopping on {signal.Signals(signum).name}")
            stop()
            return
