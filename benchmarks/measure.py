"""Timing and process helpers: sequential and concurrent tools/call blocks over one session,
percentiles, and resident memory read from /proc (Linux)."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession

TOOL = "echo"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def call_arguments(count: int, start: int = 0) -> list[dict[str, Any]]:
    """The same calls for every path; each passes the guard's limits."""
    return [
        {"order_id": f"ORD-{i:06d}", "amount": round(1 + (i % 997) * 0.37, 2)}
        for i in range(start, start + count)
    ]


class CallFailed(RuntimeError):
    pass


def _check(result: Any) -> None:
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        msg = f"tools/call returned an error: {text[:200]}"
        raise CallFailed(msg)


async def sequential(session: ClientSession, calls: Iterable[dict[str, Any]]) -> tuple[list[float], float]:
    """(latency of each call in ms, wall time in s), one call at a time."""
    latencies: list[float] = []
    clock = time.perf_counter
    gc.collect()
    began = clock()
    for args in calls:
        t0 = clock()
        result = await session.call_tool(TOOL, args)
        latencies.append((clock() - t0) * 1000)
        _check(result)
    return latencies, clock() - began


async def concurrent(session: ClientSession, calls: Iterable[dict[str, Any]], width: int = 8) -> float:
    """Wall time in s for all calls with `width` in flight at once over the one session."""
    pending: Iterator[dict[str, Any]] = iter(calls)

    async def worker() -> None:
        for args in pending:  # shared: each call is taken by exactly one worker
            _check(await session.call_tool(TOOL, args))

    gc.collect()
    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(width):
            tg.start_soon(worker)
    return time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# -- processes (Linux /proc) ----------------------------------------------------------------------


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ")"
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.add(int(entry.name))
    return out


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def rss_kib(pid: int) -> int | None:
    """VmRSS of one process in KiB, None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_tree_kib(pid: int) -> tuple[int | None, int | None]:
    """(VmRSS of the process alone, VmRSS summed over it and all its descendants) in KiB."""
    own = rss_kib(pid)
    if own is None:
        return None, None
    return own, own + sum(rss_kib(p) or 0 for p in descendants(pid))


def cpu_s(pid: int | None) -> float:
    """User + system CPU time of one process (all its threads, not its children) in s; 0 if gone."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def me() -> int:
    return os.getpid()
