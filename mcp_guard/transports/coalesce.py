"""One write per response on the HTTP listener. uvicorn writes a response's head and its body to
the socket apart, so with TCP_NODELAY (http.py's `bind`) each short response costs two `send`
calls and two segments, and the client wakes twice. The connection's transport here gathers what
uvicorn writes within one turn of the event loop and sends it at the end of that turn, in one
call: a JSON response (head and body written back to back) leaves as one segment, while a stream
(SSE) still leaves event by event. Imports nothing from mcp_guard."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class GatheringTransport:
    """A socket transport that holds writes until the event loop's current turn ends. Everything
    but writing and closing is the socket transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
            self._held = []
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # a response written just before the close still goes out first
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()


class GatheringHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (whichever it picks) on a GatheringTransport."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(GatheringTransport(transport, asyncio.get_running_loop()))
