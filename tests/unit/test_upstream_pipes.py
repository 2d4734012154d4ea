"""A stdio upstream's pipes on the event loop (upstream/pipes.py), driven with real processes: what
the upstream writes is queued no further than a bound while the session is behind (the upstream
waits on a full pipe instead), what the session writes waits while the upstream does not read, a
line over the cap kills the upstream's whole process group, and an exit is reported only when the
upstream exited on its own."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage

from mcp_guard.upstream import pipes
from mcp_guard.upstream.pipes import BEHIND, stdio_transport

CAP = 64 * 1024


def script(code: str) -> tuple[str, list[str]]:
    return sys.executable, ["-c", textwrap.dedent(code)]


class Seen:
    def __init__(self) -> None:
        self.stderr: list[str] = []
        self.exits: list[int] = []
        self.too_large = 0

    def wiring(self, cap: int = CAP) -> dict[str, Any]:
        return {
            "max_message_bytes": cap,
            "on_stderr": self.stderr.append,
            "on_too_large": self.count_too_large,
            "on_exit": self.exits.append,
        }

    def count_too_large(self) -> None:
        self.too_large += 1


def message(msg_id: int, text: str = "") -> SessionMessage:
    request = types.JSONRPCRequest(jsonrpc="2.0", id=msg_id, method="ping", params={"text": text})
    return SessionMessage(request)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead; only a live process has a state other than Z
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - processes and their output, not one event
            await anyio.sleep(0.02)


async def test_a_session_that_is_behind_pauses_the_upstream_instead_of_queueing_what_it_writes() -> None:
    # 400 lines of 2 KiB: far more than a pipe holds, so the upstream can finish only if read.
    command, args = script(
        """
        import json, sys
        for i in range(400):
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": i, "result": {"pad": "x" * 2000}}) + "\\n")
            sys.stdout.flush()
        sys.stderr.write("all written\\n")
        sys.stderr.flush()
        sys.stdin.read()
        """
    )
    seen = Seen()
    async with stdio_transport(command, args, {}, None, **seen.wiring()) as (inbox, _):
        await anyio.sleep(1.0)  # the session reads nothing meanwhile
        queued = len(inbox._items)
        assert BEHIND <= queued < BEHIND + 64  # at most one more pipe read than the bound
        assert "all written" not in seen.stderr  # the upstream waits on its full pipe
        ids = []
        with anyio.fail_after(10):
            for _ in range(400):
                item = await inbox.receive()
                assert isinstance(item, SessionMessage)
                ids.append(item.message.id)  # type: ignore[union-attr]
        assert ids == list(range(400))
        await wait_for(lambda: "all written" in seen.stderr)


async def test_a_send_waits_while_the_upstream_does_not_read_and_every_message_arrives_whole() -> None:
    command, args = script(
        """
        import json, sys, time
        time.sleep(1.0)  # reads nothing at first
        count = sum(1 for line in sys.stdin if json.loads(line)["params"]["text"])
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": 0, "result": {"count": count}}) + "\\n")
        """
    )
    seen = Seen()
    big = "y" * 100_000
    async with stdio_transport(command, args, {}, None, **seen.wiring()) as (inbox, outbox):
        began = time.monotonic()
        for i in range(30):  # 3 MB: the pipe holds 64 KiB, the transport's buffer its high mark
            await outbox.send(message(i, big))
            assert outbox._pipes.stdin is not None
            assert outbox._pipes.stdin.get_write_buffer_size() <= 100_100 + 64 * 1024
        assert time.monotonic() - began > 0.8  # it waited for the upstream to read
        assert outbox._pipes.stdin is not None
        outbox._pipes.stdin.close()  # end of its input: it counts and answers
        with anyio.fail_after(10):
            answer = await inbox.receive()
    assert isinstance(answer, SessionMessage)
    assert answer.message.result == {"count": 30}  # type: ignore[union-attr]


async def test_a_line_over_the_cap_kills_the_upstream_and_its_children_and_ends_the_session() -> None:
    command, args = script(
        f"""
        import json, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        sys.stderr.write(f"child {{child.pid}}\\n")
        sys.stderr.flush()
        sys.stdout.write(json.dumps({{"jsonrpc": "2.0", "id": 1, "result": {{}}}}) + "\\n")
        sys.stdout.write("x" * {CAP + 10})
        sys.stdout.flush()
        time.sleep(60)
        """
    )
    seen = Seen()
    async with stdio_transport(command, args, {}, None, **seen.wiring()) as (inbox, _):
        received = []
        with anyio.fail_after(10):
            async for item in inbox:  # ends: the session sees the connection end
                received.append(item)
        assert [m.message.id for m in received] == [1]  # type: ignore[union-attr]
        assert seen.too_large == 1
        child = int(next(line for line in seen.stderr if line.startswith("child ")).split()[1])
        await wait_for(lambda: not alive(child))
    assert seen.exits == []  # killed by the guard: not an exit of its own to report


async def test_an_upstream_that_exits_on_its_own_is_reported_with_its_status_and_last_words() -> None:
    command, args = script(
        """
        import sys
        sys.stderr.write("Traceback (most recent call last):\\nValueError: bad config\\n")
        sys.exit(3)
        """
    )
    seen = Seen()
    async with stdio_transport(command, args, {}, None, **seen.wiring()) as (inbox, _):
        with anyio.fail_after(10):
            assert [item async for item in inbox] == []
    assert seen.exits == [3]
    assert seen.stderr == ["Traceback (most recent call last):", "ValueError: bad config"]


async def test_an_upstream_that_ignores_the_end_of_its_input_and_sigterm_is_killed_in_bounded_time(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(pipes, "EXIT_GRACE", 0.3)
    command, args = script(
        """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        sys.stderr.write(f"pids {child.pid}\\n")
        sys.stderr.flush()
        time.sleep(60)
        """
    )
    seen = Seen()
    began = time.monotonic()
    async with stdio_transport(command, args, {}, None, **seen.wiring()) as (_, outbox):
        await wait_for(lambda: any(line.startswith("pids ") for line in seen.stderr))
        child = int(next(line for line in seen.stderr if line.startswith("pids ")).split()[1])
        leader = outbox._pipes.pid
    assert time.monotonic() - began < 5.0
    await wait_for(lambda: not alive(child) and not alive(leader))
    assert seen.exits == []


async def test_a_malformed_line_is_an_error_value_and_the_messages_around_it_arrive() -> None:
    good = json.dumps({"jsonrpc": "2.0", "id": 5, "result": {}})
    command, args = script(f"print('not json'); print({good!r}, flush=True); import sys; sys.stdin.read()")
    seen = Seen()
    async with stdio_transport(command, args, {}, None, **seen.wiring()) as (inbox, _):
        with anyio.fail_after(10):
            first, second = await inbox.receive(), await inbox.receive()
    assert isinstance(first, ValueError)
    assert isinstance(second, SessionMessage)
    assert second.message.id == 5  # type: ignore[union-attr]


async def test_a_send_waiting_for_room_ends_when_the_upstream_exits_without_reading() -> None:
    command, args = script("import time; time.sleep(0.5)")  # never reads its stdin, then exits
    seen = Seen()
    big = "z" * 100_000
    async with stdio_transport(command, args, {}, None, **seen.wiring()) as (inbox, outbox):
        with anyio.fail_after(5):  # not a hang: the waiting send returns once the pipe is gone
            for i in range(100):
                try:
                    await outbox.send(message(i, big))
                except anyio.BrokenResourceError:
                    break
            else:
                raise AssertionError("10 MB went into a pipe nobody reads")
            assert [item async for item in inbox] == []  # and the session sees the upstream gone
    assert seen.exits == [0]
