"""One pool of upstream MCP sessions, one per manifest, over stdio or Streamable HTTP. An upstream
that dies is restarted on the next use; nothing an upstream does escapes as anything but an
UpstreamError. Knows nothing of agents or policy."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT as ProgressFn

from mcp_guard.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from mcp_guard.manifest import Manifest

START_TIMEOUT = 30.0
OnChange = Callable[["Upstream"], Awaitable[None]]


class Upstream:
    """One upstream server. A background task owns its transport and session, so that their
    context managers open and close in one task; calls use the session from any task."""

    def __init__(self, manifest: Manifest, on_change: OnChange, log: Callable[[str], None]) -> None:
        self.manifest = manifest
        self.tools: tuple[types.Tool, ...] = ()
        self._on_change = on_change
        self._log = log
        self._session: ClientSession | None = None
        self._stop: anyio.Event | None = None
        self._lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def name(self) -> str:
        return self.manifest.server

    @property
    def alive(self) -> bool:
        return self._session is not None

    async def ensure(self, tg: anyio.abc.TaskGroup) -> ClientSession:
        """The live session, starting (or restarting) the upstream if it is not running."""
        self._tg = tg
        async with self._lock:
            if self._session is not None:
                return self._session
            ready = anyio.Event()
            failure: list[BaseException] = []
            self._stop = anyio.Event()
            tg.start_soon(self._run, self._stop, ready, failure)
            await ready.wait()
            if self._session is None:
                reason = _describe(failure[0]) if failure else "it exited during start-up"
                msg = f"upstream {self.name!r} could not be started: {reason}"
                raise UpstreamUnavailable(msg)
            return self._session

    async def _run(self, stop: anyio.Event, ready: anyio.Event, failure: list[BaseException]) -> None:
        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(
                    ClientSession(
                        read, write, message_handler=self._on_message, logging_callback=self._on_log
                    )
                )
                with anyio.fail_after(START_TIMEOUT):
                    await session.initialize()
                    self.tools = tuple((await session.list_tools()).tools)
                self._session = session
                ready.set()
                await stop.wait()
        except Exception as exc:  # whatever an upstream does, the guard keeps serving
            failure.append(exc)
            if self._session is not None:
                self._log(f"upstream {self.name!r} stopped: {_describe(exc)}")
        finally:
            self._session = None
            ready.set()

    def _transport(self) -> Any:
        up = self.manifest.upstream
        if up.command is not None:
            command = sys.executable if up.command in ("python", "python3") else up.command
            cwd = up.cwd if up.cwd is None or up.cwd.is_absolute() else self.manifest.source.parent / up.cwd
            params = StdioServerParameters(command=command, args=list(up.args), env=dict(up.env), cwd=cwd)
            return stdio_client(params, errlog=sys.stderr)
        assert up.url is not None
        client = httpx2.AsyncClient(headers=dict(up.headers), timeout=httpx2.Timeout(up.timeout, read=None))
        return _owned_http(up.url, client)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification) and self._session is not None:
            try:
                self.tools = tuple((await self._session.list_tools()).tools)
            except Exception as exc:
                self._log(f"upstream {self.name!r}: relisting tools failed: {_describe(exc)}")
                return
            await self._on_change(self)

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        # Upstream log messages go to the operator (stderr), never to agents.
        self._log(f"upstream {self.name!r} [{params.level}]: {params.data}")

    def mark_dead(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._session = None

    async def call(
        self, tg: anyio.abc.TaskGroup, tool: str, arguments: dict[str, Any], progress: ProgressFn | None
    ) -> types.CallToolResult:
        session = await self.ensure(tg)
        timeout = self.manifest.upstream.timeout
        try:
            with anyio.fail_after(timeout + 5):
                return await session.call_tool(
                    tool, arguments, read_timeout_seconds=timeout, progress_callback=progress
                )
        except MCPError as exc:
            if exc.error.code == types.REQUEST_TIMEOUT:
                raise UpstreamTimeout(f"upstream {self.name!r} timed out after {timeout:g}s") from None
            if exc.error.code == types.CONNECTION_CLOSED:
                self.mark_dead()
            raise UpstreamError(f"upstream {self.name!r}: {_describe(exc)}") from None
        except TimeoutError:
            self.mark_dead()
            raise UpstreamTimeout(f"upstream {self.name!r} timed out after {timeout:g}s") from None
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            if self._session is None or isinstance(
                exc, anyio.ClosedResourceError | anyio.BrokenResourceError
            ):
                self.mark_dead()
            raise UpstreamError(f"upstream {self.name!r}: {_describe(exc)}") from None

    async def aclose(self) -> None:
        self.mark_dead()


def _owned_http(url: str, client: httpx2.AsyncClient) -> Any:
    @asynccontextmanager
    async def cm() -> Any:
        async with client, streamable_http_client(url, http_client=client) as streams:
            yield streams[0], streams[1]

    return cm()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300] if text else type(exc).__name__


class Pool:
    """Every upstream of the policy, started together and kept by name."""

    def __init__(
        self, manifests: tuple[Manifest, ...], on_change: OnChange, log: Callable[[str], None]
    ) -> None:
        self.upstreams = {m.server: Upstream(m, on_change, log) for m in manifests}
        self.log = log
        self.tg: anyio.abc.TaskGroup | None = None

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start every upstream at once; one that fails is reported and retried on use."""
        self.tg = tg

        async def start_one(up: Upstream) -> None:
            try:
                await up.ensure(tg)
            except UpstreamError as exc:
                self.log(str(exc))

        async with anyio.create_task_group() as starters:
            for up in self.upstreams.values():
                starters.start_soon(start_one, up)

    async def catalog(self) -> dict[str, tuple[types.Tool, ...]]:
        """Live tools by server; dead upstreams are restarted first (and skipped if they fail)."""
        assert self.tg is not None
        for up in self.upstreams.values():
            if not up.alive:
                try:
                    await up.ensure(self.tg)
                except UpstreamError as exc:
                    self.log(str(exc))
        return {name: up.tools for name, up in self.upstreams.items() if up.alive}

    async def call(
        self, server: str, tool: str, arguments: dict[str, Any], progress: ProgressFn | None
    ) -> types.CallToolResult:
        assert self.tg is not None
        return await self.upstreams[server].call(self.tg, tool, arguments, progress)

    async def aclose(self) -> None:
        for up in self.upstreams.values():
            await up.aclose()


@asynccontextmanager
async def open_pool(
    manifests: tuple[Manifest, ...], on_change: OnChange, log: Callable[[str], None]
) -> AsyncIterator[Pool]:
    """Start every upstream; stop them all on exit."""
    pool = Pool(manifests, on_change, log)
    async with anyio.create_task_group() as tg:
        await pool.start(tg)
        try:
            yield pool
        finally:
            await pool.aclose()
            tg.cancel_scope.cancel()
