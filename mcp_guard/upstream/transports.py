"""How the guard talks to an upstream: the one I/O seam under pool.py, in the manner of httpx's
`_transports`. A `Transport` opens one session's message streams for a manifest's upstream; the
pool uses `manifest_transport` (a process over stdio, or Streamable HTTP, as the manifest says)
unless it is handed another per server, such as `memory_transport` (an MCP `Server` running in
this process, for tests). Whatever the transport, every message an upstream sends is read no
further than the cap (`limits.max_result_bytes`); a stdio upstream's stderr reaches the operator
line by line, bounded, through the guard's scrubbed log. Knows nothing of agents or policy."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp.client._transport import ReadStream, WriteStream
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server
from mcp.shared.message import SessionMessage

from mcp_guard.manifest import Manifest
from mcp_guard.upstream.credentials import ClientCredentialsAuth
from mcp_guard.upstream.framing import dump, parse
from mcp_guard.upstream.pipes import EXIT_GRACE, stdio_transport

Streams = tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]


@dataclass(frozen=True)
class Wiring:
    """What the pool asks of every transport: refuse a message over `max_message_bytes` (tell
    `on_too_large`, and end the session as if the upstream had exited), and hand each line the
    upstream writes to its stderr, if it has one, to `on_stderr`."""

    max_message_bytes: int
    on_stderr: Callable[[str], None]
    on_too_large: Callable[[], None]
    on_problem: Callable[[str], None] = lambda _: None
    """What went wrong, as the transport saw it (an exit status, an HTTP status): the words the pool
    reports when a start fails, rather than what the session saw of it (`Connection closed`)."""
    on_secret: Callable[[str], None] = lambda _: None  # a credential obtained for the upstream


Transport = Callable[[Manifest, Wiring], AbstractAsyncContextManager[Streams]]
"""Opens the streams of one session with a manifest's upstream, and closes everything it started on
exit. The session ends when the read stream ends: that is how an upstream that exited, crashed or
sent too much looks to the pool, which starts a new session on the next call."""


class ResponseTooLarge(httpx2.StreamError):
    """An HTTP upstream's response over the cap. A StreamError, so that the SDK answers the one
    request it belongs to with an error and the session goes on."""


def manifest_transport(manifest: Manifest, wiring: Wiring) -> AbstractAsyncContextManager[Streams]:
    """The transport the manifest's `upstream` block names: a command over stdio (`python` is this
    interpreter; `cwd` is relative to the manifest), or a URL over Streamable HTTP."""
    up = manifest.upstream
    if up.command is not None:
        command = sys.executable if up.command in ("python", "python3") else up.command
        cwd = up.cwd if up.cwd is None or up.cwd.is_absolute() else manifest.source.parent / up.cwd
        return stdio_transport(
            command,
            up.args,
            up.env,
            cwd,
            max_message_bytes=wiring.max_message_bytes,
            on_stderr=wiring.on_stderr,
            on_too_large=wiring.on_too_large,
            on_exit=lambda status: wiring.on_problem(f"it exited with status {status}"),
        )
    assert up.url is not None
    url = up.url

    async def tell(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            wiring.on_problem(f"{url} answered HTTP {response.status_code} {response.reason_phrase}".rstrip())

    auth = None
    if up.auth is not None:  # the guard's own token for it, never the agent's
        auth = ClientCredentialsAuth(up.auth.client_credentials, wiring.on_secret)
    client = capped_http_client(up.headers, up.timeout, wiring.max_message_bytes, auth=auth, on_response=tell)
    return _owned_http(up.url, client, wiring.max_message_bytes)


# -- Streamable HTTP ------------------------------------------------------------------------------


def capped_http_client(
    headers: Mapping[str, str],
    timeout: float,
    max_bytes: int,
    transport: httpx2.AsyncBaseTransport | None = None,
    on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None,
    *,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client for one upstream (authenticated by `auth`, if any) whose response bodies are
    read no further than `max_bytes` (ResponseTooLarge past it). Server-sent events are bounded
    per event by the SDK instead (give it the same cap): an event stream lasts as long as the
    session. Bodies are asked for uncompressed, and a compressed one is refused, so the cap also
    bounds what is decoded."""

    async def cap_body(response: httpx2.Response) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            response.stream = _CappedBody(response.stream, 0, f"a {encoding!r}-encoded response is refused")
            return
        if response.headers.get("content-type", "").lower().startswith("text/event-stream"):
            return
        response.stream = _CappedBody(
            response.stream, max_bytes, f"the response is over {max_bytes} bytes (limits.max_result_bytes)"
        )

    return httpx2.AsyncClient(
        headers={**headers, "Accept-Encoding": "identity"},
        timeout=httpx2.Timeout(timeout, read=None),
        event_hooks={"response": [cap_body] if on_response is None else [on_response, cap_body]},
        transport=transport,  # None: the client's own (with the environment's proxies)
        auth=auth,
    )


class _CappedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, max_bytes: int, problem: str) -> None:
        self._inner = inner
        self._max_bytes = max_bytes
        self._problem = problem

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._max_bytes:
                raise ResponseTooLarge(self._problem)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def _owned_http(url: str, client: httpx2.AsyncClient, max_result_bytes: int) -> AsyncIterator[Any]:
    """The SDK's Streamable HTTP streams (typed by its own stream protocols, which the session takes
    as it takes ours), over a client this transport owns and closes."""
    async with (
        client,
        streamable_http_client(url, http_client=client, max_sse_event_size=max_result_bytes) as streams,
    ):
        yield streams[0], streams[1]


# -- in memory -----------------------------------------------------------------------------------


def memory_transport(build: Callable[[Manifest], Server[Any]]) -> Transport:
    """A transport to an MCP `Server` run as a task in this process, for tests and embedding (no
    manifest can name it). `build(manifest)` makes a fresh server for each session, as a process
    starts afresh. Each message is framed as on stdio, both ways, so the upstream receives what a
    wire would carry and the guard refuses a message over the cap as it would from a process: the
    server is stopped at once and the session ends. It has no stderr. A server task that ends,
    however it ends, is an upstream that exited: its session ends, and the pool restarts it."""

    def connect(manifest: Manifest, wiring: Wiring) -> AbstractAsyncContextManager[Streams]:
        return _in_memory(build(manifest), wiring)

    return connect


@asynccontextmanager
async def _in_memory(server: Server[Any], wiring: Wiring) -> AsyncIterator[Streams]:
    to_session, from_upstream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_upstream, from_session = anyio.create_memory_object_stream[SessionMessage](0)
    to_server, server_in = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    server_out, from_server = anyio.create_memory_object_stream[SessionMessage](0)
    running = anyio.CancelScope()  # cancelled: the server is killed
    exited = anyio.Event()

    async def serve() -> None:
        try:
            with running:
                async with server_in, server_out:
                    await server.run(server_in, server_out, server.create_initialization_options())
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException:  # whatever ended the task, to the session the upstream exited
            return
        finally:
            exited.set()

    async def read_server() -> None:
        async with to_session, from_server:  # closing to_session is how the session learns it ended
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                async for message in from_server:
                    line = dump(message)
                    if len(line) > wiring.max_message_bytes:
                        wiring.on_too_large()
                        running.cancel()
                        return
                    await to_session.send(parse(line))

    async def write_server() -> None:
        async with to_server, from_session:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                async for message in from_session:
                    await to_server.send(parse(dump(message)))
        to_session.close()  # the upstream cannot be written to: end the session, not a hang

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        tg.start_soon(read_server)
        tg.start_soon(write_server)
        try:
            yield from_upstream, to_upstream
        finally:
            with anyio.CancelScope(shield=True):
                from_upstream.close()
                to_upstream.close()  # the server reads the end of its input and returns
                with anyio.move_on_after(EXIT_GRACE):
                    await exited.wait()
            tg.cancel_scope.cancel()


# -- failures, in words ----------------------------------------------------------------------------


def _innermost(exc: BaseException) -> BaseException:
    """The exception itself, or the first inside a group (and inside that)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe_failure(exc: BaseException, url: str | None = None) -> str:
    """An exception in words, naming the URL of an HTTP upstream it could not reach."""
    exc = _innermost(exc)
    text = (str(exc) or type(exc).__name__).splitlines()[0][:300]
    unreachable = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | OSError)
    return f"cannot reach {url}: {text}" if url and unreachable else text
