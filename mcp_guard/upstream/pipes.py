"""A stdio upstream: a process whose pipes are read and written on the event loop itself (asyncio's
subprocess protocol), as the guard's own stdio is (transports/stdio.py). A message crosses no task
and no stream in between: the session's writes go straight into the upstream's stdin, and each
line the upstream writes to stdout is parsed where it arrives and queued for the session. Bounded
both ways: a line past the cap kills the upstream, and its stdout is not read while the session
is behind. Knows nothing of agents or policy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
from mcp.client.stdio import get_default_environment
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

from mcp_guard.streams import Ends, Receiving
from mcp_guard.upstream.framing import Messages, StderrLines, dump

EXIT_GRACE = 2.0  # seconds an upstream has to exit after its stdin closes, and again after SIGTERM
KILL_WAIT = 2.0  # seconds for the event loop to see a killed upstream exit
STDERR_TAIL_WAIT = 0.5  # seconds to relay what an exited upstream left on stderr
BEHIND, CAUGHT_UP = 64, 16  # messages waiting for the session at which stdout is paused and resumed
STDIN, STDOUT, STDERR = 0, 1, 2


class Inbox(Receiving):
    """What the upstream sent, for the session (the SDK's `ReadStream`): a queue filled by the pipe
    protocol and emptied by the session's read loop, with no task in between. Ends (EndOfStream)
    once the upstream's stdout has ended and the queue is empty."""

    def __init__(self, pause: Callable[[bool], None]) -> None:
        self._items: deque[SessionMessage | Exception] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = self._closed = False
        self._pause = pause  # True: stop reading stdout; False: read it again

    def put(self, item: SessionMessage | Exception) -> None:
        if self._closed:
            return  # the session is gone: what the upstream still writes is drained and dropped
        self._items.append(item)
        self._wake()
        if len(self._items) == BEHIND:
            self._pause(True)

    def end(self) -> None:
        self._ended = True
        self._wake()

    @property
    def ended(self) -> bool:
        """The upstream's stdout has ended (or it was killed for a line over the cap)."""
        return self._ended

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        self._wake()
        self._pause(False)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self) -> SessionMessage | Exception:
        while not self._items:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._ended:
                raise anyio.EndOfStream
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if len(self._items) == CAUGHT_UP:
            self._pause(False)
        return item


class Outbox(Ends):
    """The session's messages to the upstream (the SDK's `WriteStream`): each is written to its stdin
    by the task that sends it, waiting only while the pipe is full."""

    def __init__(self, pipes: _Pipes) -> None:
        self._pipes = pipes
        self._closed = False

    async def send(self, message: SessionMessage, /) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        pipes = self._pipes
        stdin = pipes.stdin
        if stdin is None or stdin.is_closing():
            raise anyio.BrokenResourceError
        stdin.write(dump(message) + b"\n")
        if pipes.full is not None:
            await pipes.full.wait()

    def close(self) -> None:
        self._closed = True


class _Pipes(asyncio.SubprocessProtocol):
    """The protocol asyncio calls as the upstream's pipes have data, close, or it exits."""

    def __init__(
        self,
        max_message_bytes: int,
        on_stderr: Callable[[str], None],
        on_too_large: Callable[[], None],
        on_exit: Callable[[int], None],
    ) -> None:
        self.inbox = Inbox(self._pause_stdout)
        self.stdin: asyncio.WriteTransport | None = None
        self.full: asyncio.Event | None = None  # while stdin's buffer is over its high mark; set as it drains
        self.exited = asyncio.Event()
        self.stopping = False  # the guard is stopping it: how it exits is no longer news
        self.stderr_done = asyncio.Event()
        self._transport: asyncio.SubprocessTransport | None = None
        self._messages = Messages(max_message_bytes)
        self._stderr = StderrLines(on_stderr)
        self._on_too_large, self._on_exit = on_too_large, on_exit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport
        stdin = transport.get_pipe_transport(STDIN)
        assert isinstance(stdin, asyncio.WriteTransport)
        self.stdin = stdin

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        if fd == STDERR:
            self._stderr.feed(data)
            return
        if self._messages.too_large:
            return  # it was killed: nothing more of it is read
        for item in self._messages.feed(data):
            self.inbox.put(item)
        if self._messages.too_large:
            self._on_too_large()
            self.stopping = True
            self.kill()
            self.inbox.end()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == STDOUT:
            self.inbox.end()  # how the session learns that the upstream is gone
        elif fd == STDERR:
            self._stderr.flush()
            self.stderr_done.set()
        else:
            self.resume_writing()  # a send waiting for room finds the pipe gone
            if exc is not None:  # its stdin cannot be written to: end the session, not a hang
                self.inbox.end()

    def pause_writing(self) -> None:
        self.full = asyncio.Event()

    def resume_writing(self) -> None:
        if self.full is not None:
            self.full.set()
            self.full = None

    def process_exited(self) -> None:
        assert self._transport is not None
        status = self._transport.get_returncode()
        self.exited.set()
        if status is not None and not self.stopping:
            self._on_exit(status)

    def _pause_stdout(self, pause: bool) -> None:
        pipe = self._transport.get_pipe_transport(STDOUT) if self._transport is not None else None
        if isinstance(pipe, asyncio.ReadTransport) and not pipe.is_closing():
            if pause:
                pipe.pause_reading()
            elif not pipe.is_reading():
                pipe.resume_reading()

    @property
    def pid(self) -> int:
        assert self._transport is not None
        return self._transport.get_pid()

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode() if self._transport is not None else None

    def kill(self) -> None:
        """SIGKILL the upstream's whole process group (it was started in a session of its own)."""
        with suppress(ProcessLookupError, PermissionError):
            if sys.platform == "win32":  # pragma: no cover
                assert self._transport is not None
                self._transport.kill()
            else:
                os.killpg(self.pid, signal.SIGKILL)


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
    on_exit: Callable[[int], None] = lambda _: None,
) -> AsyncIterator[tuple[Inbox, Outbox]]:
    """Run an upstream and speak newline-delimited JSON-RPC over its stdin and stdout, like the
    SDK's `stdio_client`, except that a line is refused once it passes `max_message_bytes` (the
    upstream is killed at once, `on_too_large` is told, and the session sees the connection end)
    and each stderr line goes to `on_stderr`, bounded (framing.py). On exit the upstream gets its
    stdin closed, then SIGTERM, then SIGKILL (its whole process group), each wait bounded; every
    pipe is closed."""
    loop = asyncio.get_running_loop()
    transport, pipes = await loop.subprocess_exec(
        lambda: _Pipes(max_message_bytes, on_stderr, on_too_large, on_exit),
        command,
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**get_default_environment(), **env},
        cwd=cwd,
        start_new_session=True,
    )
    outbox = Outbox(pipes)
    try:
        yield pipes.inbox, outbox
    finally:
        with anyio.CancelScope(shield=True):
            if pipes.inbox.ended:  # it closed its stdout: it has exited, or soon will, on its own
                with anyio.move_on_after(EXIT_GRACE):
                    await pipes.exited.wait()
            pipes.stopping = True
            pipes.inbox.close()
            outbox.close()
            await _stop(transport, pipes)
            with anyio.move_on_after(STDERR_TAIL_WAIT):  # its last words, e.g. a traceback
                await pipes.stderr_done.wait()
            transport.close()  # every pipe; a process still running is killed


async def _stop(transport: asyncio.SubprocessTransport, pipes: _Pipes) -> None:
    """Close stdin and wait for the upstream to exit; past the grace, SIGTERM then SIGKILL."""
    stdin = transport.get_pipe_transport(STDIN)
    if stdin is not None:
        stdin.close()
    with anyio.move_on_after(EXIT_GRACE):
        await pipes.exited.wait()
    if not pipes.exited.is_set():
        await terminate_posix_process_tree(pipes, EXIT_GRACE)  # type: ignore[arg-type]
        with anyio.move_on_after(KILL_WAIT):
            await pipes.exited.wait()
    if not pipes.exited.is_set():  # pragma: no cover (unkillable)
        pipes.kill()
