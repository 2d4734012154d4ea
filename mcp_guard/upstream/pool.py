"""One pool of upstream MCP sessions, one per manifest, each over the transport its manifest names
(stdio or Streamable HTTP) unless another is handed in for that server (transports.py). An upstream
that dies, or sends a message over the cap, is restarted on the next use; nothing an upstream does
escapes as anything but an UpstreamError. Knows nothing of agents or policy."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.shared.dispatcher import ProgressFnT as ProgressFn

from mcp_guard import tracing
from mcp_guard.config import LimitsConfig
from mcp_guard.errors import UpstreamUnavailable
from mcp_guard.manifest import Manifest
from mcp_guard.upstream import inbound
from mcp_guard.upstream.surfaces import NOTICES, Listed, dump, failure, list_surfaces, relist
from mcp_guard.upstream.transports import Transport, Wiring, describe_failure, manifest_transport

START_TIMEOUT = 30.0  # an upstream that has not answered initialize and tools/list by then has failed
START_WAIT = 5.0  # how long the guard's own start waits for its upstreams before serving
MAX_BACKOFF = 30.0  # seconds between attempts to start an upstream that keeps failing
MAX_RESULT_BYTES = LimitsConfig().max_result_bytes
OnChange = Callable[["Upstream"], Awaitable[None]]
Log = Callable[[str], None]
T = TypeVar("T")


class Upstream:
    """One upstream server. A background task owns its transport and session, so that their
    context managers open and close in one task; requests use the session from any task. Starting
    never holds up other upstreams: a failed start is retried after a backoff. Its stderr lines go
    to `errlog` (default `log`); each session is opened by `transport` (default: the manifest's)."""

    def __init__(
        self,
        manifest: Manifest,
        on_change: OnChange,
        log: Log,
        *,
        max_result_bytes: int = MAX_RESULT_BYTES,
        errlog: Log | None = None,
        transport: Transport = manifest_transport,
        on_secret: Log | None = None,
        relay: inbound.Relay | None = None,
    ) -> None:
        self.manifest, self._relay = manifest, relay
        self._on_secret = on_secret or (lambda _: None)
        self.tools: tuple[types.Tool, ...] = ()
        self.surfaces = Listed()  # its resources, templates and prompts
        self.on_updated: Callable[[str, str], Awaitable[None]] | None = None  # (server, uri)
        self.max_result_bytes = max_result_bytes
        self._on_change = on_change
        self._log = log
        self._errlog = errlog or log
        self._transport = transport
        self._too_large = False  # the session ended on a message over max_result_bytes
        self._session: ClientSession | None = None
        self._stop: anyio.Event | None = None
        self._starting: anyio.Event | None = None  # set when the start in flight ends
        self._failures = 0
        self._retry_at = 0.0
        self._last_failure = "it has not been started"
        self._in_flight = 0
        self._retired = False  # replaced on reload: stops once its calls in flight have ended

    @property
    def name(self) -> str:
        return self.manifest.server

    @property
    def alive(self) -> bool:
        return self._session is not None

    @property
    def starting(self) -> anyio.Event | None:
        """Set when the start in flight ends; None when no start is in flight."""
        return self._starting

    def start_soon(self, tg: anyio.abc.TaskGroup) -> anyio.Event:
        """Begin a start unless one is running, it is alive, or it failed too recently; returns
        an event that is set when the attempt (if any) ends."""
        if self._starting is not None:
            return self._starting
        done = anyio.Event()
        if self._session is None and not self._retired and time.monotonic() >= self._retry_at:
            self._starting = done
            self._stop = anyio.Event()
            tg.start_soon(self._run, self._stop, done)
        else:
            done.set()
        return done

    async def ensure(self, tg: anyio.abc.TaskGroup) -> ClientSession:
        """The live session, starting (or restarting) the upstream if it is not running."""
        if self._session is None:
            await self.start_soon(tg).wait()
        if self._session is None:
            msg = f"upstream {self.name!r} is unavailable: {self._last_failure}"
            raise UpstreamUnavailable(msg)
        return self._session

    async def _run(self, stop: anyio.Event, done: anyio.Event) -> None:
        session: ClientSession | None = None
        self._too_large = False
        problems: list[str] = []  # what the transport saw go wrong: the words a failure is told in
        reason = "it exited during start-up"
        try:
            async with AsyncExitStack() as stack:
                wired = (self._on_stderr, self._on_too_large, problems.append, self._on_secret)
                wiring = Wiring(self.max_result_bytes, *wired)
                read, write = await stack.enter_async_context(self._transport(self.manifest, wiring))
                callbacks = inbound.session_callbacks(self.manifest, self._relay, self._log)
                session = await stack.enter_async_context(
                    ClientSession(read, write, message_handler=self._on_message, **callbacks)
                )
                with anyio.fail_after(START_TIMEOUT):
                    init = await session.initialize()
                    tools = tuple((await session.list_tools()).tools)
                    listed = await list_surfaces(session, init.capabilities)
                changed = dump(tools) != dump(self.tools) or listed.dump() != self.surfaces.dump()
                self.tools, self.surfaces, self._session, self._failures = tools, listed, session, 0
                self._starting = None
                done.set()
                if changed:
                    await self._on_change(self)
                await stop.wait()
        except anyio.get_cancelled_exc_class():  # given up on: the pool's wait is over, or the guard stops
            reason = "it did not answer in time"
            raise
        except Exception as exc:  # whatever an upstream does, the guard keeps serving
            if self._session is session and session is not None:
                self._log(f"upstream {self.name!r} stopped: {describe_failure(exc)}")
            timed_out = isinstance(exc, TimeoutError)
            reason = (
                "it did not answer in time"
                if timed_out
                else describe_failure(exc, self.manifest.upstream.url)
            )
        finally:
            if self._session is session:
                self._session = None
            if not done.is_set():
                self._failed(problems[-1] if problems else reason)
                self._starting = None
                done.set()

    def _failed(self, reason: str) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + min(2.0 ** (self._failures - 1), MAX_BACKOFF)
        self._last_failure = reason
        self._log(f"upstream {self.name!r} could not be started: {reason}")

    def _on_stderr(self, line: str) -> None:
        self._errlog(f"{self.name}: {line}")

    def _on_too_large(self) -> None:
        self._too_large = True
        self._log(
            f"upstream {self.name!r} sent a message over {self.max_result_bytes} bytes "
            "(limits.max_result_bytes): it was stopped, and starts again on the next call"
        )

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification) and self._session is not None:
            try:
                self.tools = tuple((await self._session.list_tools()).tools)
            except Exception as exc:
                self._log(f"upstream {self.name!r}: relisting tools failed: {describe_failure(exc)}")
                return
            await self._on_change(self)
        elif (
            isinstance(message, NOTICES)
            and self._session is not None
            and await relist(self, self._session, message)
        ):
            await self._on_change(self)

    def mark_dead(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._session = None

    async def call(
        self, tg: anyio.abc.TaskGroup, tool: str, arguments: dict[str, Any], progress: ProgressFn | None
    ) -> types.CallToolResult:
        timeout = self.manifest.upstream.timeout
        return await self.ask(
            tg, tool, lambda s: inbound.call_tool(s, self.name, tool, arguments, timeout, progress)
        )

    async def ask(
        self, tg: anyio.abc.TaskGroup, what: str, send: Callable[[ClientSession], Awaitable[T]]
    ) -> T:
        """`send` on the live session, within the timeout; every failure becomes an UpstreamError."""
        self._in_flight += 1
        try:
            session = await self.ensure(tg)
            timeout = self.manifest.upstream.timeout
            try:
                with anyio.fail_after(timeout + 5), tracing.upstream_call(self.name, what):
                    return await send(session)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                error, dead = failure(exc, self.name, timeout, self._too_large, self._session is None)
                if dead:
                    self.mark_dead()
                raise error from None
        finally:
            self._in_flight -= 1
            if self._retired and self._in_flight == 0:
                self.mark_dead()

    def retire(self) -> None:
        """Replaced by a new session: stop now if idle, else when the last call in flight ends."""
        self._retired = True
        if self._in_flight == 0:
            self.mark_dead()

    async def aclose(self) -> None:
        self.mark_dead()


async def _ignore(_: Upstream) -> None:
    return None


class Pool:
    """Every upstream of the policy, started together and kept by name."""

    def __init__(
        self,
        manifests: tuple[Manifest, ...],
        on_change: OnChange,
        log: Log,
        *,
        max_result_bytes: int = MAX_RESULT_BYTES,
        errlog: Log | None = None,
        transports: Mapping[str, Transport] | None = None,
        on_secret: Log | None = None,
        relay: inbound.Relay | None = None,
    ) -> None:
        self.log, self.relay = log, relay
        self.on_secret = on_secret
        self.errlog = errlog
        self.transports = dict(transports or {})
        self.max_result_bytes = max_result_bytes
        self.tg: anyio.abc.TaskGroup | None = None
        self._on_change = on_change
        self.on_updated: Callable[[str, str], Awaitable[None]] | None = None
        self.upstreams = {m.server: self._new(m) for m in manifests}

    def _new(self, manifest: Manifest) -> Upstream:
        up = Upstream(
            manifest,
            self._on_change,
            self.log,
            max_result_bytes=self.max_result_bytes,
            errlog=self.errlog,
            transport=self.transports.get(manifest.server, manifest_transport),
            on_secret=self.on_secret,
            relay=self.relay,
        )
        up.on_updated = self._updated
        return up

    def upstream(self, server: str) -> Upstream:
        """The upstream in force for a server; one removed by a reload is unavailable."""
        up = self.upstreams.get(server)
        if up is None:
            msg = f"upstream {server!r} is no longer configured"
            raise UpstreamUnavailable(msg)
        return up

    async def update(
        self,
        manifests: tuple[Manifest, ...],
        wait: float = START_WAIT,
        *,
        max_result_bytes: int | None = None,
    ) -> None:
        """Follow a reloaded policy: an upstream whose `upstream` block (and result cap) is
        unchanged is kept (with its new manifest), a new or changed one starts (waiting up to
        `wait` seconds for it), and a removed or replaced one stops once its calls in flight have
        ended."""
        assert self.tg is not None
        if max_result_bytes is not None:
            self.max_result_bytes = max_result_bytes
        kept: dict[str, Upstream] = {}
        for m in manifests:
            old = self.upstreams.get(m.server)
            if (
                old is not None
                and old.manifest.upstream == m.upstream
                and old.max_result_bytes == self.max_result_bytes
            ):
                old.manifest = m
                kept[m.server] = old
            else:
                kept[m.server] = self._new(m)
        retired = [up for name, up in self.upstreams.items() if kept.get(name) is not up]
        fresh = [up for name, up in kept.items() if self.upstreams.get(name) is not up]
        self.upstreams = kept
        for up in retired:
            up.retire()
        attempts = [up.start_soon(self.tg) for up in fresh]
        with anyio.move_on_after(wait):
            for done in attempts:
                await done.wait()

    async def start(self, tg: anyio.abc.TaskGroup, wait: float = START_WAIT) -> None:
        """Start every upstream at once and wait up to `wait` seconds for them; one that is not
        up by then joins later (clients are told the tool list changed)."""
        self.tg = tg
        attempts = [up.start_soon(tg) for up in self.upstreams.values()]
        with anyio.move_on_after(wait):
            for done in attempts:
                await done.wait()

    async def catalog(self) -> dict[str, tuple[types.Tool, ...]]:
        """Tools by server, at once. An upstream that is down keeps the tools it last listed (a
        call to one restarts it, or is refused `upstream_unavailable`) and is restarted in the
        background after its backoff; one that never came up has none."""
        assert self.tg is not None
        for up in self.upstreams.values():
            if not up.alive:
                up.start_soon(self.tg)
        return {name: up.tools for name, up in self.upstreams.items() if up.tools}

    def down(self) -> frozenset[str]:
        """The servers whose upstream is not running now."""
        return frozenset(name for name, up in self.upstreams.items() if not up.alive)

    async def settle(self) -> bool:
        """Wait for the first starts still in flight (upstreams that never listed tools yet);
        True if there was one to wait for. Each start is bounded by START_TIMEOUT."""
        pending = [up.starting for up in self.upstreams.values() if not up.tools and up.starting is not None]
        for done in pending:
            await done.wait()
        return bool(pending)

    async def call(
        self, server: str, tool: str, arguments: dict[str, Any], progress: ProgressFn | None
    ) -> types.CallToolResult:
        assert self.tg is not None
        return await self.upstream(server).call(self.tg, tool, arguments, progress)

    async def _updated(self, server: str, uri: str) -> None:
        if self.on_updated is not None:
            await self.on_updated(server, uri)

    async def aclose(self) -> None:
        for up in self.upstreams.values():
            await up.aclose()


@asynccontextmanager
async def open_pool(
    manifests: tuple[Manifest, ...],
    log: Log,
    *,
    on_change: OnChange | None = None,
    wait: float = START_WAIT,
    max_result_bytes: int = MAX_RESULT_BYTES,
    errlog: Log | None = None,
    transports: Mapping[str, Transport] | None = None,
    on_secret: Log | None = None,
    relay: inbound.Relay | None = None,
) -> AsyncIterator[Pool]:
    """Start every upstream (waiting up to `wait` seconds for them); stop them all on exit.
    `on_change` hears of an upstream whose tool list changed (a serving guard tells its clients);
    the upstreams' stderr lines go to `errlog` (default `log`); `on_secret` hears of each credential
    obtained for an upstream (its access tokens), to scrub it. `transports` names, by server, a
    transport to use instead of the manifest's (tests: `memory_transport`); it outlives reloads.
    `relay` hears of the upstreams' requests and log messages (inbound.py)."""
    on_change = on_change or _ignore
    pool = Pool(
        manifests,
        on_change,
        log,
        max_result_bytes=max_result_bytes,
        errlog=errlog,
        transports=transports,
        on_secret=on_secret,
        relay=relay,
    )
    async with anyio.create_task_group() as tg:
        await pool.start(tg, wait)
        try:
            yield pool
        finally:
            await pool.aclose()
            tg.cancel_scope.cancel()
