"""The pipeline for resources, prompts and completion, one way through as for tools: identify ->
decide (policy) -> record the decision -> forward -> record the outcome -> relay, scrubbed. Lists
are the policy's decision applied to every item. A refusal is a JSON-RPC error: -32002 for a
resource (indistinguishable from one that does not exist), -32602 for a prompt or a completion,
with the one line a refused tool call would give. Subscriptions live here: an upstream's update
reaches only the subscribers who may read the URI under the policy in force."""

from __future__ import annotations

import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import mcp_types as types
from mcp import ClientSession, MCPError
from mcp.server import ServerRequestContext

from mcp_guard.errors import LedgerUnavailable, UpstreamError, UpstreamTimeout
from mcp_guard.guard import holds
from mcp_guard.guard.convert import (
    advertise_prompt,
    advertise_resource,
    advertise_template,
    relay_completion,
    relay_prompt,
    relay_read,
)
from mcp_guard.guard.surfaces import Held, SurfaceCatalog
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.policy.engine import Agent, Decision, Policy
from mcp_guard.policy.prompts import (
    CompletionRef,
    PromptOffer,
    decide_completion,
    decide_prompt,
    prompt_offers,
    withheld_prompt,
)
from mcp_guard.policy.reasons import Reason, denial
from mcp_guard.policy.resources import Surfaces, decide_read, readable, visible_templates
from mcp_guard.upstream.surfaces import subscribe, unsubscribe

if TYPE_CHECKING:
    from mcp_guard.guard.app import Guard
    from mcp_guard.guard.caller import Caller

RESOURCE_NOT_FOUND = -32002
LOCKED_OUT = "this agent is locked out after repeated refusals"
T = TypeVar("T")


@dataclass
class Exposed:
    """Per guard process: the pin-checked surfaces and the clients' resource subscriptions (by URI:
    each subscribed connection, weakly, with the agent that subscribed)."""

    catalog: SurfaceCatalog
    subscribers: dict[str, weakref.WeakKeyDictionary[Any, str]] = field(default_factory=dict)


@dataclass
class View:
    """What one agent may read and get under one policy."""

    agent: Agent
    policy: Policy
    surfaces: Surfaces
    held: Held
    locked: bool = False  # locked out (guard.yaml `lockout`): listed nothing, every request refused

    def read(self, uri: str) -> Decision:
        policy, withheld = self.policy, self.held.resources
        return decide_read(self.agent, uri, policy.manifests, self.surfaces, policy.agents, withheld)

    def get(self, name: str, arguments: dict[str, Any]) -> Decision:
        """A prompts/get: a prompt withheld by its pin is refused pin_mismatch to its grantees."""
        policy = self.policy
        decision = decide_prompt(name, arguments, self.prompts(), policy.config.limits.max_argument_bytes)
        if decision.reason != Reason.UNKNOWN_PROMPT:
            return decision
        held = withheld_prompt(
            self.agent, name, arguments, policy.manifests, self.held.prompts, policy.agents
        )
        return held or decision

    def prompts(self) -> dict[str, PromptOffer]:
        return prompt_offers(self.agent, self.policy.manifests, self.surfaces, self.policy.agents)

    def may_read(self, uri: str) -> bool:
        return self.read(uri).allowed


def served(caller: Caller, method: str) -> None:
    """A guard whose policy grants no resources (or no prompts; neither, for completion) does not
    serve their methods at all: -32601, as before they existed, and as its capabilities say."""
    resources, prompts = caller.guard.policy.exposes
    wanted = {"resources": resources, "prompts": prompts, "completion": resources or prompts}
    if not wanted[method.split("/")[0]]:
        raise MCPError(types.METHOD_NOT_FOUND, "Method not found")


async def view(guard: Guard, agent: Agent, policy: Policy | None = None) -> View:
    """The agent's view under `policy` (default: in force); nothing while it is locked out."""
    policy = policy or guard.policy
    live = {name: up.surfaces for name, up in guard.pool.upstreams.items()}
    exposed = guard.exposed
    surfaces = await exposed.catalog.current(policy, live)
    locked = guard.standing.of(agent.name)[1]
    return View(agent, policy, {} if locked else surfaces, exposed.catalog.held, locked)


# -- lists ----------------------------------------------------------------------------------------


async def list_resources(
    caller: Caller, ctx: ServerRequestContext[Any, Any], _: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    served(caller, "resources/list")
    seen = await view(caller.guard, caller.identify(ctx))
    scrubber = caller.guard.scrubber
    found = readable(seen.agent, seen.policy.manifests, seen.surfaces, seen.policy.agents)
    shown = [advertise_resource(d, scrubber) for _, d in found if d.id not in seen.held.resources]
    return types.ListResourcesResult(resources=[r for r in shown if r is not None])


async def list_templates(
    caller: Caller, ctx: ServerRequestContext[Any, Any], _: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    served(caller, "resources/templates/list")
    seen = await view(caller.guard, caller.identify(ctx))
    found = visible_templates(seen.agent, seen.policy.manifests, seen.surfaces, seen.policy.agents)
    shown = [advertise_template(d, caller.guard.scrubber) for _, d in found]
    return types.ListResourceTemplatesResult(resource_templates=[t for t in shown if t is not None])


async def list_prompts(
    caller: Caller, ctx: ServerRequestContext[Any, Any], _: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    served(caller, "prompts/list")
    seen = await view(caller.guard, caller.identify(ctx))
    scrubber = caller.guard.scrubber
    return types.ListPromptsResult(prompts=[advertise_prompt(o, scrubber) for o in seen.prompts().values()])


# -- the pipeline ---------------------------------------------------------------------------------


async def _run(
    caller: Caller,
    ctx: ServerRequestContext[Any, Any],
    seen: View,
    decision: Decision,
    refused: Callable[[Decision], MCPError],
    send: Callable[[ClientSession], Awaitable[T]],
) -> T:
    """Record the decision; refuse, or forward and record the outcome. What is relayed is the
    caller's to scrub."""
    guard, started = caller.guard, time.perf_counter()
    policy, scrubber, agent = seen.policy, guard.scrubber, seen.agent
    target = decision.target
    record = CallRecord(
        method=target.method,
        call_id=uuid.uuid4().hex,
        agent=agent.name,
        session=caller.session_of(ctx),
        server=target.server,
        tool=scrubber.record(target.name)[:256] if target.server is None else target.name,
        arguments=scrubber.json(dict(decision.arguments), record=True),
        decision="allow" if decision.allowed else "deny",
        reason=decision.reason,
        detail=None if decision.allowed else scrubber.record(decision.detail),
        policy_hash=policy.hash,
        credential=agent.credential,
    )
    lockout = policy.config.lockout
    try:
        settle = partial(holds.check, record=record, hold=None, lockout=lockout) if lockout else None
        record = await guard.ledger.decide(record, settle)
    except (LedgerUnavailable, ValueError) as exc:
        guard.log(f"refusing {target.method} {target.name!r} for {agent.name!r}: {exc}")
        text = denial(Reason.LEDGER_UNAVAILABLE, "the request cannot be recorded, so it is refused")
        raise MCPError(types.INTERNAL_ERROR, text) from None
    if record.decision != "allow":
        raise refused(decision if record.reason == decision.reason else _relabel(decision, record))
    assert target.server is not None
    outcome, detail = "upstream_error", None
    try:
        pool = guard.pool
        assert pool.tg is not None
        result = await pool.upstream(target.server).ask(pool.tg, target.name, send)
        outcome = "ok"
        return result
    except anyio.get_cancelled_exc_class():
        outcome = "cancelled"
        raise
    except UpstreamTimeout as exc:
        outcome, detail = "timeout", str(exc)
    except UpstreamError as exc:
        detail = str(exc)
    except Exception as exc:  # nothing an upstream does may leak a traceback to an agent
        detail = f"{type(exc).__name__}: {exc}"
    finally:
        elapsed = (time.perf_counter() - started) * 1000
        await guard.record_outcome(record.call_id, outcome, elapsed, detail, scrubber)
    guard.log(detail or outcome)
    raise MCPError(types.INTERNAL_ERROR, f"error ({outcome}): the upstream could not answer")


def _relabel(decision: Decision, record: CallRecord) -> Decision:
    """A decision the ledger's settle step refused (a lockout): its reason and detail."""
    return Decision(
        False, Reason(record.reason or ""), record.detail or "", decision.target, decision.arguments
    )


def _not_found(decision: Decision) -> MCPError:
    return MCPError(
        RESOURCE_NOT_FOUND, decision.text if decision.reason != Reason.UNKNOWN_RESOURCE else decision.detail
    )


def _invalid(decision: Decision) -> MCPError:
    unknown = decision.reason in (Reason.UNKNOWN_PROMPT, Reason.UNKNOWN_RESOURCE)
    return MCPError(types.INVALID_PARAMS, decision.detail if unknown else decision.text)


async def read_resource(
    caller: Caller, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    served(caller, "resources/read")
    seen = await view(caller.guard, caller.identify(ctx))
    uri = str(params.uri)
    decision = seen.read(uri)
    request = types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri=uri))

    def send(session: ClientSession) -> Awaitable[types.ReadResourceResult]:
        return session.send_request(request, types.ReadResourceResult)

    result = await _run(caller, ctx, seen, decision, _not_found, send)
    return relay_read(result, uri, seen.may_read, caller.guard.scrubber)


async def get_prompt(
    caller: Caller, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
) -> types.GetPromptResult:
    served(caller, "prompts/get")
    seen = await view(caller.guard, caller.identify(ctx))
    decision = seen.get(params.name, dict(params.arguments or {}))
    forwarded = {k: str(v) for k, v in decision.arguments.items()}
    request = types.GetPromptRequest(
        params=types.GetPromptRequestParams(name=decision.target.name, arguments=forwarded or None)
    )

    def send(session: ClientSession) -> Awaitable[types.GetPromptResult]:
        return session.send_request(request, types.GetPromptResult)

    result = await _run(caller, ctx, seen, decision, _invalid, send)
    return relay_prompt(result, seen.may_read, caller.guard.scrubber)


async def complete(
    caller: Caller, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
) -> types.CompleteResult:
    served(caller, "completion/complete")
    seen = await view(caller.guard, caller.identify(ctx))
    ref = params.ref
    context = dict(params.context.arguments or {}) if params.context else {}
    asked = CompletionRef(
        ref.type,
        ref.name if isinstance(ref, types.PromptReference) else ref.uri,
        params.argument.name,
        params.argument.value,
        context,
    )
    offers = seen.prompts()
    templates = visible_templates(seen.agent, seen.policy.manifests, seen.surfaces, seen.policy.agents)
    decision = decide_completion(asked, offers, templates, seen.policy.config.limits.max_argument_bytes)
    if decision.reason == Reason.UNKNOWN_PROMPT:  # withheld by its pin, to its grantees
        policy = seen.policy
        held = withheld_prompt(
            seen.agent, asked.name, decision.arguments, policy.manifests, seen.held.prompts, policy.agents,
            "completion",
        )  # fmt: skip
        decision = held or decision
    upstream_ref: types.PromptReference | types.ResourceTemplateReference = (
        types.PromptReference(name=decision.target.name)
        if asked.kind == "ref/prompt"
        else types.ResourceTemplateReference(uri=decision.target.name)
    )
    request = types.CompleteRequest(
        params=types.CompleteRequestParams(
            ref=upstream_ref,
            argument=types.CompletionArgument(name=asked.argument, value=asked.value),
            context=types.CompletionContext(arguments=context) if context else None,
        )
    )

    def send(session: ClientSession) -> Awaitable[types.CompleteResult]:
        return session.send_request(request, types.CompleteResult)

    result = await _run(caller, ctx, seen, decision, _invalid, send)
    offer = offers.get(asked.name) if asked.kind == "ref/prompt" else None
    return relay_completion(result, offer, asked.argument, caller.guard.scrubber)


# -- subscriptions --------------------------------------------------------------------------------


async def subscribe_resource(
    caller: Caller, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
) -> types.EmptyResult:
    """Needs read permission (else -32002, as for a read); the upstream is subscribed once per URI."""
    served(caller, "resources/subscribe")
    guard = caller.guard
    seen = await view(guard, caller.identify(ctx))
    uri = str(params.uri)
    decision = seen.read(uri)
    if seen.locked:  # a subscription is not a recorded request: refused here, as a read would be
        decision = Decision(False, Reason.LOCKED_OUT, LOCKED_OUT, decision.target, {})
    if not decision.allowed or decision.server is None:
        raise _not_found(decision)
    subscribers = guard.exposed.subscribers.setdefault(uri, weakref.WeakKeyDictionary())
    first = not subscribers
    subscribers[getattr(ctx.session, "_connection", ctx.session)] = seen.agent.name
    if first:
        pool = guard.pool
        assert pool.tg is not None
        try:
            await pool.upstream(decision.server).ask(pool.tg, uri, subscribe(uri))
        except UpstreamError as exc:
            subscribers.clear()
            guard.log(str(exc))
            raise MCPError(
                types.INTERNAL_ERROR, "error (upstream_error): the upstream could not answer"
            ) from None
    return types.EmptyResult()


async def unsubscribe_resource(
    caller: Caller, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
) -> types.EmptyResult:
    served(caller, "resources/unsubscribe")
    guard = caller.guard
    seen = await view(guard, caller.identify(ctx))
    uri = str(params.uri)
    subscribers = guard.exposed.subscribers.get(uri)
    connection = getattr(ctx.session, "_connection", ctx.session)
    if subscribers is not None and subscribers.pop(connection, None) is not None and not subscribers:
        del guard.exposed.subscribers[uri]
        decision = seen.read(uri)
        if decision.server is not None:
            pool = guard.pool
            assert pool.tg is not None
            try:
                await pool.upstream(decision.server).ask(pool.tg, uri, unsubscribe(uri))
            except UpstreamError as exc:
                guard.log(str(exc))
    return types.EmptyResult()


async def resource_updated(guard: Guard, server: str, uri: str) -> None:
    """An upstream's resource changed: tell each subscriber that may read it, from that server,
    under the policy in force."""
    for connection, name in list(guard.exposed.subscribers.get(uri, {}).items()):
        agent = guard.policy.agents.get(name)
        if agent is None:
            continue
        seen = await view(guard, agent)
        decision = seen.read(uri)
        if seen.locked or not decision.allowed or decision.server != server:
            continue
        try:
            await connection.send_resource_updated(uri)
        except Exception as exc:
            guard.log(f"could not tell a client that a resource changed: {exc}")
