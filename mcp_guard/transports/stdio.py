"""Serving over stdio: our own framing, so that every line is parsed strictly (wire.py) before
the SDK sees it, and a bad line gets -32700 instead of a guess."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, BinaryIO

import anyio
import mcp_types as types
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp.shared.message import SessionMessage

from mcp_guard.guard.app import build_server
from mcp_guard.guard.caller import Caller
from mcp_guard.streams import Ends, Receiving
from mcp_guard.wire import StrictJSONError, parse_strict

CHUNK = 65536
DRAIN_SECONDS = 30.0
"""At end of input, how long the requests already read may take to be answered before the guard
exits (an approval wait or a slow upstream); a client that wants no answers closes both pipes."""


def _claim_stdio() -> tuple[BinaryIO, BinaryIO]:
    """Take fds 0 and 1 for the protocol; afterwards fd 0 reads nothing and fd 1 goes to
    stderr, so nothing a library prints can corrupt the wire."""
    wire_in = os.fdopen(os.dup(0), "rb", buffering=0)
    wire_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return wire_in, wire_out


Read = Callable[[], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


@asynccontextmanager
async def _wire(wire_in: BinaryIO, wire_out: BinaryIO) -> AsyncIterator[tuple[Read, Write]]:
    """Read and write the protocol's descriptors on the event loop itself where the OS allows it
    (pipes, sockets, terminals: what MCP clients give a server), saving two thread hops per
    message; a regular file, or a loop that is not asyncio, goes through a worker thread."""
    read: Read = partial(anyio.to_thread.run_sync, wire_in.read, CHUNK)
    lock = anyio.Lock()

    async def write(data: bytes) -> None:  # one line at a time, whichever task writes it
        async with lock:
            await anyio.to_thread.run_sync(wire_out.write, data)

    transports: list[asyncio.BaseTransport] = []
    # The event loop makes the descriptors non-blocking; their open file descriptions may be
    # shared (a terminal with the shell that started the guard), so the mode is put back at the
    # end, through spare descriptors: the loop closes its own at end of input.
    spares = {os.dup(f.fileno()): os.get_blocking(f.fileno()) for f in (wire_in, wire_out)}
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    try:
        if loop is not None:
            stream = asyncio.StreamReader(limit=CHUNK, loop=loop)
            try:
                reading, _ = await loop.connect_read_pipe(
                    lambda: asyncio.StreamReaderProtocol(stream), wire_in
                )
                transports.append(reading)
                read = partial(stream.read, CHUNK)
            except ValueError:
                pass
            try:
                writing, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, wire_out)
                transports.append(writing)
                writer = asyncio.StreamWriter(writing, protocol, None, loop)

                async def write_on_loop(data: bytes) -> None:  # a whole line, at once
                    writer.write(data)
                    await writer.drain()

                write = write_on_loop
            except ValueError:
                pass
        yield read, write
    finally:
        for transport in transports:
            transport.close()  # the descriptors close on the loop's next turn
        for fd, was in spares.items():
            with suppress(OSError):
                os.set_blocking(fd, was)
            os.close(fd)


class _Open:
    """Ids of the requests read but not answered yet, so that end of input can wait for them."""

    def __init__(self) -> None:
        self._ids: set[str | int] = set()
        self._none = anyio.Event()
        self._none.set()

    def read(self, msg_id: str | int) -> None:
        if not self._ids:
            self._none = anyio.Event()
        self._ids.add(msg_id)

    def answered(self, msg_id: str | int) -> None:
        self._ids.discard(msg_id)
        if not self._ids:
            self._none.set()

    async def drained(self) -> None:
        await self._none.wait()


async def serve_stdio(caller: Caller) -> None:
    guard = caller.guard
    server = build_server(caller)
    max_bytes = guard.policy.config.limits.max_message_bytes
    wire_in, wire_out = _claim_stdio()
    open_requests = _Open()

    async def write(data: bytes) -> None:
        try:
            await write_wire(data)
        except OSError as exc:  # the client closed its end: nobody is left to answer
            guard.log(f"stopping: the client no longer reads the guard's output ({exc})")
            stop.cancel()

    async with _wire(wire_in, wire_out) as (read_wire, write_wire):
        with anyio.CancelScope() as stop:
            incoming = _Incoming(read_wire, max_bytes, write, open_requests)
            replies = _Replies(write, open_requests)
            await server.run(incoming, replies, server.create_initialization_options())


class _Incoming(Receiving):
    """The client's messages for the server (the SDK's `ReadStream`), read, split into lines and
    parsed strictly by the server's own read loop as it asks for the next one: no reader task and no
    queue in between. A line that is not a valid JSON-RPC message is answered with its error here and
    never reaches the server; a line over `max_bytes` is refused once and skipped, never held. At end
    of input the requests already read are answered first (a script piped in ends right after its
    last request), for up to DRAIN_SECONDS, and then the stream ends."""

    def __init__(self, read: Read, max_bytes: int, write: Write, open_requests: _Open) -> None:
        self._read, self._max_bytes, self._write, self._open = read, max_bytes, write, open_requests
        self._ready: deque[SessionMessage] = deque()
        self._buffer = bytearray()
        self._skipping = False  # inside a line over the cap, until its newline
        self._ended = False

    async def receive(self) -> SessionMessage:
        while not self._ready:
            if self._ended:
                with anyio.move_on_after(DRAIN_SECONDS):
                    await self._open.drained()
                raise anyio.EndOfStream
            chunk = await self._read()
            if chunk:
                await self._feed(chunk)
            else:
                self._ended = True
                if self._buffer.strip() and not self._skipping:
                    await self._take(bytes(self._buffer))
        return self._ready.popleft()

    async def _feed(self, chunk: bytes) -> None:
        buffer, start = self._buffer, 0
        while (end := chunk.find(b"\n", start)) != -1:
            if self._skipping:
                self._skipping = False
            else:
                buffer += chunk[start:end]
                await self._take(bytes(buffer))
            buffer.clear()
            start = end + 1
        if not self._skipping:
            buffer += chunk[start:]
            if len(buffer) > self._max_bytes:
                buffer.clear()
                self._skipping = True
                await self._refuse(f"message is larger than {self._max_bytes} bytes")

    async def _take(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            value = parse_strict(line, self._max_bytes)
        except StrictJSONError as exc:
            await self._refuse(str(exc))
            return
        msg_id = value.get("id") if isinstance(value, dict) else None
        valid_id = msg_id if isinstance(msg_id, str) or type(msg_id) is int else None
        if isinstance(value, dict) and "id" in value and valid_id is None:
            # An id of null, true or 1.5 would make a request look like a notification.
            await self._answer(types.INVALID_REQUEST, "Invalid request: id must be a string or an integer")
            return
        try:
            message = types.jsonrpc_message_adapter.validate_python(value, by_name=False)
        except Exception:
            await self._answer(types.INVALID_REQUEST, "Invalid request", valid_id)
            return
        if isinstance(message, types.JSONRPCRequest):
            self._open.read(message.id)
        elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            # A cancelled request is never answered: end of input must not wait for it.
            cancelled = cancelled_request_id_from_params(message.params)
            if cancelled is not None:
                self._open.answered(cancelled)
        self._ready.append(SessionMessage(message))

    async def _refuse(self, reason: str) -> None:
        await self._answer(types.PARSE_ERROR, f"Parse error: {reason}")

    async def _answer(self, code: int, message: str, msg_id: Any = None) -> None:
        error = types.JSONRPCError(
            jsonrpc="2.0", id=msg_id, error=types.ErrorData(code=code, message=message)
        )
        await self._write(error.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")


class _Replies(Ends):
    """The server's messages to the client (the SDK's `WriteStream`), each written whole by the task
    that sends it: no writer task, no queue in between."""

    def __init__(self, write: Write, open_requests: _Open) -> None:
        self._write, self._open = write, open_requests

    async def send(self, item: SessionMessage, /) -> None:
        message = item.message
        await self._write(message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
            self._open.answered(message.id)
