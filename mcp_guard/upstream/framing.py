"""The bytes between the guard and an upstream: JSON-RPC messages framed one a line and read no
further than the cap, and an upstream's stderr cut into bounded lines at a bounded rate. Pure
stream handling, shared by every transport (transports.py, pipes.py); knows nothing of processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import mcp_types as types
from anyio.abc import ByteReceiveStream
from anyio.streams.memory import MemoryObjectSendStream
from mcp.shared.message import SessionMessage

MAX_STDERR_LINE = 4096  # bytes of one upstream stderr line shown; the rest of a longer line is cut
STDERR_LINES_PER_SECOND = 100  # more than this in one second are counted, not shown


def dump(message: SessionMessage) -> bytes:
    """One message as the wire carries it (as the SDK's stdio transports write it), without the
    newline; what the message's in-process metadata says does not cross."""
    return message.message.model_dump_json(by_alias=True, exclude_unset=True).encode()


class Messages:
    """Splits what an upstream writes into JSON-RPC messages, one a line, as it arrives, never
    holding more than `max_bytes` of one line (plus the chunk in hand). Once a line passes the cap,
    `too_large` is set and nothing more is parsed."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._pending = bytearray()
        self.too_large = False

    def feed(self, chunk: bytes) -> list[SessionMessage | Exception]:
        """The messages `chunk` completes, in order, up to a line over the cap."""
        out: list[SessionMessage | Exception] = []
        if self.too_large:
            return out
        pending, start = self._pending, 0
        while (end := chunk.find(b"\n", start)) != -1:
            if pending:
                pending += chunk[start:end]
                line = bytes(pending)
                pending.clear()
            else:
                line = chunk[start:end]
            start = end + 1
            if len(line) > self._max_bytes:
                self.too_large = True
                return out
            if line.strip():
                out.append(parse(line))
        pending += chunk[start:]
        if len(pending) > self._max_bytes:
            self.too_large = True
            pending.clear()
        return out


async def read_messages(
    stdout: ByteReceiveStream, send: MemoryObjectSendStream[SessionMessage | Exception], max_bytes: int
) -> bool:
    """Parse each line from `stdout` into a message for `send` until end of input (True), or until a
    line passes `max_bytes` (False): never more than `max_bytes` plus one chunk is held."""
    messages = Messages(max_bytes)
    async for chunk in stdout:
        for message in messages.feed(chunk):
            await send.send(message)
        if messages.too_large:
            return False
    return True


def parse(line: bytes) -> SessionMessage | Exception:
    """A parse error is a value, as in the SDK: the session surfaces it and goes on."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


class StderrLines:
    """An upstream's stderr to `emit`, line by line as it arrives, decoded, at most MAX_STDERR_LINE
    bytes a line (a longer one is cut and says so) and at most STDERR_LINES_PER_SECOND a second (the
    rest are counted): an upstream that floods stderr costs the guard a bounded amount of memory and
    output, and what is not shown is still read, so the upstream never blocks on a full pipe."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._lines = _LineCutter(MAX_STDERR_LINE)
        self._window, self._shown, self._dropped = time.monotonic(), 0, 0

    def feed(self, chunk: bytes) -> None:
        for line in self._lines.feed(chunk):
            now = time.monotonic()
            if now - self._window >= 1.0:
                if self._dropped:
                    self._emit(f"({self._dropped} more stderr lines not shown)")
                self._window, self._shown, self._dropped = now, 0, 0
            if self._shown < STDERR_LINES_PER_SECOND:
                self._shown += 1
                self._emit(line)
            else:
                self._dropped += 1

    def flush(self) -> None:
        """At the end of the stream, or when the guard stops reading it: what is left."""
        for line in self._lines.flush():
            self._emit(line)
        if self._dropped:
            self._emit(f"({self._dropped} more stderr lines not shown)")
            self._dropped = 0


async def relay_lines(stream: ByteReceiveStream, emit: Callable[[str], None]) -> None:
    """Each line of `stream` to `emit`, as StderrLines bounds them, to the stream's end."""
    lines = StderrLines(emit)
    try:
        async for chunk in stream:
            lines.feed(chunk)
    finally:  # at the end of the stream, or cut short when the guard stops
        lines.flush()


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
