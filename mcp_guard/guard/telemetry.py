"""What the guard tells the people who operate it about its calls: Prometheus metrics (when
`http.metrics` is on) and OpenTelemetry spans (when the `otel` extra is installed and OTEL_*
variables configure an exporter: mcp_guard/tracing.py). A served tools/call is watched from the caller
(`Telemetry.call`); its decision and outcome are learnt from the ledger writes the call makes
(observed.py), so the call pipeline knows nothing of telemetry. Never sees arguments."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mcp_guard.ledger.entries import CallRecord
from mcp_guard.tracing import Tracing, activate, deactivate

METHOD = "tools/call"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Seen:
    """What one served call did, as its ledger writes tell: its decision and its outcome."""

    record: CallRecord | None = None
    outcome: str | None = None


_CURRENT: ContextVar[Seen | None] = ContextVar("mcp_guard_call", default=None)


class Metrics:
    """The guard's Prometheus metrics, in a registry of its own (never the process-wide default)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mcp_guard_requests",
            "Requests decided, by method, agent, server, decision and reason (empty when allowed)",
            ["method", "agent", "server", "decision", "reason"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "mcp_guard_call_outcomes",
            "What became of allowed calls: ok, error, upstream_error, timeout, cancelled",
            ["server", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mcp_guard_request_duration_seconds",
            "Time from a request's arrival to its answer, by method and decision",
            ["method", "decision"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_up = Gauge(
            "mcp_guard_upstream_up", "1 while the upstream runs, else 0", ["server"], registry=self.registry
        )

    def render(self, servers: Collection[str], down: Collection[str]) -> bytes:
        """The exposition text, with the upstreams' state as of now."""
        from prometheus_client import generate_latest

        for server in servers:
            self.upstream_up.labels(server).set(0 if server in down else 1)
        return generate_latest(self.registry)


class Telemetry:
    """Metrics and traces for one guard process; each part is off unless configured."""

    def __init__(self, *, metrics: bool = False, tracing: Tracing | None = None) -> None:
        self.metrics = Metrics() if metrics else None
        self.tracing = tracing if tracing is not None else Tracing.from_environment()
        activate(self.tracing)  # upstream requests report to it

    def close(self) -> None:
        """Export the spans still buffered; upstream requests report to nothing again."""
        deactivate(self.tracing)
        self.tracing.close()

    @asynccontextmanager
    async def call(self, agent: str, name: str, meta: Mapping[str, Any] | None) -> AsyncIterator[Seen]:
        """Watch one served tools/call of `name` by `agent` (a client's `_meta` may carry its trace)."""
        seen = Seen()
        token = _CURRENT.set(seen)
        started = time.perf_counter()
        try:
            with self.tracing.served_call(agent, name, meta, seen):
                yield seen
        finally:
            _CURRENT.reset(token)
            self._count(agent, seen, time.perf_counter() - started)

    def _count(self, agent: str, seen: Seen, seconds: float) -> None:
        if self.metrics is None:
            return
        rec = seen.record
        if rec is None:  # refused before the ledger took a decision: it could not be recorded
            decision, reason, server = "deny", "ledger_unavailable", ""
        else:
            decision, reason, server = rec.decision, rec.reason or "", rec.server or ""
        self.metrics.requests.labels(METHOD, agent, server, decision, reason).inc()
        self.metrics.latency.labels(METHOD, decision).observe(seconds)
        if seen.outcome is not None:
            self.metrics.outcomes.labels(server, seen.outcome).inc()


def decided(record: CallRecord) -> None:
    """The ledger committed the decision of the call being served (if one is being watched)."""
    seen = _CURRENT.get()
    if seen is not None:
        seen.record = record


def ended(outcome: str) -> None:
    """The ledger took the outcome of the call being served."""
    seen = _CURRENT.get()
    if seen is not None:
        seen.outcome = outcome
