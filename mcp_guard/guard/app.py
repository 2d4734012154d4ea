"""The guard process: the policy in force and everything derived from it (the pin-checked
catalog, each agent's offers, the scrubber), the upstream pool and the ledger; reload, tool-list
change notices, and the ledger entries the process makes (policy, outcomes). The call pipeline is
calls.py; one connection's state is caller.py; MCP type conversion is convert.py. Talks to the
ledger only through its LedgerStore protocol: how and where a store commits is its own business."""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPDeprecationWarning

from mcp_guard import __version__
from mcp_guard.config import GuardConfig
from mcp_guard.errors import LedgerError
from mcp_guard.guard import pins, reads, standing
from mcp_guard.guard.convert import offered, tool_def
from mcp_guard.guard.exchanges import Exchanges
from mcp_guard.guard.observed import ObservedLedger
from mcp_guard.guard.standing import Standing
from mcp_guard.guard.surfaces import SurfaceCatalog
from mcp_guard.guard.telemetry import Telemetry
from mcp_guard.ledger import LedgerStore, PolicyEvent, open_ledger
from mcp_guard.ledger.checkpoints import keep_checkpoints, signing_key
from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Agent, Catalog, Policy
from mcp_guard.policy.offers import Offer
from mcp_guard.secrets import MAX_LEARNED, Scrubber
from mcp_guard.upstream.pool import Pool, Upstream, open_pool
from mcp_guard.upstream.transports import Transport

if TYPE_CHECKING:
    from mcp_guard.guard.caller import Caller

Lists = dict[str, tuple[types.Tool, ...]]  # each upstream's tool list, by server


@dataclass
class Guard:
    """The guard process: the policy in force (swapped whole on reload), the upstreams, the
    ledger, and what is derived from them once per policy (the pin-checked catalog, each agent's
    offers). Shared by every caller; per-connection state lives in Caller."""

    policy: Policy
    pool: Pool
    ledger: LedgerStore
    served: tuple[str, ...] = ()  # agents to prepare offers for at start (stdio: its one agent)
    telemetry: Telemetry = field(default_factory=Telemetry)  # metrics and traces, each off unless configured
    exchanges: Exchanges = field(default_factory=Exchanges)  # upstream requests and logs relayed to clients
    owns_process: bool = False  # the serving command: its start-up heap is frozen once warm
    scrubber: Scrubber = field(init=False)
    # Caches for the policy in force: (policy, the upstreams' lists, the pin-checked catalog).
    _catalog: tuple[Policy, Lists, Catalog] | None = field(default=None, init=False)
    _offers: dict[str, tuple[Catalog, tuple[Any, bool], dict[str, Offer]]] = field(
        default_factory=dict, init=False
    )
    standing: Standing = field(default_factory=Standing, init=False)  # activations and lockouts
    withheld: dict[str, pins.Withheld] = field(default_factory=dict, init=False)  # by advertised name
    _building: anyio.Lock = field(default_factory=anyio.Lock, init=False)  # one catalog build at a time
    # The clients' connections, to tell of tool list changes. The SDK builds a ServerSession per
    # request (a weak set of those empties at once); its connection lives as long as the client.
    _sessions: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet, init=False)
    learned: tuple[str, ...] = field(default=(), init=False)  # see learn_secret
    exposed: reads.Exposed = field(init=False)  # resources, templates, prompts and subscriptions

    def __post_init__(self) -> None:
        self.scrubber = Scrubber(self.policy.secrets)
        self.exchanges.guard = self
        self.ledger.redactor = self.scrubber
        self.exposed = reads.Exposed(SurfaceCatalog(self.ledger, self.log))
        self.pool.on_updated = partial(reads.resource_updated, self)

    def log(self, text: str) -> None:
        self.scrubber.log(text)

    def learn_secret(self, secret: str) -> None:
        """Scrub a credential obtained while serving (an upstream's access token) from now on, in
        the scrubber in force and in those of later policies (the latest few are kept)."""
        self.learned = (*self.learned, secret)[-MAX_LEARNED:]
        self.scrubber.learn(secret)

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
        pinned = await pins.resolve(self.ledger, policy.manifests, catalog, self.log)
        for withheld in pinned.withheld:
            self.log(withheld.warning)
        if policy is not self.policy:
            return pinned.catalog
        manifests = policy.manifests
        self.withheld = pins.by_name(manifests, pinned.withheld)
        if pinned.settled:  # else the ledger failed: decide again on the next request
            self._catalog = (policy, live, pinned.catalog)
        return pinned.catalog

    async def warm(self) -> None:
        """Build the catalog (pin checks and their ledger entries included) and the offers of
        the agents served, as soon as the guard starts and while clients are still connecting,
        so that a client's first request does not wait for it. A failure is logged; the first
        request builds them instead."""
        agents = self.policy.agents
        try:
            for name in self.served or tuple(agents):
                if name in agents:
                    await self.offers(agents[name])
        except Exception as exc:
            self.log(f"could not prepare the tool catalog at start: {exc}")
        if self.owns_process:
            # What the start built (the SDK's models, the catalog, compiled limits) lives as long as
            # the process: out of the collector's reach, a full collection under load walks only
            # what requests allocate. It was the guard's p99 over HTTP: 5x the bare proxy's on one
            # connection, below it after.
            gc.freeze()

    async def offers(
        self, agent: Agent, policy: Policy | None = None, scrubber: Scrubber | None = None
    ) -> dict[str, Offer]:
        """What `agent` may call under `policy` (default: the one in force, with its scrubber), with
        its activations in force; nothing while it is locked out."""
        policy = policy or self.policy
        catalog = await self.catalog(policy)
        active, locked = standing = self.standing.of(agent.name)
        if locked:
            return {}
        if policy is not self.policy:
            offers = policy.offers(agent, catalog, active)
            return offered(offers, scrubber or Scrubber(policy.secrets), self.log)
        cached = self._offers.get(agent.name)
        if cached is None or cached[0] is not catalog or cached[1] != standing:
            cached = (
                catalog,
                standing,
                offered(policy.offers(agent, catalog, active), self.scrubber, self.log),
            )
            self._offers[agent.name] = cached
        return cached[2]

    def ready_offers(self, agent: str) -> dict[str, Offer] | None:
        """The agent's offers if they are ready for the catalog and standing in force, else None
        (no await: for what must answer at once)."""
        cached, catalog = self._offers.get(agent), self._catalog
        if cached is None or catalog is None or cached[0] is not catalog[2]:
            return None
        return cached[2] if cached[1] == self.standing.of(agent) else None

    async def refresh_standing(self) -> bool:
        """Read the agents' standing from the ledger again; whether it changed."""
        found = await self.ledger.read(standing.read)
        changed, self.standing = found != self.standing, found
        return changed

    async def watch_standing(self) -> None:
        """For as long as the guard serves: read the standing every POLL seconds (when the policy
        has a grant that needs activating, or a lockout) and tell every client when it changed."""
        while True:
            await anyio.sleep(standing.POLL)
            if not (self.policy.activatable or self.policy.config.lockout or self.standing.active):
                continue
            try:
                if await self.refresh_standing():
                    await self.notify()
            except Exception as exc:
                self.log(f"could not read activations and lockouts from the ledger: {exc}")

    async def reload(self, config: GuardConfig, manifests: tuple[Manifest, ...]) -> Policy:
        """Put a new policy in force: upstreams whose `upstream` block changed get a new session
        (the old one drains), then the policy, its scrubber and the caches are swapped in one step
        (no await between), the swap is stamped in the ledger and every client is told."""
        policy = Policy(config, manifests)
        scrubber = Scrubber(policy.secrets)
        for secret in self.learned:
            scrubber.learn(secret)
        await self.pool.update(manifests, max_result_bytes=config.limits.max_result_bytes)
        self.policy, self.scrubber = policy, scrubber
        self.ledger.redactor = scrubber
        self._catalog, self._offers, self.withheld = None, {}, {}
        await self.record_policy({"action": "loaded", "hash": policy.hash})
        await self.tools_changed(None)
        return policy

    async def record_policy(self, payload: dict[str, Any]) -> None:
        """A `policy` entry in the ledger, stamped with the hash in force."""
        try:
            await self.ledger.append(PolicyEvent(payload=payload, policy_hash=self.policy.hash))
        except Exception as exc:
            self.log(f"could not record a policy entry in the ledger: {exc}")

    async def tools_changed(self, _: Upstream | None) -> None:
        try:
            await self.catalog()  # the new definitions are pin-checked (and recorded) at once
        except Exception as exc:
            self.log(f"could not check a changed tool list: {exc}")
        await self.notify()

    async def notify(self) -> None:
        """Send notifications/tools/list_changed to every connected client (and the resource and
        prompt list changes where the policy grants those)."""
        resources, prompts = self.policy.exposes
        for session in list(self._sessions):
            try:
                await session.send_tool_list_changed()
                if resources:
                    await session.send_resource_list_changed()
                if prompts:
                    await session.send_prompt_list_changed()
            except Exception as exc:
                self.log(f"could not notify a client of a tool list change: {exc}")

    def watch_session(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """Remember the client's connection, to tell it when the tools it may see change."""
        self._sessions.add(getattr(ctx.session, "_connection", ctx.session))

    async def record_outcome(
        self, call_id: str, outcome: str, ms: float, detail: str | None, scrubber: Scrubber
    ) -> None:
        """Committed before the result is relayed, or deferred onto a later transaction, as the
        store's durability says; a failure is logged (the call has happened)."""
        try:
            text = scrubber.record(detail) if detail else None
            await self.ledger.outcome(call_id, outcome, ms, text)
        except Exception as exc:
            self.log(f"could not record the outcome of call {call_id}: {exc}")


def _same_lists(old: Mapping[str, tuple[types.Tool, ...]], new: Mapping[str, tuple[types.Tool, ...]]) -> bool:
    """The same tool-list objects (an upstream replaces its tuple when its tools change)."""
    return old.keys() == new.keys() and all(old[name] is new[name] for name in new)


class GuardServer(Server[Any]):
    """The SDK's low-level server, saying on every transport that the tool list can change
    (the HTTP session manager asks for initialization options with no arguments), and offering
    resources, prompts and completion only where the policy in force grants them."""

    guard: Guard | None = None

    def get_capabilities(self, *args: Any, **kwargs: Any) -> types.ServerCapabilities:
        found = super().get_capabilities(*args, **kwargs)
        resources, prompts = self.guard.policy.exposes if self.guard else (False, False)
        return found.model_copy(
            update={
                "resources": found.resources if resources else None,
                "prompts": found.prompts if prompts else None,
                "completions": found.completions if resources or prompts else None,
            }
        )

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        chosen = notification_options or NotificationOptions(
            tools_changed=True, prompts_changed=True, resources_changed=True
        )
        return super().create_initialization_options(chosen, experimental_capabilities, extensions)


def build_server(caller: Caller) -> GuardServer:
    """Tools, resources, prompts, completion, logging/setLevel and ping are served; every other
    method gets -32601."""
    with warnings.catch_warnings():  # logging/setLevel is deprecated by 2026-07-28, not before it
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        server = GuardServer(
            "mcp-guard",
            version=__version__,
            on_list_tools=caller.list_tools,
            on_call_tool=caller.call_tool,
            on_set_logging_level=caller.set_logging_level,
            get_tool_input_schema=caller.tool_input_schema,
            on_list_resources=partial(reads.list_resources, caller),
            on_list_resource_templates=partial(reads.list_templates, caller),
            on_read_resource=partial(reads.read_resource, caller),
            on_subscribe_resource=partial(reads.subscribe_resource, caller),
            on_unsubscribe_resource=partial(reads.unsubscribe_resource, caller),
            on_list_prompts=partial(reads.list_prompts, caller),
            on_get_prompt=partial(reads.get_prompt, caller),
            on_completion=partial(reads.complete, caller),
        )
    server.guard = caller.guard
    server.middleware = []  # the SDK's telemetry middleware costs 10-15% per call; not configured here
    return server


@asynccontextmanager
async def open_guard(
    config: GuardConfig,
    manifests: tuple[Manifest, ...],
    served: tuple[str, ...] = (),
    transports: Mapping[str, Transport] | None = None,
    telemetry: Telemetry | None = None,
    *,
    owns_process: bool = False,
) -> AsyncIterator[Guard]:
    """Open the ledger, start every upstream, and close them all on exit. `served` names the agents
    whose offers are prepared at start (default: every agent); `transports` goes to the pool;
    `telemetry` defaults to what guard.yaml and the OTEL_* variables configure; `owns_process`:
    the guard is the process (the `serve` command), not a part of a larger one such as a test."""
    policy = Policy(config, manifests)
    scrubber = Scrubber(policy.secrets)
    points = config.ledger.checkpoints
    key = signing_key(points) if points is not None else None  # a bad key stops the start
    telemetry = telemetry or Telemetry(metrics=config.http.metrics)
    ledger = ObservedLedger.around(await open_ledger(config.ledger))  # decisions and outcomes reach telemetry
    exchanges = Exchanges()
    guards: list[Guard] = []

    async def changed(up: Upstream) -> None:
        for guard in guards:
            await guard.tools_changed(up)

    def log(text: str) -> None:
        # Through the guard once it exists, so a reload's new secrets are scrubbed too.
        (guards[0].log if guards else scrubber.log)(text)

    def learn(secret: str) -> None:
        scrubber.learn(secret)
        if guards:
            guards[0].learn_secret(secret)

    try:
        async with open_pool(
            manifests,
            log,
            on_change=changed,
            max_result_bytes=config.limits.max_result_bytes,
            transports=transports,
            on_secret=learn,
            relay=exchanges,
        ) as pool:
            guards.append(
                Guard(
                    policy,
                    pool,
                    ledger,
                    served=served,
                    telemetry=telemetry,
                    exchanges=exchanges,
                    owns_process=owns_process,
                )
            )
            await guards[0].record_policy({"action": "loaded", "hash": policy.hash})
            try:
                await guards[0].refresh_standing()
            except Exception as exc:  # the watcher reads it again
                log(f"could not read activations and lockouts from the ledger: {exc}")
            assert pool.tg is not None
            pool.tg.start_soon(ledger.maintain, guards[0].log)
            if points is not None and key is not None:
                pool.tg.start_soon(keep_checkpoints, ledger, key, points, guards[0].log)
            pool.tg.start_soon(guards[0].watch_standing)
            pool.tg.start_soon(guards[0].warm)
            yield guards[0]
    finally:
        try:
            with anyio.CancelScope(shield=True):
                await ledger.close()  # commits the outcomes still deferred
        except LedgerError as exc:
            log(f"could not record the outcomes of the last calls: {exc}")
        telemetry.close()
