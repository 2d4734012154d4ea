"""Health, readiness and Prometheus metrics on the guard's real ASGI app (the HTTP listener's, driven
in this process over httpx2's ASGI transport), after real calls through the guard's MCP server with
the example upstreams in memory; and OpenTelemetry spans, exported in memory and to a real OTLP/HTTP
receiver (a local HTTP server decoding the protobuf export)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mcp_guard.config import load_config
from mcp_guard.errors import ConfigError
from mcp_guard.guard.app import Guard, open_guard
from mcp_guard.guard.caller import Caller
from mcp_guard.guard.telemetry import Telemetry
from mcp_guard.identity.keys import hash_key, new_key
from mcp_guard.tracing import Tracing
from mcp_guard.transports.http import build_app
from tests.helpers import Deployment, _connect, assert_denied, memory_transports, meta

METRICS_KEY = new_key()
AGENT_KEY = new_key()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@asynccontextmanager
async def serving(
    deployment: Deployment, telemetry: Telemetry | None = None
) -> AsyncIterator[tuple[Guard, Any, httpx2.AsyncClient]]:
    """The guard with its upstreams in memory, a client session for support-bot, and an HTTP
    client on the guard's ASGI app (what `serve --http` runs)."""
    config, manifests = deployment.load()
    transports = memory_transports(manifests)
    async with (
        open_guard(config, manifests, ("support-bot",), transports, telemetry) as guard,
        AsyncExitStack() as stack,
    ):
        session = await stack.enter_async_context(_connect(Caller(guard, "support-bot"), {}))
        app = build_app(guard, "127.0.0.1")
        http = await stack.enter_async_context(
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1:8765")
        )
        yield guard, session, http


def with_metrics(deployment: Deployment, *, on: bool = True) -> Deployment:
    deployment.with_billing()
    deployment.agents = {"support-bot": ["support"]}
    deployment.extra_config["http"] = {"metrics": on, "metrics_keys": [hash_key(METRICS_KEY)]}
    return deployment


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- health ----------------------------------------------------------------------------------------


async def test_healthz_and_readyz_answer_without_a_credential_and_say_nothing_else(deployment: Deployment):
    deployment.with_billing()
    async with serving(deployment) as (_, _, http):
        for path, body in (("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})):
            answer = await http.get(path, headers={"Host": "10.1.2.3:8765"})  # a probe by address
            assert (answer.status_code, answer.json()) == (200, body)
            assert set(answer.headers) <= {"content-length", "content-type"}
            assert (await http.post(path)).status_code == 405
        assert (await http.get("/healthz/x")).status_code == 401  # anything else needs a credential


async def test_readyz_names_an_upstream_that_is_down_and_a_ledger_that_cannot_take_writes(
    deployment: Deployment,
):
    deployment.with_billing()
    deployment.add("broken", {"server": "broken", "upstream": {"command": "/nonexistent/mcp-upstream"},
                              "tools": {"x": {"allow": []}}})  # fmt: skip
    async with serving(deployment) as (_, _, http):
        answer = await http.get("/readyz")
        assert (answer.status_code, answer.json()) == (
            503,
            {"status": "unavailable", "failing": ["upstream broken"]},
        )
        blocker = sqlite3.connect(deployment.ledger_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the ledger past the busy timeout
        try:
            answer = await http.get("/readyz")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert answer.json()["failing"] == ["ledger", "upstream broken"]


# -- metrics ---------------------------------------------------------------------------------------


async def test_metrics_count_requests_by_decision_and_reason_for_a_listed_key_only(deployment: Deployment):
    with_metrics(deployment)
    deployment.agents = {"support-bot": ["support"]}
    async with serving(deployment) as (guard, session, http):
        assert (await session.call_tool("billing__lookup_order", {"order_id": "ORD-1001"})).is_error is False
        assert_denied(
            await session.call_tool(
                "billing__refund", {"order_id": "ORD-1001", "amount": 500, "currency": "USD"}
            ),
            "limit_exceeded",
        )
        assert_denied(
            await session.call_tool(
                "billing__refund", {"order_id": "ORD-1001", "amount": 900, "currency": "USD"}
            ),
            "limit_exceeded",
        )
        with pytest.raises(Exception, match="Unknown tool"):
            await session.call_tool("billing__nope", {})
        await guard.ledger.flush()
        for headers in (
            {},
            bearer("wrong-key"),
            bearer(AGENT_KEY),
            {"Authorization": f"Basic {METRICS_KEY}"},
        ):
            answer = await http.get("/metrics", headers=headers)
            assert answer.status_code == 401
            assert "mcp_guard" not in answer.text
            assert answer.headers["www-authenticate"] == 'Bearer realm="mcp-guard metrics"'
        answer = await http.get("/metrics", headers=bearer(METRICS_KEY))
        assert (
            await http.get("/metrics", headers={"Host": "evil.example"} | bearer(METRICS_KEY))
        ).status_code == 421
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    lines = set(answer.text.splitlines())
    labels = 'agent="support-bot",decision="{}",method="tools/call",reason="{}",server="{}"'
    assert f"mcp_guard_requests_total{{{labels.format('allow', '', 'billing')}}} 1.0" in lines
    assert f"mcp_guard_requests_total{{{labels.format('deny', 'limit_exceeded', 'billing')}}} 2.0" in lines
    assert f"mcp_guard_requests_total{{{labels.format('deny', 'unknown_tool', '')}}} 1.0" in lines
    assert 'mcp_guard_call_outcomes_total{outcome="ok",server="billing"} 1.0' in lines
    assert 'mcp_guard_request_duration_seconds_count{decision="deny",method="tools/call"} 3.0' in lines
    assert 'mcp_guard_upstream_up{server="billing"} 1.0' in lines
    assert "ORD-1001" not in answer.text  # arguments are never labels


async def test_metrics_are_not_served_unless_turned_on_and_need_a_key_when_they_are(deployment: Deployment):
    with_metrics(deployment, on=False)
    async with serving(deployment) as (_, _, http):
        assert (await http.get("/metrics", headers=bearer(METRICS_KEY))).status_code == 404
    deployment.extra_config["http"] = {"metrics": True}
    with pytest.raises(ConfigError, match="metrics_keys"):
        load_config(deployment.write())
    deployment.extra_config["http"] = {"metrics": True, "metrics_keys": ["sha256:short"]}
    with pytest.raises(ConfigError, match="metrics_keys"):
        load_config(deployment.write())


# -- traces ------------------------------------------------------------------------------------------


async def test_spans_follow_the_clients_traceparent_to_the_upstream_and_never_hold_arguments(
    deployment: Deployment,
):
    deployment.with_billing()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    async with serving(deployment, Telemetry(tracing=Tracing(provider))) as (_, session, _):
        allowed = await session.call_tool(
            "billing__refund", {"order_id": "ORD-1002", "amount": 12.5, "currency": "EUR"},
            meta=meta({"traceparent": traceparent}),
        )  # fmt: skip
        assert allowed.is_error is False
        assert_denied(
            await session.call_tool(
                "billing__refund", {"order_id": "ORD-77665544", "amount": 500, "currency": "USD"}
            ),
            "limit_exceeded",
        )
    served, upstream, denied = sorted(
        exporter.get_finished_spans(), key=lambda s: (s.start_time or 0, s.kind != SpanKind.SERVER)
    )
    assert (served.name, served.kind, upstream.name, upstream.kind) == (
        "tools/call billing__refund", SpanKind.SERVER, "tools/call refund", SpanKind.CLIENT,
    )  # fmt: skip
    assert served.parent is not None
    assert (format(served.context.trace_id, "032x"), format(served.parent.span_id, "016x")) == (
        TRACE_ID,
        CLIENT_SPAN,
    )
    assert upstream.parent is not None
    assert upstream.parent.span_id == served.context.span_id
    assert served.attributes is not None
    assert dict(served.attributes) | {"mcp_guard.call_id": "-"} == {
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool", "gen_ai.agent.name": "support-bot",
        "gen_ai.tool.name": "billing__refund", "mcp_guard.server": "billing", "mcp_guard.tool": "refund",
        "mcp_guard.decision": "allow", "mcp_guard.outcome": "ok", "mcp_guard.call_id": "-",
    }  # fmt: skip
    assert denied.parent is None  # no traceparent: a trace of its own
    assert denied.status.status_code == StatusCode.ERROR
    assert denied.attributes is not None
    assert (denied.attributes["error.type"], denied.attributes["mcp_guard.reason"]) == ("limit_exceeded",) * 2
    everything = repr([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert "ORD-" not in everything
    assert "77665544" not in everything
    assert "12.5" not in everything
    (forwarded,) = deployment.journal("billing")
    sent = forwarded["meta"]["traceparent"]  # the guard's own, naming its upstream span
    assert sent == f"00-{TRACE_ID}-{format(upstream.context.span_id, '016x')}-01"


class _Receiver(BaseHTTPRequestHandler):
    spans: list[Any]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}[
                "service.name"
            ]
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((self.path, service, span) for span in scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, *args: object) -> None:
        pass


async def test_spans_reach_a_real_otlp_http_receiver_as_the_otel_variables_say(
    deployment: Deployment, monkeypatch
):
    handler = type("Receiver", (_Receiver,), {"spans": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "guard-under-test")
        deployment.with_billing()
        async with serving(deployment) as (guard, session, _):
            assert guard.telemetry.tracing.on
            await session.call_tool("billing__lookup_order", {"order_id": "ORD-1001"})
        # Leaving the guard shut the tracer down: what was batched is exported by then.
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    got = sorted((path, service, span.name) for path, service, span in handler.spans)
    assert got == [
        ("/v1/traces", "guard-under-test", "tools/call billing__lookup_order"),
        ("/v1/traces", "guard-under-test", "tools/call lookup_order"),
    ]


def test_tracing_is_off_unless_the_otel_variables_name_an_exporter() -> None:
    assert not Tracing.from_environment({}).on
    assert not Tracing.from_environment({"OTEL_SERVICE_NAME": "x"}).on
    assert not Tracing.from_environment(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}
    ).on
    assert not Tracing.from_environment(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}
    ).on
    console = Tracing.from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert console.on
    console.close()
