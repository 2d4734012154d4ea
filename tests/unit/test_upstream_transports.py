"""The upstream I/O seam on its own: a stdio upstream's lines are read no further than the cap, its
stderr is cut into bounded lines at a bounded rate, an HTTP upstream's body stops at the cap, and
an in-memory upstream is capped and ends its session as a process would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession, MCPError
from mcp.shared.message import SessionMessage

from mcp_guard.upstream.framing import MAX_STDERR_LINE, STDERR_LINES_PER_SECOND, read_messages, relay_lines
from mcp_guard.upstream.transports import ResponseTooLarge, Wiring, capped_http_client, memory_transport
from tests.helpers import Deployment, in_memory

CHUNK = 65536
CAP = 64 * 1024


class Endless:
    """A byte stream that never ends a line: what a hostile upstream can write. Counts what it gave."""

    def __init__(self, head: bytes = b"") -> None:
        self.given = 0
        self._head = head

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._head:
            self.given += len(self._head)
            yield self._head
        while True:
            self.given += CHUNK
            yield b"x" * CHUNK


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def message_line(msg_id: int, text: str) -> bytes:
    result = {"content": [{"type": "text", "text": text}]}
    return types.JSONRPCResponse(jsonrpc="2.0", id=msg_id, result=result).model_dump_json().encode()


async def messages_of(stream: Any, cap: int = CAP) -> tuple[bool, list[SessionMessage | Exception]]:
    send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](100)
    with anyio.fail_after(10):
        finished = await read_messages(stream, send, cap)
    send.close()
    async with receive:
        return finished, [m async for m in receive]


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"',
        message_line(1, "ok") + b"\n",
    ],
    ids=["endless bytes", "an endless result", "an endless line after a good one"],
)
async def test_a_line_that_never_ends_is_refused_once_past_the_cap_and_no_further_is_read(
    head: bytes,
) -> None:
    endless = Endless(head)
    finished, received = await messages_of(endless)
    assert finished is False
    assert endless.given <= len(head) + CAP + CHUNK
    assert len(received) == (1 if head.endswith(b"\n") else 0)


@pytest.mark.parametrize(
    ("size", "relayed"),
    [(CAP, True), (CAP + 1, False), (4 * CAP, False)],
    ids=["exactly the cap", "one byte over", "four times over"],
)
async def test_a_message_is_relayed_up_to_the_cap_and_refused_past_it(size: int, relayed: bool) -> None:
    empty = len(message_line(7, ""))
    line = message_line(7, "y" * (size - empty))
    assert len(line) == size
    # Split across chunks, as a pipe delivers it, with a small message on either side.
    stream = chunks(
        message_line(1, "before") + b"\n" + line[:1000],
        line[1000:] + b"\n" + message_line(2, "after") + b"\n",
    )
    finished, received = await messages_of(stream)
    ids = [m.message.id for m in received if isinstance(m, SessionMessage)]  # type: ignore[union-attr]
    assert (finished, ids) == ((True, [1, 7, 2]) if relayed else (False, [1]))


async def test_blank_lines_are_skipped_and_a_malformed_line_is_an_error_value_not_the_end() -> None:
    stream = chunks(b"\n\r\n" + b"not json\n" + message_line(3, "fine") + b"\r\n")
    finished, received = await messages_of(stream)
    assert finished is True
    assert isinstance(received[0], ValueError)
    assert isinstance(received[1], SessionMessage)
    assert received[1].message.id == 3  # type: ignore[union-attr]


async def relayed(*parts: bytes) -> list[str]:
    lines: list[str] = []
    with anyio.fail_after(10):
        await relay_lines(chunks(*parts), lines.append)  # type: ignore[arg-type]
    return lines


async def test_stderr_lines_are_decoded_split_and_a_long_one_is_cut_where_it_passes_the_limit() -> None:
    long = b"L" * (3 * MAX_STDERR_LINE)
    lines = await relayed(
        b"first\r\nsec", b"ond\n" + long[:100], long[100:] + b"\nbad \xff byte\nno newline at the end"
    )
    assert lines[:2] == ["first", "second"]
    assert lines[2] == "L" * MAX_STDERR_LINE + " [cut]"
    assert lines[3:] == ["bad \ufffd byte", "no newline at the end"]


async def test_a_stderr_flood_shows_a_bounded_number_of_lines_and_counts_the_rest() -> None:
    flood = b"".join(b"line %d\n" % i for i in range(10 * STDERR_LINES_PER_SECOND))
    lines = await relayed(flood[: len(flood) // 2], flood[len(flood) // 2 :])
    assert lines[:STDERR_LINES_PER_SECOND] == [f"line {i}" for i in range(STDERR_LINES_PER_SECOND)]
    assert lines[STDERR_LINES_PER_SECOND:] == [f"({9 * STDERR_LINES_PER_SECOND} more stderr lines not shown)"]


async def test_a_stderr_line_of_megabytes_is_relayed_as_one_cut_line_and_the_next_line_follows() -> None:
    parts = [b"M" * CHUNK for _ in range(160)]  # 10 MiB without a newline
    lines = await relayed(*parts, b"\nnext\n")
    assert lines == ["M" * MAX_STDERR_LINE + " [cut]", "next"]


# -- HTTP ----------------------------------------------------------------------------------------


def endless_body(request: httpx2.Request, counter: list[int], **headers: str) -> httpx2.Response:
    async def body() -> AsyncIterator[bytes]:
        while True:
            counter[0] += CHUNK
            yield b" " * CHUNK

    return httpx2.Response(200, headers={"content-type": "application/json", **headers}, content=body())


@pytest.mark.parametrize("encoding", [None, "gzip"], ids=["plain", "compressed"])
async def test_an_http_body_is_read_no_further_than_the_cap(encoding: str | None) -> None:
    counter = [0]
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        extra = {"content-encoding": encoding} if encoding else {}
        return endless_body(request, counter, **extra)

    async with capped_http_client({}, 10.0, CAP, transport=httpx2.MockTransport(handler)) as client:
        with anyio.fail_after(10), pytest.raises(ResponseTooLarge):
            async with client.stream("POST", "http://upstream.test/mcp", json={}) as response:
                await response.aread()
    assert counter[0] <= CAP + CHUNK
    assert seen[0].headers["accept-encoding"] == "identity"


async def test_an_http_body_within_the_cap_and_an_event_stream_are_read_whole() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        kind = "text/event-stream" if request.url.path == "/sse" else "application/json"
        return httpx2.Response(200, headers={"content-type": kind}, content=b"x" * CAP)

    async with capped_http_client(
        {"X-Key": "k"}, 10.0, CAP, transport=httpx2.MockTransport(handler)
    ) as client:
        for path in ("/mcp", "/sse"):
            with anyio.fail_after(10):
                async with client.stream("GET", f"http://upstream.test{path}") as response:
                    assert len(await response.aread()) == CAP


# -- in memory -------------------------------------------------------------------------------------


@asynccontextmanager
async def memory_session(tmp_path: Path, wiring: Wiring) -> AsyncIterator[tuple[ClientSession, Deployment]]:
    """The hostile upstream behind the in-memory transport, with a client session on it."""
    deployment = Deployment(tmp_path).with_hostile()
    _, (manifest,) = deployment.load()
    async with (
        memory_transport(in_memory)(manifest, wiring) as (read, write),
        ClientSession(read, write, read_timeout_seconds=10.0) as session,
    ):
        with anyio.fail_after(10):
            await session.initialize()
        yield session, deployment


async def test_an_in_memory_upstream_over_the_cap_is_stopped_and_its_session_ends(tmp_path: Path) -> None:
    too_large: list[bool] = []
    stderr: list[str] = []
    wiring = Wiring(CAP, stderr.append, lambda: too_large.append(True))
    async with memory_session(tmp_path, wiring) as (session, deployment):
        with anyio.fail_after(10):
            under = await session.call_tool("sized", {"kib": 32})
            assert too_large == []
            with pytest.raises(MCPError) as refused:
                await session.call_tool("sized", {"kib": 65})
            with pytest.raises(MCPError):  # the session is over, as with a process that was killed
                await session.call_tool("echo", {"text": "after"})
    assert len("".join(getattr(b, "text", "") for b in under.content)) == 32 * 1024
    assert refused.value.error.code == types.CONNECTION_CLOSED
    assert too_large == [True]
    assert stderr == []  # an in-memory upstream has no stderr
    assert [e["tool"] for e in deployment.journal("hostile")] == ["sized", "sized"]


async def test_an_in_memory_server_whose_task_dies_ends_its_session_like_an_exited_process(
    tmp_path: Path,
) -> None:
    too_large: list[bool] = []
    wiring = Wiring(CAP, lambda line: None, lambda: too_large.append(True))
    async with memory_session(tmp_path, wiring) as (session, deployment):
        with anyio.fail_after(10):
            with pytest.raises(MCPError) as failed:  # a handler's exception is only an error reply
                await session.call_tool("fail", {})
            with pytest.raises(MCPError) as crashed:
                await session.call_tool("crash", {})
    assert failed.value.error.code != types.CONNECTION_CLOSED
    assert crashed.value.error.code == types.CONNECTION_CLOSED
    assert too_large == []
    assert [e["tool"] for e in deployment.journal("hostile")] == ["fail", "crash"]
