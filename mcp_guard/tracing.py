"""OpenTelemetry traces of the guard: a span per served tools/call (kind SERVER, its parent the
client's `_meta.traceparent`) and one per upstream request (kind CLIENT, made current while the
MCP SDK's client sends it, so the `_meta.traceparent` the upstream gets names the guard's span).
On only when the `otel` extra is installed and the standard OTEL_* variables name an exporter.
Attribute names follow the OpenTelemetry semantic conventions for MCP and GenAI where they have
one, `mcp_guard.*` otherwise; arguments and results are never attributes. Imports nothing from
mcp_guard but the logger."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from mcp_guard.secrets import LOGGER

METHOD = "tools/call"
_EXPORTER_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Decided(Protocol):
    """A call's decision as the ledger took it (ledger.entries.CallRecord)."""

    @property
    def decision(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def server(self) -> str | None: ...
    @property
    def tool(self) -> str: ...
    @property
    def call_id(self) -> str: ...


class Watched(Protocol):
    """What the span of a served call reports at its end (telemetry.Seen)."""

    @property
    def record(self) -> Decided | None: ...

    @property
    def outcome(self) -> str | None: ...


def configured(env: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces: an OTLP endpoint or a traces exporter named
    (not `none`), and the SDK not disabled."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(env.get(name) for name in _EXPORTER_VARIABLES)


class Tracing:
    """The guard's tracer, or nothing (every method then costs a branch)."""

    def __init__(self, provider: Any | None = None) -> None:
        """`provider`: an opentelemetry-sdk TracerProvider (tests hand one with an in-memory
        exporter); None turns tracing off."""
        self._provider = provider
        self._tracer = provider.get_tracer("mcp-guard") if provider is not None else None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Tracing:
        env = os.environ if env is None else env
        if not configured(env):
            return cls()
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        except ImportError:
            LOGGER.warning(
                "warning: OTEL_* variables are set but mcp-guard[otel] is not installed: no traces"
            )
            return cls()
        kind = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
        if kind == "console":
            exporter: Any = ConsoleSpanExporter()
        elif kind == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_* itself
        else:
            LOGGER.warning(
                f"warning: OTEL_TRACES_EXPORTER={kind!r} is not supported (otlp, console): no traces"
            )
            return cls()
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        provider = TracerProvider(resource=Resource.create({"service.name": "mcp-guard"} | _service(env)))
        provider.add_span_processor(BatchSpanProcessor(exporter))  # reads OTEL_BSP_*
        return cls(provider)

    @property
    def on(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def served_call(
        self, agent: str, name: str, meta: Mapping[str, Any] | None, seen: Watched
    ) -> Iterator[None]:
        """The SERVER span of one tools/call, current while it runs; named and finished from what
        `seen` says at its end (a name that resolved to no tool stays out of the span's name)."""
        if self._tracer is None:
            yield
            return
        from opentelemetry.trace import SpanKind

        attributes = {
            "mcp.method.name": METHOD,
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.agent.name": agent,
        }
        with self._tracer.start_as_current_span(
            METHOD, context=_parent(meta), kind=SpanKind.SERVER, attributes=attributes, record_exception=False
        ) as span:
            try:
                yield
            finally:
                _finish(span, name, seen)

    @contextmanager
    def upstream_call(self, server: str, tool: str) -> Iterator[None]:
        """The CLIENT span of one request to an upstream, current while the SDK sends it."""
        if self._tracer is None:
            yield
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        attributes = {
            "mcp.method.name": METHOD,
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "mcp_guard.server": server,
        }
        with self._tracer.start_as_current_span(
            f"{METHOD} {tool}", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False
        ) as span:
            try:
                yield
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR))
                raise

    def close(self) -> None:
        """Export what is buffered and stop."""
        if self._provider is not None:
            self._provider.shutdown()


def _service(env: Mapping[str, str]) -> dict[str, str]:
    name = env.get("OTEL_SERVICE_NAME")
    return {"service.name": name} if name else {}


def _parent(meta: Mapping[str, Any] | None) -> Any:
    """The context a client's `_meta.traceparent` (and `tracestate`) names, or None (a new trace)."""
    if not meta:
        return None
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {key: meta[key] for key in ("traceparent", "tracestate") if isinstance(meta.get(key), str)}
    if "traceparent" not in carrier:
        return None
    context = TraceContextTextMapPropagator().extract(carrier)
    return context if get_current_span(context).get_span_context().is_valid else None


def _finish(span: Any, name: str, seen: Watched) -> None:
    from opentelemetry.trace import Status, StatusCode

    rec = seen.record
    if rec is None:
        span.set_attributes({"mcp_guard.decision": "deny", "mcp_guard.reason": "ledger_unavailable"})
        span.set_attribute("error.type", "ledger_unavailable")
        span.set_status(Status(StatusCode.ERROR))
        return
    span.set_attributes({"mcp_guard.decision": rec.decision, "mcp_guard.call_id": rec.call_id})
    if rec.server is not None:
        span.update_name(f"{METHOD} {name}")
        span.set_attributes(
            {"gen_ai.tool.name": name, "mcp_guard.server": rec.server, "mcp_guard.tool": rec.tool}
        )
    if rec.reason:
        span.set_attribute("mcp_guard.reason", rec.reason)
    if seen.outcome is not None:
        span.set_attribute("mcp_guard.outcome", seen.outcome)
    failed = (
        rec.reason if rec.decision != "allow" else seen.outcome if seen.outcome not in (None, "ok") else None
    )
    if failed:
        span.set_attribute("error.type", failed)
        span.set_status(Status(StatusCode.ERROR))


_active = Tracing()


def activate(tracing: Tracing) -> None:
    """Make `tracing` the one upstream requests report to (a guard process has one)."""
    global _active
    _active = tracing


def deactivate(tracing: Tracing) -> None:
    """Upstream requests report to nothing, if `tracing` was the active one."""
    global _active
    if _active is tracing:
        _active = Tracing()


def upstream_call(server: str, tool: str) -> Any:
    """The active tracing's span for one upstream request (a context manager)."""
    return _active.upstream_call(server, tool)
