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
LOG_MESSAGES_PER_SECOND = 100  # an upstream's log messages passed on in one second; the rest counted


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


class Bounded:
    """Lets at most `per_second` things through in each second and counts the rest: what an
    upstream can make the guard pass on (stderr lines, log messages) costs a bounded amount of
    output however much it sends."""

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._window, self._passed, self._dropped = time.monotonic(), 0, 0

    def take(self) -> tuple[bool, int]:
        """Whether this one goes through, and how many were held back in the second that has just
        ended (0 if none has, or none were)."""
        now, ended = time.monotonic(), 0
        if now - self._window >= 1.0:
            ended, self._window, self._passed, self._dropped = self._dropped, now, 0, 0
        if self._passed < self._per_second:
            self._passed += 1
            return True, ended
        self._dropped += 1
        return False, ended

    def held_back(self) -> int:
        """How many were held back since the last report, reported now."""
        dropped, self._dropped = self._dropped, 0
        return dropped


class StderrLines:
    """An upstream's stderr to `emit`, line by line as it arrives, decoded, at most MAX_STDERR_LINE
    bytes a line (a longer one is cut and says so) and at most STDERR_LINES_PER_SECOND a second (the
    rest are counted): an upstream that floods stderr costs the guard a bounded amount of memory and
    output, and what is not shown is still read, so the upstream never blocks on a full pipe."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._lines = _LineCutter(MAX_STDERR_LINE)
        self._rate = Bounded(STDERR_LINES_PER_SECOND)

    def feed(self, chunk: bytes) -> None:
        for line in self._lines.feed(chunk):
            shown, dropped = self._rate.take()
            if dropped:
                self._emit(f"({dropped} more stderr lines not shown)")
            if shown:
                self._emit(line)

    def flush(self) -> None:
        """At the end of the stream, or when the guard stops reading it: what is left."""
        for line in self._lines.flush():
            self._emit(line)
        if dropped := self._rate.held_back():
            self._emit(f"({dropped} more stderr lines not shown)")


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
