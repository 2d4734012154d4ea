"""guard.yaml's `approvals.notify.command`, run for each approval request a guard files, with the
request as one JSON object on stdin, in the background: the call waits for an operator, not for the
command. A failure or a timeout is logged."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from mcp_guard.config import NotifyConfig
from mcp_guard.guard.holds import Hold

if TYPE_CHECKING:
    from mcp_guard.guard.app import Guard


def approval_filed(guard: Guard, hold: Hold, request: Mapping[str, Any]) -> None:
    """Start the notify command for a request just filed (nothing if none is configured)."""
    notify = guard.policy.config.approvals.notify
    if notify is None or guard.pool.tg is None:
        return
    fields = {key: request.get(key) for key in ("id", "arguments", "requested_at", "expires_at")}
    body = {**fields, "agent": hold.agent, "server": hold.server, "tool": hold.tool}
    guard.pool.tg.start_soon(_run, guard, notify, json.dumps(body).encode())


async def _run(guard: Guard, notify: NotifyConfig, body: bytes) -> None:
    timeout = notify.timeout
    try:
        with anyio.fail_after(timeout):
            done = await anyio.run_process(list(notify.command), input=body, check=False)
        if done.returncode != 0:
            said = guard.scrubber.record(done.stderr.decode("utf-8", "replace").strip()[:200])
            guard.log(f"approvals.notify exited with status {done.returncode}: {said}")
    except TimeoutError:
        guard.log(f"approvals.notify did not finish within {timeout:g} s")
    except OSError as exc:
        guard.log(f"approvals.notify could not be run: {exc}")
