"""How the guard talks to an upstream process or URL: the one I/O seam under upstream.py. Every
message an upstream sends is read no further than the cap (`limits.max_result_bytes`), and a stdio
upstream's stderr reaches the operator line by line, bounded, through the guard's scrubbed log.
Knows nothing of sessions, agents or policy."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.stdio import get_default_environment
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]

MAX_STDERR_LINE = 4096  # bytes of one upstream stderr line shown; the rest of a longer line is cut
STDERR_LINES_PER_SECOND = 100  # more than this in one second are counted, not shown
EXIT_GRACE = 2.0  # seconds an upstream has to exit after its stdin closes, and again after SIGTERM
KILL_WAIT = 2.0  # seconds for the event loop to see a killed upstream exit
STDERR_TAIL_WAIT = 0.5  # seconds to relay what an exited upstream left on stderr


class ResponseTooLarge(httpx2.StreamError):
    """An HTTP upstream's response over the cap. A StreamError, so that the SDK answers the one
    request it belongs to with an error and the session goes on."""


# -- stdio ---------------------------------------------------------------------------------------


@asynccontextmanager
async def stdio_transport(
    command: str,
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None,
    *,
    max_message_bytes: int,
    on_stderr: Callable[[str], None],
    on_too_large: Callable[[], None],
) -> AsyncIterator[Streams]:
    """Run an upstream and speak newline-delimited JSON-RPC over its stdin and stdout, like the
    SDK's `stdio_client`, except that a line is refused once it passes `max_message_bytes` (the
    upstream is killed at once, `on_too_large` is told, and the session sees the connection end)
    and each stderr line goes to `on_stderr`. On exit the upstream gets its stdin closed, then
    SIGTERM, then SIGKILL (its whole process group), each wait bounded; every pipe is closed."""
    process = await anyio.open_process(
        [command, *args], env={**get_default_environment(), **env}, cwd=cwd, start_new_session=True
    )
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    assert stdin is not None
    assert stdout is not None
    assert stderr is not None
    to_session, from_upstream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_upstream, from_session = anyio.create_memory_object_stream[SessionMessage](0)

    async def read_stdout() -> None:
        async with to_session:  # closing it is how the session learns the connection ended
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                if not await read_messages(stdout, to_session, max_message_bytes):
                    on_too_large()
                    _kill_now(process)
                    return
        # The session is gone: keep the pipe drained so that an upstream still writing can exit.
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async for _ in stdout:
                pass

    async def write_stdin() -> None:
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async with from_session:
                async for message in from_session:
                    line = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send(line.encode() + b"\n")
        to_session.close()  # the upstream cannot be written to: end the session, not a hang

    stderr_done = anyio.Event()

    async def read_stderr() -> None:
        try:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                await relay_lines(stderr, on_stderr)
        finally:
            stderr_done.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_stdout)
            tg.start_soon(write_stdin)
            tg.start_soon(read_stderr)
            try:
                yield from_upstream, to_upstream
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(process, from_upstream, to_upstream)
                    with anyio.move_on_after(STDERR_TAIL_WAIT):  # its last words, e.g. a traceback
                        await stderr_done.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _release(process)


async def read_messages(
    stdout: ByteReceiveStream, send: MemoryObjectSendStream[SessionMessage | Exception], max_bytes: int
) -> bool:
    """Parse each line from `stdout` into a message for `send` until end of input (True), or until a
    line passes `max_bytes` (False): never more than `max_bytes` plus one chunk is held."""
    pending = bytearray()
    async for chunk in stdout:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if pending:
                pending += chunk[start:end]
                line = bytes(pending)
                pending.clear()
            else:
                line = chunk[start:end]
            start = end + 1
            if len(line) > max_bytes:
                return False
            if line.strip():
                await send.send(_parse(line))
        pending += chunk[start:]
        if len(pending) > max_bytes:
            return False
    return True


def _parse(line: bytes) -> SessionMessage | Exception:
    """A parse error is a value, as in the SDK: the session surfaces it and goes on."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


async def relay_lines(stream: ByteReceiveStream, emit: Callable[[str], None]) -> None:
    """Each line of `stream` to `emit`, decoded, at most MAX_STDERR_LINE bytes (a longer one is cut
    and says so) and at most STDERR_LINES_PER_SECOND a second (the rest are counted): an upstream
    that floods stderr costs the guard a bounded amount of memory and output. The stream is read to
    its end whatever is shown, so that the upstream never blocks on a full pipe."""
    lines = _LineCutter(MAX_STDERR_LINE)
    window, shown, dropped = time.monotonic(), 0, 0
    try:
        async for chunk in stream:
            for line in lines.feed(chunk):
                now = time.monotonic()
                if now - window >= 1.0:
                    if dropped:
                        emit(f"({dropped} more stderr lines not shown)")
                    window, shown, dropped = now, 0, 0
                if shown < STDERR_LINES_PER_SECOND:
                    shown += 1
                    emit(line)
                else:
                    dropped += 1
    finally:  # at the end of the stream, or cut short when the guard stops
        for line in lines.flush():
            emit(line)
        if dropped:
            emit(f"({dropped} more stderr lines not shown)")


class _LineCutter:
    """Splits bytes into decoded lines of at most `limit` bytes; the rest of a longer line is
    dropped as it arrives, and the line ends with ` [cut]`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._part = bytearray()
        self._cut = False

    def feed(self, chunk: bytes) -> list[str]:
        *complete, rest = chunk.split(b"\n")
        out = [self._line(piece) for piece in complete]
        self._take(rest)
        return out

    def flush(self) -> list[str]:
        return [self._line(b"")] if self._part or self._cut else []

    def _take(self, piece: bytes) -> None:
        room = self._limit - len(self._part)
        if len(piece) > room:
            self._part += piece[: max(room, 0)]
            self._cut = True
        else:
            self._part += piece

    def _line(self, piece: bytes) -> str:
        self._take(piece)
        text = self._part.decode("utf-8", "replace").removesuffix("\r")
        if self._cut:
            text += " [cut]"
        self._part.clear()
        self._cut = False
        return text


def _kill_now(process: Process) -> None:
    """SIGKILL the upstream's whole process group (it was started in a session of its own)."""
    with suppress(ProcessLookupError, PermissionError):
        if sys.platform == "win32":  # pragma: no cover
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)


async def _stop(process: Process, *streams: Any) -> None:
    """Close stdin and wait for the upstream to exit; past the grace, SIGTERM then SIGKILL."""
    for stream in streams:
        stream.close()
    assert process.stdin is not None
    with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        await process.stdin.aclose()
    with anyio.move_on_after(EXIT_GRACE):
        await process.wait()
    if process.returncode is None:
        if sys.platform == "win32":  # pragma: no cover
            process.kill()
        else:
            await terminate_posix_process_tree(process, EXIT_GRACE)
        with anyio.move_on_after(KILL_WAIT):
            await process.wait()


async def _release(process: Process) -> None:
    """Close every pipe (a descendant may hold the other ends open) and reap the upstream."""
    if process.returncode is None:
        _kill_now(process)
        with anyio.move_on_after(KILL_WAIT):
            await process.wait()
    if process.returncode is not None:
        await process.aclose()
        return
    for pipe in (process.stdin, process.stdout, process.stderr):  # pragma: no cover (unkillable)
        if pipe is not None:
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await pipe.aclose()


# -- Streamable HTTP ------------------------------------------------------------------------------


def capped_http_client(
    headers: Mapping[str, str],
    timeout: float,
    max_bytes: int,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client for one upstream whose response bodies are read no further than `max_bytes`
    (ResponseTooLarge past it). Server-sent events are bounded per event by the SDK instead (give
    it the same cap): an event stream lasts as long as the session. Bodies are asked for
    uncompressed, and a compressed one is refused, so the cap also bounds what is decoded."""

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
        event_hooks={"response": [cap_body]},
        transport=transport,  # None: the client's own (with the environment's proxies)
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
