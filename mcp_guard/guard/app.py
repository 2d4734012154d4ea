"""The only wiring module: MCP requests in, policy decisions, ledger records, upstream calls out.
The one place that converts between the SDK's types and the policy's."""

from __future__ import annotations

import hashlib
import math
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions

from mcp_guard import __version__
from mcp_guard.config import GuardConfig
from mcp_guard.errors import (
    LedgerError,
    LedgerUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mcp_guard.guard import holds, pins
from mcp_guard.ledger.sqlite.store import CallRecord, Ledger
from mcp_guard.manifest import Manifest
from mcp_guard.policy import approvals, budgets
from mcp_guard.policy.engine import Agent, Catalog, Decision, Offer, Policy, ToolDef, canonical, escape_name
from mcp_guard.policy.schemas import clean_text
from mcp_guard.secrets import Scrubber
from mcp_guard.upstream.pool import Pool, Upstream, open_pool

AFTER_FORWARD = "the call may have taken effect"
UNREACHABLE = "the upstream server cannot be reached; try again later"
APPROVAL_POLL = 0.25  # seconds between looks at the ledger while a call waits for an operator
OUTCOME_DELAY = 0.02
"""With durability `normal`, how long an outcome may wait for the next decision's transaction
to carry it (one transaction per call) before it is committed on its own."""
T = TypeVar("T")
Lists = dict[str, tuple[types.Tool, ...]]  # each upstream's tool list, by server
AGENT_SCOPE_KEY = "mcp_guard.agent"
"""Where the HTTP transport puts the authenticated agent's name in the ASGI scope."""


def tool_def(tool: types.Tool) -> ToolDef:
    """An upstream tool in the policy's terms; the digest covers everything that is relayed.
    It is the one definition digest, pins included (SPEC: SHA-256 of the RFC 8785 canonical JSON).
    `canonical` (sorted keys, no whitespace, UTF-8) equals RFC 8785 for the JSON the SDK produces:
    strings, integers, booleans and nulls; only floats could serialise differently."""
    annotations = tool.annotations.model_dump(mode="json", exclude_none=True) if tool.annotations else None
    content = {
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "outputSchema": tool.output_schema,
        "annotations": annotations,
    }
    return ToolDef(
        name=tool.name,
        input_schema=tool.input_schema,
        digest=hashlib.sha256(canonical(content).encode()).hexdigest(),
        title=tool.title,
        description=tool.description,
        output_schema=tool.output_schema,
        annotations=annotations,
    )


def advertise(offer: Offer, scrubber: Scrubber) -> types.Tool:
    """A tool exactly as one agent is shown it: limits merged, text cleaned, secrets scrubbed from
    everything relayed (the name is checked by `offered`: it cannot be scrubbed and stay callable)."""
    tool = offer.tool

    def text(value: str | None) -> str | None:
        return scrubber.text(clean_text(value) or "") or None if value else None

    annotations = None
    if tool.annotations:
        scrubbed = scrubber.json(dict(tool.annotations))
        if isinstance(scrubbed.get("title"), str):
            scrubbed["title"] = text(scrubbed["title"])
        annotations = types.ToolAnnotations.model_validate(scrubbed)
    return types.Tool(
        name=offer.name,
        title=text(tool.title),
        description=text(offer.description),
        input_schema=scrubber.json(dict(offer.input_schema)),
        output_schema=scrubber.json(tool.output_schema) if tool.output_schema else None,
        annotations=annotations,
    )


def offered(offers: Mapping[str, Offer], scrubber: Scrubber, log: Callable[[str], None]) -> dict[str, Offer]:
    """The offers whose advertised name holds no injected secret. A name cannot be scrubbed and
    stay callable, so such a tool is not offered at all (listed nowhere, its calls unknown_tool)."""
    kept = {name: offer for name, offer in offers.items() if not scrubber.finds(name)}
    if len(kept) < len(offers):
        log(f"warning: {len(offers) - len(kept)} tool(s) not offered: the advertised name holds a secret")
    return kept


@dataclass
class Guard:
    """What every request needs: the policy in force, the upstreams, the ledger."""

    policy: Policy
    pool: Pool
    ledger: Ledger
    agent: Agent | None = None  # fixed for stdio; HTTP derives it per request
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    scrubber: Scrubber = field(init=False)
    tallies: holds.Tallies = field(default_factory=holds.Tallies, init=False)
    # Caches for the policy in force: (policy, the upstreams' lists, the pin-checked catalog).
    _catalog: tuple[Policy, Lists, Catalog] | None = field(default=None, init=False)
    _offers: dict[str, tuple[Catalog, dict[str, Offer]]] = field(default_factory=dict, init=False)
    _withheld: dict[str, pins.Withheld] = field(default_factory=dict, init=False)  # by advertised name
    _outcomes_waiting: anyio.Event = field(default_factory=anyio.Event, init=False)
    _building: anyio.Lock = field(default_factory=anyio.Lock, init=False)  # one catalog build at a time
    # The clients' connections, to tell of tool list changes. The SDK builds a ServerSession per
    # request (a weak set of those empties at once); its connection lives as long as the client.
    _sessions: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet, init=False)

    def __post_init__(self) -> None:
        self.scrubber = Scrubber(self.policy.secrets)
        self.ledger.redactor = self.scrubber

    def log(self, text: str) -> None:
        self.scrubber.log(text)

    async def catalog(self, policy: Policy | None = None) -> Catalog:
        """The pin-checked catalog under `policy` (default: the one in force); only the policy in
        force is cached, so a call decided under a replaced policy cannot stale the caches."""
        policy = policy or self.policy
        live = await self.pool.catalog()
        cached = self._catalog
        if cached is not None and cached[0] is policy and _same_lists(cached[1], live):
            return cached[2]
        async with self._building:  # requests that arrive meanwhile wait for this build
            cached = self._catalog
            if cached is not None and cached[0] is policy and _same_lists(cached[1], live):
                return cached[2]
            return await self._build_catalog(policy, live)

    async def _build_catalog(self, policy: Policy, live: Lists) -> Catalog:
        catalog = {name: tuple(tool_def(t) for t in tools) for name, tools in live.items()}
        for problem in policy.problems(catalog):
            self.log(f"warning: {problem}")
        # Pins are checked here, when the catalog or the policy changes, never per call.
        pinned = await anyio.to_thread.run_sync(
            pins.resolve, self.ledger, policy.manifests, catalog, self.log
        )
        for withheld in pinned.withheld:
            self.log(withheld.warning)
        if policy is not self.policy:
            return pinned.catalog
        manifests = policy.manifests
        self._withheld = pins.by_name(manifests, pinned.withheld)
        if pinned.settled:  # else the ledger failed: decide again on the next request
            self._catalog = (policy, live, pinned.catalog)
        return pinned.catalog

    async def warm(self) -> None:
        """Build the catalog (pin checks and their ledger entries included) and the offers of
        the agents served, as soon as the guard starts and while clients are still connecting,
        so that a client's first request does not wait for it. A failure is logged; the first
        request builds them instead."""
        agents = [self.agent] if self.agent is not None else list(self.policy.agents.values())
        try:
            for agent in agents:
                await self.offers(agent)
        except Exception as exc:
            self.log(f"could not prepare the tool catalog at start: {exc}")

    async def offers(
        self, agent: Agent, policy: Policy | None = None, scrubber: Scrubber | None = None
    ) -> dict[str, Offer]:
        """What `agent` may call under `policy` (default: the one in force, with its scrubber)."""
        policy = policy or self.policy
        catalog = await self.catalog(policy)
        if policy is not self.policy:
            return offered(policy.offers(agent, catalog), scrubber or Scrubber(policy.secrets), self.log)
        cached = self._offers.get(agent.name)
        if cached is None or cached[0] is not catalog:
            cached = (catalog, offered(policy.offers(agent, catalog), self.scrubber, self.log))
            self._offers[agent.name] = cached
        return cached[1]

    async def reload(self, config: GuardConfig, manifests: tuple[Manifest, ...]) -> Policy:
        """Put a new policy in force: upstreams whose `upstream` block changed get a new session
        (the old one drains), then the policy, its scrubber and the caches are swapped in one step
        (no await between), the swap is stamped in the ledger and every client is told."""
        policy = Policy(config, manifests)
        scrubber = Scrubber(policy.secrets)
        await self.pool.update(manifests, max_result_bytes=config.limits.max_result_bytes)
        agent = self.agent
        if agent is not None:  # stdio: the same agent under its new roles; a removed one sees nothing
            agent = policy.agents.get(agent.name, agent)
        self.policy, self.scrubber, self.agent = policy, scrubber, agent
        self.ledger.redactor = scrubber
        self._catalog, self._offers, self._withheld = None, {}, {}
        await self.record_policy({"action": "loaded", "hash": policy.hash})
        await self.tools_changed(None)
        return policy

    async def record_policy(self, payload: dict[str, Any]) -> None:
        """A `policy` entry in the ledger, stamped with the hash in force."""
        try:
            await anyio.to_thread.run_sync(
                partial(self.ledger.record_event, "policy", payload, self.policy.hash)
            )
        except Exception as exc:
            self.log(f"could not record a policy entry in the ledger: {exc}")

    async def tools_changed(self, _: Upstream | None) -> None:
        try:
            await self.catalog()  # the new definitions are pin-checked (and recorded) at once
        except Exception as exc:
            self.log(f"could not check a changed tool list: {exc}")
        for session in list(self._sessions):
            try:
                await session.send_tool_list_changed()
            except Exception as exc:
                self.log(f"could not notify a client of a tool list change: {exc}")

    def identify(self, ctx: ServerRequestContext[Any, Any]) -> Agent:
        """stdio: the agent fixed at start. HTTP: the agent the transport authenticated for this
        very request (AGENT_SCOPE_KEY in the ASGI scope), looked up in the policy in force."""
        agent = self.agent
        if agent is None and ctx.request is not None:
            agent = self.policy.agents.get(ctx.request.scope.get(AGENT_SCOPE_KEY, ""))
        if agent is None:
            raise MCPError(types.INVALID_REQUEST, "no agent identity for this request")
        self._sessions.add(getattr(ctx.session, "_connection", ctx.session))
        return agent

    # -- the request path ------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        policy, scrubber = self.policy, self.scrubber
        agent = self.identify(ctx)
        offers = await self.offers(agent, policy, scrubber)
        return types.ListToolsResult(tools=[advertise(o, scrubber) for o in offers.values()])

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        started = time.perf_counter()
        # One policy decides the whole call, even if another is swapped in meanwhile.
        policy, scrubber = self.policy, self.scrubber
        agent = self.identify(ctx)
        session = self._session_of(ctx)
        arguments: Mapping[str, Any] = params.arguments or {}
        offers = await self.offers(agent, policy, scrubber)
        decision = policy.decide(params.name, arguments, offers, agent=agent.name, session=session)
        if decision.reason == "unknown_tool" and await self.pool.settle():
            # A client may call before a slow upstream's first start has ended: decide again.
            offers = await self.offers(agent, policy, scrubber)
            decision = policy.decide(params.name, arguments, offers, agent=agent.name, session=session)
        if decision.reason == "unknown_tool":
            decision = (
                pins.withheld_denial(policy, agent, self._withheld, params.name, arguments)
                or unreachable_denial(policy, agent, params.name, arguments, self.pool.down())
                or decision
            )
        if decision.allowed:
            decision = await self._check_upstream(decision)
        record = self._record_of(uuid.uuid4().hex, agent, session, params.name, decision, policy, scrubber)
        hold = self._hold_of(agent, decision, record)
        try:
            if hold is not None and hold.approval is not None:
                await self._await_approval(ctx, hold, record.policy_hash)
            check = (
                None if hold is None else partial(holds.check, record=record, hold=hold, tallies=self.tallies)
            )
            record = await self._write(partial(self.ledger.record_decision, record, check=check))
        except (LedgerUnavailable, ValueError) as exc:  # no ledger, no call
            self.log(f"refusing {decision.tool!r} for {agent.name!r}: {exc}")
            if decision.reason == "unknown_tool":
                raise MCPError(types.INVALID_PARAMS, decision.detail) from None
            return _refusal("denied (ledger_unavailable): the call cannot be recorded, so it is refused")
        if decision.reason == "unknown_tool":
            raise MCPError(types.INVALID_PARAMS, decision.detail)
        if record.decision != "allow":
            return _refusal(f"denied ({record.reason}): {record.detail}")
        return await self._forward(ctx, record.call_id, decision, started, scrubber)

    def _hold_of(self, agent: Agent, decision: Decision, record: CallRecord) -> holds.Hold | None:
        """What the ledger must settle for an allowed call: budgets and approval (None if nothing)."""
        if not decision.allowed or (not decision.charges and decision.approval is None):
            return None
        assert decision.server is not None
        # Scopes are read from the arguments as recorded, as the history's are: a value the ledger
        # redacts cannot open a fresh budget.
        recorded = record.arguments if isinstance(record.arguments, Mapping) else {}
        return holds.Hold(
            server=decision.server,
            tool=decision.tool,
            agent=agent.name,
            charges=tuple(
                budgets.rescoped(c, agent.name, record.session, recorded) for c in decision.charges
            ),
            approval=decision.approval,
            digest=approvals.digest(decision.arguments) if decision.approval else "",
            recorded_arguments=record.arguments,
        )

    async def _await_approval(
        self, ctx: ServerRequestContext[Any, Any], hold: holds.Hold, policy_hash: str
    ) -> None:
        """File (or find) the approval request for this exact call; if it is pending, wait up to
        `approval.wait` for an operator, with progress notifications if the client asked."""
        assert hold.approval is not None
        if await anyio.to_thread.run_sync(
            self.ledger.peek, partial(holds.over_budget, hold=hold, tallies=self.tallies)
        ):
            return  # refused by its budget in the final check; no operator is asked
        _, verdict = await anyio.to_thread.run_sync(
            self.ledger.hold, partial(holds.file_request, hold=hold, policy_hash=policy_hash)
        )
        if verdict != "pending":
            return
        relay = _progress_relay(ctx)
        waited = 0.0
        with anyio.move_on_after(hold.approval.wait):
            while verdict == "pending":
                await anyio.sleep(APPROVAL_POLL)
                waited += APPROVAL_POLL
                verdict = await anyio.to_thread.run_sync(
                    self.ledger.peek, partial(holds.approval_verdict, hold=hold)
                )
                if relay is not None:
                    await relay(waited, hold.approval.wait, None)

    async def _check_upstream(self, decision: Decision) -> Decision:
        """An upstream that cannot be (re)started is a denial: nothing was forwarded."""
        assert decision.server is not None
        assert self.pool.tg is not None
        try:
            await self.pool.upstream(decision.server).ensure(self.pool.tg)
        except UpstreamError as exc:
            self.log(str(exc))
            reason = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_unavailable"
            return Decision(False, reason, UNREACHABLE, decision.server, decision.tool, decision.arguments)
        return decision

    async def _forward(
        self,
        ctx: ServerRequestContext[Any, Any],
        call_id: str,
        decision: Decision,
        started: float,
        scrubber: Scrubber,
    ) -> types.CallToolResult:
        assert decision.server is not None
        outcome, detail, result = "upstream_error", None, None
        try:
            result = await self.pool.call(
                decision.server, decision.tool, dict(decision.arguments), _progress_relay(ctx)
            )
            outcome = "error" if result.is_error else "ok"
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        except UpstreamTimeout as exc:
            outcome, detail = "timeout", str(exc)
        except (UpstreamUnavailable, UpstreamError) as exc:
            outcome, detail = "upstream_error", str(exc)
        except Exception as exc:  # nothing an upstream does may leak a traceback to an agent
            outcome, detail = "upstream_error", f"{type(exc).__name__}: {exc}"
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            await self._record_outcome(call_id, outcome, elapsed, detail, scrubber)
        if result is None:
            if detail:
                self.log(detail)
            return _refusal(f"error ({outcome}): {AFTER_FORWARD}")
        return self._relay(result, scrubber)

    def _relay(self, result: types.CallToolResult, scrubber: Scrubber) -> types.CallToolResult:
        """The upstream's result with known secrets scrubbed and every _meta dropped. The text
        blocks are scrubbed as one text, so a secret split across blocks is caught too."""
        texts = [b.text for b in result.content if isinstance(b, types.TextContent)]
        scrubbed = iter(scrubber.texts(texts) or ())
        blocks = [
            self._block(b, scrubber, next(scrubbed, None) if isinstance(b, types.TextContent) else None)
            for b in result.content
        ]
        structured = result.structured_content
        if structured is not None:
            structured = scrubber.json(structured)
        return types.CallToolResult(content=blocks, structured_content=structured, is_error=result.is_error)

    def _block(self, block: Any, scrubber: Scrubber, text: str | None) -> Any:
        """One content block; `text` is a text block's text as scrubbed with its neighbours
        (None: nothing to scrub). Binary content (base64 `data`, a resource's `blob`) is scrubbed
        as bytes and stays valid base64; every other string as text."""
        if isinstance(block, types.TextContent) and block.meta is None and text is None:
            return block  # the common case: a plain text block with nothing to scrub
        data = block.model_dump(by_alias=True, mode="json", exclude_none=True)
        data.pop("_meta", None)
        binary = (
            data.pop("data", None) if isinstance(block, types.ImageContent | types.AudioContent) else None
        )
        resource = data.get("resource")
        blob = resource.pop("blob", None) if isinstance(resource, dict) else None
        data = scrubber.json(data)
        if text is not None:
            data["text"] = text
        if isinstance(binary, str):
            data["data"] = scrubber.binary(binary)
        if isinstance(blob, str):
            data["resource"]["blob"] = scrubber.binary(blob)
        return type(block).model_validate(data)

    def _session_of(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        """HTTP: the MCP session id, if the client has one. stdio: the connection is the session."""
        if ctx.request is not None:
            sid = ctx.request.headers.get("mcp-session-id")
            return str(sid)[:128] if sid else None
        return self.session_id

    def _record_of(
        self,
        call_id: str,
        agent: Agent,
        session: str | None,
        sent: str,
        decision: Decision,
        policy: Policy,
        scrubber: Scrubber,
    ) -> CallRecord:
        """The decision as recorded. The ledger redacts every row it appends; the arguments are
        redacted here already because budgets scope by their recorded values, and a name that
        resolved to no tool is redacted whole before it is cut to 256 characters, so no part of a
        secret is left at the cut."""
        tool, detail = decision.tool, decision.detail
        if decision.server is None:
            tool = escape_name(scrubber.record(sent))
            detail = f"Unknown tool: {tool}"
        return CallRecord(
            call_id=call_id,
            agent=agent.name,
            session=session,
            server=decision.server,
            tool=tool,
            arguments=scrubber.json(_jsonable(decision.arguments), record=True),
            decision="allow" if decision.allowed else "deny",
            reason=decision.reason,
            detail=None if decision.allowed else scrubber.record(detail),
            policy_hash=policy.hash,
        )

    async def _write(self, write: Callable[[], T]) -> T:
        """A ledger write, never cut short by a cancelled call. With durability `normal` a commit
        is a few tens of microseconds (no fsync), cheaper than a hop to a worker thread, so it
        runs on the event loop, where nothing can interrupt it; with `full` every commit waits for
        the disk, so it runs in a worker thread, shielded from cancellation."""
        if self.policy.config.ledger.durability == "normal":
            return write()
        with anyio.CancelScope(shield=True):
            done = await anyio.to_thread.run_sync(write)
        return done

    async def _record_outcome(
        self, call_id: str, outcome: str, ms: float, detail: str | None, scrubber: Scrubber
    ) -> None:
        """With durability `normal` the outcome rides on the next decision's transaction (or is
        committed within OUTCOME_DELAY by `commit_outcomes`); with `full` it is committed before
        the result is relayed."""
        try:
            text = scrubber.record(detail) if detail else None
            if self.policy.config.ledger.durability == "normal":
                self.ledger.record_outcome(call_id, outcome, ms, text, defer=True)
                self._outcomes_waiting.set()
            else:
                await self._write(partial(self.ledger.record_outcome, call_id, outcome, ms, text))
        except Exception as exc:
            self.log(f"could not record the outcome of call {call_id}: {exc}")

    async def commit_outcomes(self) -> None:
        """For as long as the guard serves: commit deferred outcomes no decision carried within
        OUTCOME_DELAY. A failure is logged once and retried until the ledger takes them."""
        failing = False
        while True:
            await self._outcomes_waiting.wait()
            self._outcomes_waiting = anyio.Event()
            await anyio.sleep(OUTCOME_DELAY)
            try:
                self.ledger.flush()
                failing = False
            except LedgerError as exc:
                if not failing:
                    self.log(f"could not record call outcomes yet; retrying: {exc}")
                failing = True
                self._outcomes_waiting.set()


def unreachable_denial(
    policy: Policy, agent: Agent, name: str, arguments: Mapping[str, Any], down: Collection[str]
) -> Decision | None:
    """A name that no listed tool has, but that is a tool the agent is granted on an upstream
    that is down (so its tools are unknown), is refused `upstream_unavailable`; to anyone else it
    does not exist. The guard and `explain` both decide with this."""
    for server in sorted(down):
        manifest = policy.manifests.get(server)
        if manifest is None or not name.startswith(manifest.name_prefix):
            continue
        tool = name[len(manifest.name_prefix) :]
        if policy.grant_for(agent, server, tool) is not None:
            return Decision(False, "upstream_unavailable", UNREACHABLE, server, tool, arguments)
    return None


def _same_lists(old: Mapping[str, tuple[types.Tool, ...]], new: Mapping[str, tuple[types.Tool, ...]]) -> bool:
    """The same tool-list objects (an upstream replaces its tuple when its tools change)."""
    return old.keys() == new.keys() and all(old[name] is new[name] for name in new)


def _refusal(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _jsonable(value: Any) -> Any:
    """Arguments as recorded: JSON-safe, with non-finite numbers (which were refused) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _progress_relay(ctx: ServerRequestContext[Any, Any]) -> Any:
    """Relay upstream progress to the client as numbers only, if the client asked for it."""
    token = (ctx.meta or {}).get("progress_token")
    if token is None:
        return None

    async def relay(progress: float, total: float | None, _message: str | None) -> None:
        try:
            await ctx.session.send_progress_notification(
                token,
                float(progress),
                float(total) if total is not None else None,
                related_request_id=str(ctx.request_id) if ctx.request_id is not None else None,
            )
        except Exception:  # progress is best effort
            return

    return relay


class GuardServer(Server[Any]):
    """The SDK's low-level server, saying on every transport that the tool list can change
    (the HTTP session manager asks for initialization options with no arguments)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        chosen = notification_options or NotificationOptions(tools_changed=True)
        return super().create_initialization_options(chosen, experimental_capabilities, extensions)


def build_server(guard: Guard) -> GuardServer:
    """Only tools/list, tools/call and ping are served; every other method gets -32601."""
    server = GuardServer(
        "mcp-guard", version=__version__, on_list_tools=guard.list_tools, on_call_tool=guard.call_tool
    )
    server.middleware = []  # the SDK's telemetry middleware costs 10-15% per call; not configured here
    return server


@asynccontextmanager
async def open_guard(
    config: GuardConfig, manifests: tuple[Manifest, ...], agent: Agent | None
) -> AsyncIterator[Guard]:
    """Open the ledger, start every upstream, and close them all on exit."""
    policy = Policy(config, manifests)
    scrubber = Scrubber(policy.secrets)
    ledger = Ledger.open(config.ledger.path, config.ledger.durability)
    ledger.checkpoint_in_background()
    guards: list[Guard] = []

    async def changed(up: Upstream) -> None:
        for guard in guards:
            await guard.tools_changed(up)

    def log(text: str) -> None:
        # Through the guard once it exists, so a reload's new secrets are scrubbed too.
        (guards[0].log if guards else scrubber.log)(text)

    try:
        async with open_pool(
            manifests, log, on_change=changed, max_result_bytes=config.limits.max_result_bytes
        ) as pool:
            guards.append(Guard(policy=policy, pool=pool, ledger=ledger, agent=agent))
            await guards[0].record_policy({"action": "loaded", "hash": policy.hash})
            assert pool.tg is not None
            pool.tg.start_soon(guards[0].commit_outcomes)
            pool.tg.start_soon(guards[0].warm)
            yield guards[0]
    finally:
        try:
            ledger.close()  # commits the outcomes still deferred
        except LedgerError as exc:
            log(f"could not record the outcomes of the last calls: {exc}")
