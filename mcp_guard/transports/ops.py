"""The HTTP listener's endpoints for the people who run the guard: `/healthz` (the process
serves) and `/readyz` (the ledger takes writes and every upstream is up), answered without a
credential and revealing nothing else; and Prometheus `/metrics`, when `http.metrics` is on, to
callers presenting a key listed under `http.metrics_keys` (never an agent's key: the two lists are
apart). Imports the guard, identity's key hashing and the config; nothing of the MCP SDK."""

from __future__ import annotations

import hashlib
import hmac
import json

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from mcp_guard.guard.app import Guard
from mcp_guard.identity.base import Refusal, bearer_credential

HEALTH = "/healthz"
READY = "/readyz"
METRICS = "/metrics"
READY_TIMEOUT = 3.0
"""Seconds readiness may take to get the ledger's write lock; longer counts as not ready."""
_REALM = "mcp-guard metrics"


def _json(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, separators=(",", ":"))
    return Response(text, status_code=status, media_type="application/json", headers=headers)


async def serve_health(guard: Guard, scope: Scope, receive: Receive, send: Send) -> None:
    """/healthz and /readyz: GET or HEAD only; the body says ok, or names what is not ready."""
    if scope["method"] not in ("GET", "HEAD"):
        await Response(status_code=405, headers={"Allow": "GET, HEAD"})(scope, receive, send)
        return
    if scope["path"] == HEALTH:
        await _json(200, {"status": "ok"})(scope, receive, send)
        return
    failing = await not_ready(guard)
    if failing:
        await _json(503, {"status": "unavailable", "failing": failing})(scope, receive, send)
    else:
        await _json(200, {"status": "ready"})(scope, receive, send)


async def not_ready(guard: Guard) -> list[str]:
    """What keeps the guard from serving calls: `ledger` (it cannot take a write now) and
    `upstream NAME` for each upstream that is not running (a start is tried, after its backoff)."""
    failing: list[str] = []
    with anyio.move_on_after(READY_TIMEOUT) as waited:
        try:
            await guard.ledger.hold(_nothing)  # a write transaction that appends nothing
        except Exception as exc:  # whatever it is, the ledger cannot take the next decision
            guard.log(f"readyz: the ledger cannot take writes: {exc}")
            failing.append("ledger")
    if waited.cancelled_caught:
        failing.append("ledger")
    await guard.pool.catalog()  # starts again the upstreams that are down and due a try
    failing += [f"upstream {name}" for name in sorted(guard.pool.down())]
    return failing


def _nothing(_: object) -> None:
    return None


async def serve_metrics(guard: Guard, scope: Scope, receive: Receive, send: Send) -> None:
    """/metrics: 404 unless `http.metrics` is on; 401 without a listed metrics key."""
    http = guard.policy.config.http
    metrics = guard.telemetry.metrics
    if not http.metrics or metrics is None:
        await Response("Not Found", status_code=404)(scope, receive, send)
        return
    values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
    credential = bearer_credential(values)
    if isinstance(credential, Refusal) or not _listed(credential, http.metrics_keys):
        if values:
            client = scope.get("client") or ("?", 0)
            guard.log(f"metrics: HTTP 401 for {client[0]}: the key is not listed under http.metrics_keys")
        challenge = f'Bearer realm="{_REALM}"'
        await Response("Unauthorized", status_code=401, headers={"WWW-Authenticate": challenge})(
            scope, receive, send
        )
        return
    if scope["method"] not in ("GET", "HEAD"):
        await Response(status_code=405, headers={"Allow": "GET, HEAD"})(scope, receive, send)
        return
    from prometheus_client import CONTENT_TYPE_LATEST

    body = metrics.render(guard.pool.upstreams.keys(), guard.pool.down())
    await Response(body, media_type=CONTENT_TYPE_LATEST)(scope, receive, send)


def _listed(key: str, hashes: tuple[str, ...]) -> bool:
    """Whether the key's `sha256:` hash is listed, comparing every listed hash in constant time."""
    presented = ("sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()).encode()
    found = False
    for listed in hashes:
        found |= hmac.compare_digest(presented, listed.encode())
    return found
