"""The lean path for the commonest HTTP request: a 2026-07-28 `tools/call` or `tools/list` POST
with no session and nothing to stream. GuardMiddleware has already checked Host, Origin and the
credential and parsed the body strictly; this runs the SDK's own modern-entry checks on it (the
same functions, in the same order) and dispatches it through the server's handler table with the
SDK's `serve_one`, in the request's own task: no Starlette routing, no second parse, no per-request
task group or memory stream. It answers only when the SDK's entry would answer the same request
with the handler's JSON result; for anything else (another method, a progress token, a call that
may wait for an operator, a header or envelope the SDK rejects, a client that cannot take both
JSON and SSE) it declines and the request goes to the SDK's Streamable HTTP handling unchanged.
Imports the guard's server for its type only."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

# The SDK's single-exchange pieces, private to it: reused so that both paths build the same
# dispatch context and map a handler's exception to the same JSON-RPC error (mcp is pinned < 3).
from mcp.server._streamable_http_modern import _SingleExchangeDispatchContext, _to_jsonrpc_response
from mcp.server.connection import Connection
from mcp.server.lowlevel.server import Server
from mcp.server.runner import serve_one
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp.shared.inbound import _annotated_positions as annotated_positions
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import JSONRPCError, JSONRPCRequest
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Scope, Send

from mcp_guard.guard.caller import REQUEST_AGENT

if TYPE_CHECKING:
    from mcp_guard.guard.app import Guard

LEAN_METHODS = frozenset({"tools/call", "tools/list"})
MAX_SCHEMAS = 4096
_PARAM_PREFIX = MCP_PARAM_HEADER_PREFIX.lower()
_JSON_HEADERS = [(b"content-type", b"application/json")]


class LeanPath:
    """See the module docstring. `may_wait(params)`: whether a `tools/call` with these params could
    wait (for an operator's approval) long enough that the SDK would keep its stream open with SSE
    pings; such a call takes the SDK's path. A client that closes its connection does not cancel
    a call answered here (as with the SDK's own JSON responses): it runs to its end, recorded."""

    def __init__(
        self,
        server: Server[Any],
        manager: StreamableHTTPSessionManager,
        path: str,
        may_wait: Callable[[Mapping[str, Any]], bool],
    ) -> None:
        self.server, self.manager, self.path, self.may_wait = server, manager, path, may_wait
        # By id: (a tool's input schema, whether it declares an `x-mcp-header`).
        self._declares: dict[int, tuple[Any, bool]] = {}

    async def serve(self, scope: Scope, message: Any, send: Send) -> bool:
        """Answer the request and return True, or return False having sent nothing."""
        if not (
            scope["method"] == "POST"
            and scope["path"] == self.path
            and isinstance(message, dict)
            and isinstance(message.get("method"), str)
            and message["method"] in LEAN_METHODS
            and "id" in message
            and self.manager._task_group is not None  # the SDK's own readiness check
        ):
            return False
        request = Request(scope)
        headers = request.headers
        version = headers.get("mcp-protocol-version")
        if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
            return False  # a 2025 request (the SDK's session or stateless transport)
        content_type = headers.get("content-type")
        if content_type is None or not content_type.lower().startswith("application/json"):
            return False
        if check_accept_headers(request) != (True, True):
            return False
        try:
            req = JSONRPCRequest.model_validate(message)
        except ValidationError:
            return False
        params = req.params or {}
        meta = params.get("_meta")
        if isinstance(meta, Mapping) and "progressToken" in meta:
            return False  # progress must stream
        if req.method == "tools/call" and self.may_wait(params):
            return False
        if find_duplicated_routing_header(headers.items()) is not None:
            return False
        verdict = classify_inbound_request(message, headers=dict(headers))
        if isinstance(verdict, InboundLadderRejection):
            return False
        if req.method == "tools/call" and self._param_headers_rejected(params, headers):
            return False
        lifespan_state = self.manager._lifespan_state
        connection = Connection.from_envelope(
            verdict.protocol_version, verdict.client_info, verdict.client_capabilities
        )
        dctx = _SingleExchangeDispatchContext(
            transport=TransportContext(kind="streamable-http", can_send_request=False, headers=headers),
            request_id=req.id,
            message_metadata=ServerMessageMetadata(request_context=request),
        )
        reply = await _to_jsonrpc_response(
            req.id,
            serve_one(
                self.server,
                dctx,
                req.method,
                req.params,
                connection=connection,
                lifespan_state=lifespan_state,
            ),
        )
        await _write(reply, send)
        return True

    def _param_headers_rejected(self, params: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
        """Whether the SDK's `Mcp-Param-*` check (`_mcp_param_rejection`) would reject the call, or
        must run in a way only the SDK's path runs it (a listing, a lookup that raises). The walk
        of a schema already seen to declare no header is skipped: it passes whatever the headers
        say."""
        lookup, name, arguments = (
            self.server.get_tool_input_schema,
            params.get("name"),
            params.get("arguments"),
        )
        if lookup is None or not isinstance(name, str):
            return lookup is None and self.server.get_request_handler("tools/list") is not None
        if arguments is not None and not isinstance(arguments, Mapping):
            return False
        if not arguments and not any(h.startswith(_PARAM_PREFIX) for h in headers):
            return False
        try:
            schema = lookup(name)
        except Exception:  # the SDK skips the check then; so does the path it would take
            return True
        if schema is None:
            return False
        known = self._declares.get(id(schema))
        if known is None or known[0] is not schema:
            if len(self._declares) >= MAX_SCHEMAS:
                self._declares.clear()
            known = (schema, next(iter(annotated_positions(schema)), None) is not None)
            self._declares[id(schema)] = known
        return known[1] and validate_mcp_param_headers(schema, arguments or {}, headers) is not None


def waits_for_approval(guard: Guard) -> Callable[[Mapping[str, Any]], bool]:
    """`may_wait` for the guard: a call of a tool the request's agent has no ready offer for (the
    SDK's path refuses it the same way) or whose grant asks for approval."""

    def may_wait(params: Mapping[str, Any]) -> bool:
        agent, name = REQUEST_AGENT.get(), params.get("name")
        offers = guard.ready_offers(agent.name) if agent is not None else None
        offer = offers.get(name) if offers is not None and isinstance(name, str) else None
        return offer is None or offer.grant.approval is not None

    return may_wait


async def _write(reply: Any, send: Send) -> None:
    """The reply as the SDK's entry writes it: the status its table maps an error code to, compact
    JSON, `id: null` kept."""
    status = 200
    if isinstance(reply, JSONRPCError):
        status = ERROR_CODE_HTTP_STATUS.get(reply.error.code, 200)
    body = reply.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(reply, JSONRPCError) and reply.id is None:
        body["id"] = None
    content = json.dumps(body, separators=(",", ":")).encode()
    headers = [(b"content-length", str(len(content)).encode()), *_JSON_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
