"""The HTTP transport's small parts: `[HOST:]PORT`, which agent owns each session, the listening socket."""

from __future__ import annotations

import asyncio
import socket

import anyio
import pytest

from mcp_guard.errors import ListenError
from mcp_guard.transports.coalesce import GatheringTransport
from mcp_guard.transports.http import bind, parse_listen
from mcp_guard.transports.sessions import SESSION_IDLE_TIMEOUT, SessionOwners

# -- [HOST:]PORT ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8765", ("127.0.0.1", 8765)),
        ("127.0.0.1:8765", ("127.0.0.1", 8765)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses_parse_and_a_bare_port_binds_loopback(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "x", "host:", ":80", "::1:80", "1.2.3.4:65536", "1.2.3.4:-1", "[::1]"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(ListenError, match=r"is not \[HOST:\]PORT"):
        parse_listen(text)


# -- session owners ------------------------------------------------------------------------------


def test_a_session_belongs_to_the_agent_that_opened_it_until_it_ends() -> None:
    owners = SessionOwners(clock=lambda: 0.0)
    owners.opened("s1", "support-bot")
    owners.end("s1")
    assert owners.owner("s1") == "support-bot"
    assert owners.owner("s2") is None
    owners.forget("s1")
    assert owners.owner("s1") is None


def test_sessions_idle_past_the_sdks_timeout_stop_counting_but_busy_ones_do_not() -> None:
    now = [0.0]
    owners = SessionOwners(clock=lambda: now[0])
    for sid in ("idle", "busy", "streaming"):
        owners.opened(sid, "support-bot")
    owners.end("idle")
    owners.end("busy")
    owners.begin("busy")  # a request in flight
    assert owners.count("support-bot") == 3
    now[0] = SESSION_IDLE_TIMEOUT + 61.0
    assert owners.count("support-bot") == 2
    assert owners.owner("idle") is None
    assert owners.count("finance-bot") == 0


# -- the listening socket ------------------------------------------------------------------------


async def test_accepted_connections_send_without_waiting_for_acks() -> None:
    """Nagle's algorithm held each response's body until the client acknowledged its headers,
    40 ms on a kept-alive connection: the accepted sockets must have TCP_NODELAY."""
    sock = bind("127.0.0.1", 0)
    nodelay: asyncio.Queue[int] = asyncio.Queue()

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            nodelay.put_nowait(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Accepted, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        with anyio.fail_after(5):
            assert await nodelay.get() != 0
        writer.close()
        await writer.wait_closed()


async def test_what_a_response_writes_in_one_loop_turn_leaves_in_one_send_and_a_close_sends_it_first() -> (
    None
):
    """uvicorn writes a response's head and body apart; the listener's transport holds them to
    the end of the event loop's turn and sends them together (one segment, one wake-up)."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    gathering = GatheringTransport(transport, loop)  # type: ignore[arg-type]
    try:
        head, body = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"{}"
        gathering.write(head)
        gathering.write(body)
        gathering.write(b"")
        with pytest.raises(BlockingIOError):
            peer.recv(1024)  # nothing sent within the turn
        assert gathering.get_write_buffer_size() == len(head + body)
        await asyncio.sleep(0)
        assert peer.recv(1024) == head + body
        gathering.write(b"last words")
        gathering.close()
        await asyncio.sleep(0.01)
        assert peer.recv(1024) == b"last words"
        assert gathering.is_closing()
    finally:
        transport.close()
        peer.close()
