"""An upstream's own requests and log messages, relayed to clients only where its manifest's
`upstream.relay` opts in, and only to whom they belong. Elicitation and sampling go to the client
connection that made the call the upstream is serving: the call itself for a request in the
multi-round-trip form (it comes back as that call's result); for one in the 2025 form, which names
no call, the one connection with calls in flight on that server. A request in flight with no call,
or while calls of more than one connection are, cannot be tied to its caller and is refused.
Relayed requests are scrubbed, sampling's `maxTokens` is capped and its `includeContext` dropped,
and an `elicitation` or `sampling` entry records what the user did, never what was said. Log
messages reach connections that set a level and whose agent has a grant on the server (and the
caller of a call in flight, on that call's stream), scrubbed. Imports no transport and no store."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, get_args

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp.server.connection import allowed_log_levels
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_guard.guard.rounds import Parked, Rounds
from mcp_guard.ledger import ElicitationEvent, LedgerEvent, SamplingEvent
from mcp_guard.policy.engine import Agent
from mcp_guard.relay import Relay
from mcp_guard.upstream import inbound

if TYPE_CHECKING:
    from mcp_guard.guard.app import Guard

LEVELS: tuple[str, ...] = get_args(types.LoggingLevel)  # least severe first


def _refusal(text: str) -> types.ErrorData:
    return types.ErrorData(code=types.INVALID_REQUEST, message=text)


@dataclass(eq=False)
class Exchange:
    """One call being forwarded to its upstream: the caller its upstream's requests may reach."""

    call_id: str
    agent: Agent
    session: str | None  # as the ledger records it
    server: str
    tool: str
    ctx: ServerRequestContext[Any, Any]
    policy_hash: str
    scopes: set[anyio.CancelScope] = field(default_factory=set)  # relays waiting on the client
    parked: Parked | None = None  # a multi-round-trip client's call: what is asked waits for its retry

    @property
    def connection(self) -> Any:
        """The client's connection (one per stdio client or HTTP session), not this request's."""
        return getattr(self.ctx.session, "_connection", self.ctx.session)

    def event(self, kind: type[LedgerEvent], payload: dict[str, Any]) -> LedgerEvent:
        return kind(
            payload=payload,
            agent=self.agent.name,
            session=self.session,
            server=self.server,
            tool=self.tool,
            call_id=self.call_id,
            policy_hash=self.policy_hash,
        )


@dataclass(frozen=True)
class Listener:
    """A client connection that asked for log messages (logging/setLevel): its agent, its level."""

    agent: str
    level: str


class Exchanges:
    """The calls in flight, by server, and the connections listening for log messages. The Guard
    sets `guard` once it exists (the pool that feeds this is started before it)."""

    def __init__(self) -> None:
        self.guard: Guard | None = None
        self._calls: dict[str, list[Exchange]] = {}
        self._listeners: weakref.WeakKeyDictionary[Any, Listener] = weakref.WeakKeyDictionary()
        self.rounds = Rounds()

    @contextmanager
    def open(self, exchange: Exchange) -> Iterator[None]:
        """For the time a call is forwarded: its upstream's requests may reach its caller."""
        calls = self._calls.setdefault(exchange.server, [])
        calls.append(exchange)
        token = inbound.ASK.set(partial(self._relay, exchange))
        try:
            yield
        finally:
            inbound.ASK.reset(token)
            calls.remove(exchange)
            for scope in exchange.scopes:
                scope.cancel()  # the call is over: so is what its upstream was waiting for

    # -- elicitation and sampling ------------------------------------------------------------

    async def request(self, server: str, request: types.InputRequest) -> inbound.Answer:
        """A 2025-form request from `server`'s session: relayed to the caller of the calls in flight
        there if they all come from one connection, else refused."""
        calls = self._calls.get(server, [])
        if len({id(call.connection) for call in calls}) != 1:
            why = "no call is in flight" if not calls else "calls of more than one client are in flight"
            self._log(f"refused {request.method} from upstream {server!r}: {why}, so it has no one caller")
            return _refusal(f"{request.method} refused: it cannot be tied to the call it belongs to")
        return await self._relay(calls[0], request)

    async def _relay(self, exchange: Exchange, request: types.InputRequest) -> inbound.Answer:
        guard = self.guard
        assert guard is not None
        manifest = guard.policy.manifests.get(exchange.server)
        relay = manifest.upstream.relay if manifest is not None else Relay()
        if isinstance(request, types.CreateMessageRequest) and relay.sampling is not None:
            kind: type[LedgerEvent] = SamplingEvent
            outgoing, payload = self._sampling(request, relay.sampling.max_tokens)
        elif isinstance(request, types.ElicitRequest) and relay.elicitation:
            kind, outgoing = ElicitationEvent, self._scrubbed(request)
            payload = {"mode": getattr(request.params, "mode", None) or "form"}
        else:  # not opted in (a multi-round-trip request), or roots: refused as ever, unrecorded
            return _refusal(f"{request.method} is not supported")
        problem = _unfit(exchange.ctx.session, outgoing, multi_round=exchange.parked is not None)
        if problem is not None:
            return await self._record(exchange, kind, {**payload, "action": "refused", "reason": problem})
        answer = await self._ask(exchange, outgoing, manifest.upstream.timeout if manifest else 60.0)
        if isinstance(answer, types.ErrorData):
            return await self._record(exchange, kind, {**payload, "action": "error"}, answer)
        action = answer.action if isinstance(answer, types.ElicitResult) else "completed"
        return await self._record(exchange, kind, {**payload, "action": action}, answer)

    def _scrubbed(self, request: Any) -> Any:
        assert self.guard is not None
        # The upstream's `_meta` and task metadata stay behind, as a result's `_meta` does.
        dumped = request.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude={"params": {"meta", "task"}}
        )
        return type(request).model_validate(self.guard.scrubber.json(dumped))

    def _sampling(self, request: types.CreateMessageRequest, cap: int) -> tuple[Any, dict[str, Any]]:
        """Scrubbed, `maxTokens` at most the cap, and no `includeContext`: the client's context of
        the guard spans every upstream, which no one upstream may ask for."""
        asked = request.params.max_tokens
        params = request.params.model_copy(update={"max_tokens": min(asked, cap), "include_context": None})
        outgoing = self._scrubbed(types.CreateMessageRequest(params=params))
        return outgoing, {"max_tokens": min(asked, cap), "capped": asked > cap}

    async def _ask(self, exchange: Exchange, request: Any, wait: float) -> Any:
        """Send the request to the caller on its call's own stream; an error (not raised) if the
        client refuses, fails, or does not answer before the call's upstream timeout or its end."""
        wants_tools = isinstance(request, types.CreateMessageRequest) and request.params.tools is not None
        result_type: Any = types.ElicitResult
        if isinstance(request, types.CreateMessageRequest):
            result_type = types.CreateMessageResultWithTools if wants_tools else types.CreateMessageResult
        related = ServerMessageMetadata(related_request_id=exchange.ctx.request_id)
        with anyio.CancelScope() as scope:
            exchange.scopes.add(scope)
            try:
                if exchange.parked is not None:  # answered by the client's next round
                    return await exchange.parked.ask(request, wait)
                with anyio.fail_after(wait):
                    return await exchange.ctx.session.send_request(request, result_type, metadata=related)
            except MCPError:  # what the client said is between it and its user
                return _refusal("the client refused the request")
            except TimeoutError:
                return _refusal("the client did not answer in time")
            except Exception as exc:  # whatever the client sent, the upstream hears only that it failed
                self._log(f"relaying {request.method} to {exchange.agent.name!r} failed: {exc}")
                return _refusal("the client could not be asked")
            finally:
                exchange.scopes.discard(scope)
        return _refusal("the call ended before the client answered")

    async def _record(
        self,
        exchange: Exchange,
        kind: type[LedgerEvent],
        payload: dict[str, Any],
        answer: inbound.Answer | None = None,
    ) -> inbound.Answer:
        """Record what happened; the answer reaches the upstream only once that is committed."""
        assert self.guard is not None
        try:
            await self.guard.ledger.append(exchange.event(kind, payload))
        except Exception as exc:
            self._log(f"could not record a {kind.kind} entry for call {exchange.call_id}: {exc}")
            return _refusal(f"{kind.kind} could not be recorded")
        if answer is None:
            return _refusal(f"{kind.kind} refused: the client {payload.get('reason')}")
        return answer

    # -- log messages --------------------------------------------------------------------------

    def listen(self, ctx: ServerRequestContext[Any, Any], agent: str, level: str) -> None:
        """logging/setLevel: this connection hears upstream log messages at `level` and above."""
        self._listeners[getattr(ctx.session, "_connection", ctx.session)] = Listener(agent, level)

    async def log(self, server: str, params: types.LoggingMessageNotificationParams) -> None:
        """An upstream log message, scrubbed, to the callers of its calls in flight (on the call's
        stream: the only place a 2026-07-28 client hears one, at the level its request asked) and to
        every other listening connection whose agent has a grant on the server."""
        guard = self.guard
        if guard is None or params.level not in LEVELS:
            return
        policy, scrubber = guard.policy, guard.scrubber
        manifest = policy.manifests.get(server)
        if manifest is None or not manifest.upstream.relay.logging:
            return
        logger = scrubber.text(params.logger) if params.logger else None
        message = types.LoggingMessageNotificationParams(
            level=params.level, data=scrubber.json(params.data), logger=logger
        )
        done: set[int] = set()
        for call in list(self._calls.get(server, ())):
            connection = call.connection
            if id(connection) in done:
                continue
            done.add(id(connection))
            session = call.ctx.session
            if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
                heard = params.level in allowed_log_levels(session.protocol_version, call.ctx.meta)
            else:
                heard = self._hears(connection, params.level)
            if heard:
                await self._send(session.send_notification, message, call.ctx.request_id)
        for connection, listener in list(self._listeners.items()):
            agent = policy.agents.get(listener.agent)
            if id(connection) in done or agent is None or not self._hears(connection, params.level):
                continue
            if any(grant.matches(agent.name, agent.roles) for _, _, grant in manifest.all_grants()):
                await self._send(partial(_notify, connection), message, None)

    def _hears(self, connection: Any, level: str) -> bool:
        listener = self._listeners.get(connection)
        return listener is not None and LEVELS.index(level) >= LEVELS.index(listener.level)

    async def _send(self, send: Any, message: types.LoggingMessageNotificationParams, related: Any) -> None:
        try:
            await send(types.LoggingMessageNotification(params=message), related_request_id=related)
        except Exception as exc:  # best effort, like progress
            self._log(f"could not relay an upstream log message: {exc}")

    def _log(self, text: str) -> None:
        if self.guard is not None:
            self.guard.log(text)


async def _notify(connection: Any, notification: Any, related_request_id: Any = None) -> None:
    """A notification on a connection's own stream (not tied to any request)."""
    dumped = notification.model_dump(mode="json", by_alias=True, exclude_none=True)
    await connection.notify(dumped["method"], dumped.get("params"))


def _unfit(session: Any, request: Any, *, multi_round: bool) -> str | None:
    """Why this client cannot be sent this request (None: it can): it did not declare the
    capability, or its protocol version has no server-to-client requests and the request cannot
    wait for its next round."""
    if session.protocol_version in MODERN_PROTOCOL_VERSIONS and not multi_round:
        return "speaks a protocol version without requests from servers"
    wanted: types.ClientCapabilities
    if isinstance(request, types.CreateMessageRequest):
        tools = types.SamplingToolsCapability() if request.params.tools is not None else None
        wanted = types.ClientCapabilities(sampling=types.SamplingCapability(tools=tools))
    else:
        wanted = types.ClientCapabilities(elicitation=types.ElicitationCapability())
    declared = session.client_capabilities
    if not session.check_client_capability(wanted) or declared is None:
        return "did not declare the capability"
    url = isinstance(request, types.ElicitRequest) and isinstance(
        request.params, types.ElicitRequestURLParams
    )
    if url and (declared.elicitation is None or declared.elicitation.url is None):
        return "did not declare the capability"
    return None
