"""Serving Streamable HTTP at /mcp. Our own ASGI middleware stands in front of the SDK's session
manager and, on every request: checks Host/Origin, has the agent authenticated from
`Authorization: Bearer` alone (identity/), binds each MCP session to the agent that opened it, caps
and strictly parses the body. Only then does the SDK see the request, with the Agent in the scope."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import anyio
import mcp_types as types
import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_guard.config import HttpConfig
from mcp_guard.errors import ListenError
from mcp_guard.guard.app import Guard, build_server
from mcp_guard.guard.caller import AGENT_SCOPE_KEY, REQUEST_AGENT, Caller
from mcp_guard.identity.base import Authenticator, Refusal, bearer_credential
from mcp_guard.identity.oauth import protected_resource_metadata
from mcp_guard.logs import json_lines
from mcp_guard.policy.engine import Agent
from mcp_guard.secrets import LOGGER
from mcp_guard.transports import ops, stop_on_signal
from mcp_guard.transports.coalesce import GatheringHTTPProtocol
from mcp_guard.transports.credentials import authenticators, metadata_paths, refused
from mcp_guard.transports.lean import LeanPath, waits_for_approval
from mcp_guard.transports.origins import LOOPBACK_HOSTS, LOOPBACK_ORIGINS, Allowed
from mcp_guard.transports.sessions import SESSION_IDLE_TIMEOUT, SessionOwners
from mcp_guard.wire import StrictJSONError, parse_strict

MCP_PATH = "/mcp"
MAX_SESSIONS = 1000
"""Open MCP sessions in this process; one more gets 503 until one ends or idles out."""
MAX_SESSIONS_PER_AGENT = 100
"""So that one agent that never closes its sessions cannot starve the others."""
MAX_CONNECTIONS = 1000
"""Concurrent HTTP connections (uvicorn answers 503 beyond)."""
BODY_TIMEOUT = 30.0
"""Seconds a client may take to send a request body (slow-drip bodies are cut off)."""
SESSION_HEADER = "mcp-session-id"


def parse_listen(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` (IPv6 hosts in brackets) -> (host, port); a bare port binds loopback."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or not host:
        host = ""
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        msg = f"{text!r} is not [HOST:]PORT (e.g. 8765, 127.0.0.1:8765 or [::1]:8765)"
        raise ListenError(msg)
    return host, int(port_text)


def _host_pattern(host: str) -> str | None:
    """The Host header pattern for a specific address we listen on (none for a wildcard)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:*"
    if address.is_unspecified:
        return None
    return f"[{host}]:*" if address.version == 6 else f"{host}:*"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def allowed_sources(http: HttpConfig, host: str) -> tuple[Allowed, list[str]]:
    """DNS-rebinding protection: loopback names, the address we listen on, and what guard.yaml
    adds; also the patterns from guard.yaml that cannot be parsed (they allow nothing)."""
    hosts = [*LOOPBACK_HOSTS, *http.allowed_hosts]
    if (own := _host_pattern(host)) is not None and own not in hosts:
        hosts.append(own)
    return Allowed.of(hosts, [*LOOPBACK_ORIGINS, *http.allowed_origins])


# -- the middleware -------------------------------------------------------------------------------


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":"))
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _rpc_error(status: int, code: int, message: str) -> Response:
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return _json(status, error)


class GuardMiddleware:
    """Everything the guard checks before the SDK sees an HTTP request; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
        allowed: Allowed,
        authenticator: Authenticator,
        lean: LeanPath | None = None,
    ) -> None:
        self.app = app
        self.lean = lean
        self.guard = guard
        self.allowed = allowed
        self.authenticator = authenticator
        self.sessions = SessionOwners()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in (ops.HEALTH, ops.READY):  # for probes that know no Host name: reveals nothing
            await ops.serve_health(self.guard, scope, receive, send)
            return
        request = Request(scope)
        # Host or Origin of another site (DNS rebinding), compared exactly, never by prefix.
        if not self.allowed.host_ok(request.headers.get("host")):
            await Response("Invalid Host header", status_code=421)(scope, receive, send)
            return
        origins = request.headers.getlist("origin")
        if len(origins) > 1 or not self.allowed.origin_ok(origins[0] if origins else None):
            await Response("Invalid Origin header", status_code=403)(scope, receive, send)
            return
        if any(name.lower() == "access_token" for name, _ in parse_qsl(request.url.query)):
            body = {
                "error": "invalid_request",
                "error_description": "credentials in the URL are refused; send Authorization: Bearer",
            }
            await _json(400, body)(scope, receive, send)
            return
        if scope["path"] == ops.METRICS:  # its own keys, never an agent's
            await ops.serve_metrics(self.guard, scope, receive, send)
            return
        oauth = self.guard.policy.config.oauth
        if oauth is not None and scope["path"] in metadata_paths(oauth):
            # RFC 9728 metadata: public, so that a client can find the authorization server.
            if scope["method"] not in ("GET", "HEAD"):
                await Response(status_code=405, headers={"Allow": "GET, HEAD"})(scope, receive, send)
                return
            headers = {"Cache-Control": "max-age=300", "Access-Control-Allow-Origin": "*"}
            await _json(200, protected_resource_metadata(oauth), headers)(scope, receive, send)
            return
        agent = await self._identify(scope)
        if isinstance(agent, Response):
            await agent(scope, receive, send)
            return
        await self._serve(agent, scope, receive, send)

    async def _identify(self, scope: Scope) -> Agent | Response:
        values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        credential = bearer_credential(values)
        if isinstance(credential, Refusal):
            result: Agent | Refusal = credential
        else:
            result = await self.authenticator.authenticate(credential)
        if isinstance(result, Agent):
            return result
        if values:  # a request with no credential at all is not worth a log line
            client = scope.get("client") or ("?", 0)
            self.guard.log(f"HTTP {result.status} for {client[0]}: {result.problem}")
        return refused(result, self.guard.policy.config.oauth)

    async def _serve(self, agent: Agent, scope: Scope, receive: Receive, send: Send) -> None:
        sids = Request(scope).headers.getlist(SESSION_HEADER)
        if len(sids) > 1:  # we and the SDK must not read different ones
            await _rpc_error(400, types.INVALID_REQUEST, "Bad request: more than one session id")(
                scope, receive, send
            )
            return
        sid = sids[0] if sids else None
        if sid is not None and self.sessions.owner(sid) != agent.name:
            # Another agent's session, or one we never saw opened: exactly as if it did not exist.
            await _rpc_error(404, types.INVALID_REQUEST, "Session not found")(scope, receive, send)
            return
        message: Any = None
        if scope["method"] == "POST":
            read = await self._read_body(scope, receive)
            if isinstance(read, Response):
                await read(scope, receive, send)
                return
            body, message = read
            receive = _replay(body, receive)
        if (
            sid is None
            and isinstance(message, dict)
            and message.get("method") == "initialize"
            and self.sessions.count(agent.name) >= MAX_SESSIONS_PER_AGENT
        ):
            await _rpc_error(503, types.INTERNAL_ERROR, "Too many open sessions")(scope, receive, send)
            return

        scope[AGENT_SCOPE_KEY] = agent
        REQUEST_AGENT.set(agent)  # this request's task only
        # The SDK's own session binding compares this principal too (a second lock on the door).
        token = AccessToken(token="-", client_id=agent.name, scopes=[], subject=agent.name)  # noqa: S106
        scope["user"] = AuthenticatedUser(token)
        if sid is None and self.lean is not None and await self.lean.serve(scope, message, send):
            return
        opened: list[str] = []

        async def watch(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
                new = next((v.decode() for k, v in msg.get("headers", []) if k == b"mcp-session-id"), None)
                if sid is None and new is not None and status < 400:
                    self.sessions.opened(new, agent.name)
                    opened.append(new)
                elif sid is not None and (status == 404 or (scope["method"] == "DELETE" and status < 300)):
                    self.sessions.forget(sid)
            await send(msg)

        if sid is not None:
            self.sessions.begin(sid)
        try:
            await self.app(scope, receive, watch)
        finally:
            for done in [*([sid] if sid else []), *opened]:
                self.sessions.end(done)

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, Any] | Response:
        """The whole body, within the size cap, parsed strictly; or the response refusing it."""
        limit = self.guard.policy.config.limits.max_message_bytes
        too_large = _rpc_error(413, types.PARSE_ERROR, f"Parse error: message is larger than {limit} bytes")
        declared = Request(scope).headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(BODY_TIMEOUT) as timer:
            while True:
                msg = await receive()
                if msg["type"] != "http.request":
                    return Response(status_code=400)  # the client went away
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return too_large
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
        if timer.cancelled_caught:
            return _rpc_error(408, types.PARSE_ERROR, "Parse error: the request body was not sent in time")
        body = b"".join(chunks)
        try:
            message = parse_strict(body, limit)
        except StrictJSONError as exc:
            return _rpc_error(400, types.PARSE_ERROR, f"Parse error: {exc}")
        if isinstance(message, list):
            return _rpc_error(
                400, types.INVALID_REQUEST, "Invalid request: JSON-RPC batches are not accepted"
            )
        return body, message


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the body we already read to the SDK, then the client's later messages."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


# -- the app and the server -----------------------------------------------------------------------


def build_app(guard: Guard, host: str) -> GuardMiddleware:
    """The ASGI app: our middleware around a Starlette app serving the SDK's session manager."""
    server = build_server(Caller(guard))
    config = guard.policy.config
    allowed, unparsable = allowed_sources(config.http, host)
    for pattern in unparsable:
        guard.log(
            f"http: {pattern!r} in allowed_hosts or allowed_origins cannot be parsed; it allows nothing"
        )
    manager = StreamableHTTPSessionManager(
        app=server,
        # GuardMiddleware has checked Host and Origin exactly; the SDK's prefix match would only
        # second-guess it. The SDK still checks a POST's Content-Type.
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        session_idle_timeout=SESSION_IDLE_TIMEOUT,
        max_request_body_size=config.limits.max_message_bytes,
        max_sessions=MAX_SESSIONS,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    inner = Starlette(routes=[Route(MCP_PATH, endpoint=StreamableHTTPASGIApp(manager))], lifespan=lifespan)
    lean = LeanPath(server, manager, MCP_PATH, waits_for_approval(guard))
    return GuardMiddleware(inner, guard, allowed, authenticators(guard), lean)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: serve_http stops it, and the guard then closes its
    upstreams and ledger instead of being killed by a re-raised signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def bind(host: str, port: int) -> socket.socket:
    """Bind now, so that a busy port is a clear error rather than a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a kept-alive client waits 40 ms for each response's body (Nagle against its
    # delayed ACK; uvicorn sends headers and body apart).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        msg = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise ListenError(msg) from None
    sock.setblocking(False)
    return sock


async def serve_http(guard: Guard, sock: socket.socket) -> None:
    """Serve until SIGINT or SIGTERM, then finish in-flight requests (briefly) and return."""
    host, port = sock.getsockname()[:2]
    app = build_app(guard, host)
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        http=GatheringHTTPProtocol,  # one write per response
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=5,
        log_config=None if json_lines() else uvicorn.config.LOGGING_CONFIG,
    )
    server = _Uvicorn(config)
    shown = f"[{host}]" if ":" in host else host
    if not _is_loopback(host):
        LOGGER.warning(
            f"warning: listening on {shown}, beyond this machine, in plain HTTP: put a TLS "
            "proxy in front and list its names in http.allowed_hosts"
        )
    LOGGER.info(f"serving Streamable HTTP at http://{shown}:{port}{MCP_PATH}")
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal, partial(setattr, server, "should_exit", True))
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
