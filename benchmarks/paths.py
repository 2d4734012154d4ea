"""The paths a benchmark call can take, each as a Target: how to reach it (stdio or HTTP) and what
to start first. Also the throwaway guard deployments (guard.yaml + manifests) the guard paths use.

Adding a path is one Target: `stdio_target(...)` for a command that speaks MCP on stdio, or
`http_target(...)` for a server that must be started and then reached at a URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import anyio
import anyio.abc
from mcp import StdioServerParameters, stdio_client

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
UPSTREAM = HERE / "upstream.py"
BARE_PROXY = HERE / "bare_proxy.py"
FASTMCP_PROXY = HERE / "fastmcp_proxy.py"
FASTMCP_VENV = HERE / ".fastmcp-venv"
AGENT = "bench"
GUARD_SRC: Path | None = None
"""--guard-src: a folder holding another mcp_guard package (e.g. `git archive` of a commit) to run
instead of the one installed in the venv, to compare commits without checking them out."""
# The guard's argument limit on the benchmark tool: every benchmark call passes it.
LIMITS = {"order_id": {"pattern": "^ORD-[0-9]{6}$"}, "amount": {"exclusiveMinimum": 0, "maximum": 500}}
# A budget no benchmark run can exhaust (issue 5), so every call still passes: it costs what a
# budget check costs (reading the window's spend inside the ledger transaction).
BUDGET = {"sum": "amount", "max": 10**12, "per": "1h", "by": ["agent"]}
# --rules: escalation rules on the benchmark tool that every call passes: a prerequisite (one call
# of PREREQUISITE, made before the warm-up) and a `unique` (each benchmark call has its own order).
PREREQUISITE = "tool_0000"
RULES = {
    "requires": [{"tool": PREREQUISITE, "within": "1h"}],
    "unique": {"by": ["arg:order_id"], "per": "1h"},
}

Connect = Callable[[], AbstractAsyncContextManager[Any]]


@dataclass
class Target:
    """One path from the benchmark client to the upstream."""

    key: str
    label: str
    connect: Connect | None = None  # yields (read, write) streams for a ClientSession
    launch: Connect | None = None  # a server to start before connecting (HTTP); None for stdio
    skip: str | None = None  # why this path is not measured, printed in its row
    ledger: Path | None = None  # the guard's ledger file, to check every call was recorded
    ledger_after: int = 0  # the entries before the benchmark's own (a prefilled ledger's)
    prepare: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # calls before warm-up
    notes: list[str] = field(default_factory=list)


def upstream_command(tools: int = 0) -> list[str]:
    cmd = [sys.executable, str(UPSTREAM)]
    return [*cmd, "--tools", str(tools)] if tools else cmd


def stdio_target(
    key: str, label: str, command: list[str], log: TextIO, cwd: Path | None = None, **kw: Any
) -> Target:
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=cwd)
    return Target(key, label, connect=lambda: stdio_client(params, errlog=log), **kw)


def http_target(
    key: str,
    label: str,
    command: list[str],
    url: str,
    log: TextIO,
    headers: dict[str, str] | None = None,
    cwd: Path | None = None,
    **kw: Any,
) -> Target:
    """A server started from `command` that serves Streamable HTTP at `url`."""

    @asynccontextmanager
    async def launch() -> AsyncIterator[None]:
        proc = await anyio.open_process(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            with anyio.fail_after(30):
                await _wait_for_port(url, proc)
            yield
        finally:
            proc.terminate()
            with anyio.move_on_after(10) as waited:
                await proc.wait()
            if waited.cancelled_caught:
                proc.kill()
                await proc.wait()

    @asynccontextmanager
    async def connect() -> AsyncIterator[Any]:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        client = httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30.0, read=None))
        async with client, streamable_http_client(url, http_client=client) as streams:
            yield streams[0], streams[1]

    return Target(key, label, connect=connect, launch=launch, **kw)


async def _wait_for_port(url: str, proc: anyio.abc.Process) -> None:
    parts = urlsplit(url)
    while True:
        if proc.returncode is not None:
            msg = f"{url}: the server exited with {proc.returncode} before serving"
            raise RuntimeError(msg)
        try:
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=0.2):
                return
        except OSError:
            await anyio.sleep(0.05)


# -- the guard's throwaway deployments ------------------------------------------------------------


def write_deployment(
    folder: Path,
    *,
    durability: str = "normal",
    upstreams: int = 1,
    tools: int = 0,
    prefix: str | None = "",
    budget: bool = False,
    http_key: str | None = None,
    rules: bool = False,
) -> Path:
    """guard.yaml + one manifest per upstream in `folder`; returns the guard.yaml path.

    Every manifest grants `echo` (and the upstream's `tool_NNNN` tools, when it serves them) to the
    benchmark agent with LIMITS, and BUDGET too if asked; `rules` adds RULES to `echo` (and serves
    the PREREQUISITE tool). JSON is valid YAML: the files are JSON."""
    manifests = folder / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    grant: dict[str, Any] = {"allow": [AGENT], "arguments": LIMITS}
    if budget:
        grant["budgets"] = [BUDGET]
    if rules:
        tools = max(tools, 1)
    names = ["echo", *(f"tool_{i:04d}" for i in range(tools))]
    for n in range(1, upstreams + 1):
        server = "bench" if upstreams == 1 else f"bench{n}"
        manifest: dict[str, Any] = {
            "server": server,
            "upstream": {"command": sys.executable, "args": upstream_command(tools)[1:], "timeout": "30s"},
            "tools": {name: {**grant, **RULES} if rules and name == "echo" else grant for name in names},
        }
        if prefix is not None and upstreams == 1:
            manifest["prefix"] = prefix
        _write(manifests / f"{server}.yaml", manifest)
    agent: dict[str, Any] = {"roles": ["bench"]}
    if http_key is not None:
        agent["keys"] = ["sha256:" + hashlib.sha256(http_key.encode()).hexdigest()]
    config = {
        "manifests": "manifests",
        "ledger": {"path": "ledger.db", "durability": durability},
        "agents": {AGENT: agent},
    }
    path = folder / "guard.yaml"
    _write(path, config)
    return path


def budgets_supported(folder: Path) -> str | None:
    """None if the guard accepts a manifest with BUDGET, else its one-line refusal."""
    config = write_deployment(folder, budget=True)
    done = subprocess.run(
        guard_command(config, "check"), capture_output=True, text=True, check=False, cwd=folder
    )
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]


def _write(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.chmod(path, 0o644)  # the guard refuses world-writable policy files


def guard_command(config: Path, *extra: str) -> list[str]:
    if GUARD_SRC is None:
        return [sys.executable, "-m", "mcp_guard", "--config", str(config), *extra]
    boot = f"import sys; sys.path.insert(0, {str(GUARD_SRC)!r}); "
    boot += "from mcp_guard.cli.main import main; sys.exit(main())"
    return [sys.executable, "-c", boot, "--config", str(config), *extra]


def guard_target(
    key: str,
    label: str,
    folder: Path,
    durability: str,
    log: TextIO,
    tools: int = 0,
    budget: bool = False,
    rules: bool = False,
    prefill: int = 0,
) -> Target:
    """The guard over stdio; `rules` as in write_deployment, `prefill` entries already in its ledger."""
    config = write_deployment(folder, durability=durability, tools=tools, budget=budget, rules=rules)
    command = guard_command(config, "serve", "--agent", AGENT)
    ledger = folder / "ledger.db"
    after = 0
    if prefill:
        made = _PREFILLED.get(prefill)
        if made is None or not made[0].exists():
            made = _PREFILLED[prefill] = (folder.parent / f"prefilled-{prefill}.db", 0)
            made = _PREFILLED[prefill] = (made[0], prefill_ledger(made[0], prefill))
        shutil.copyfile(made[0], ledger)
        after = made[1]
    prepare = [(PREREQUISITE, {"order_id": "ORD-000000", "amount": 1})] if rules else []
    return stdio_target(
        key, label, command, log, cwd=folder, ledger=ledger, ledger_after=after, prepare=prepare
    )


_PREFILLED: dict[int, tuple[Path, int]] = {}
"""Prefilled ledgers made so far, by size: (file, last id); copied for each target."""


def prefill_ledger(path: Path, entries: int, days: int = 30) -> int:
    """A ledger of `entries` entries: allowed calls of the benchmark tool by the benchmark agent in
    other sessions, each with its outcome, spread evenly over the `days` before now (so about
    1/(24 * days) of them fall in any rolling hour); returns the last entry's id."""
    from datetime import UTC, datetime, timedelta

    from mcp_guard.ledger.entries import decision_fields, format_ts, outcome_fields
    from mcp_guard.ledger.sqlite.engine import Ledger

    ledger = Ledger.open(path)
    end = datetime.now(UTC) - timedelta(seconds=5)
    step = timedelta(days=days) / max(1, entries // 2)
    try:
        for start in range(0, entries // 2, 10_000):
            with ledger._transaction() as conn:  # one transaction per 10,000 calls: fast to build
                for i in range(start, min(entries // 2, start + 10_000)):
                    ts = format_ts(end - step * (entries // 2 - i))
                    arguments = {"order_id": f"PRE-{i:07d}", "amount": 1 + i % 97}
                    call = allowed_call(arguments, f"s{i // 50}")
                    ledger._append(conn, decision_fields(call), ts)
                    ledger._append(conn, outcome_fields(call.call_id, "ok", 1.0, None), ts)
        return ledger.last_id()
    finally:
        ledger.close()


def guard_http_target(key: str, label: str, folder: Path, log: TextIO, budget: bool = False) -> Target:
    """The guard serving Streamable HTTP on a free loopback port; the agent sends a static key."""
    http_key = "bench-" + secrets.token_urlsafe(32)
    config = write_deployment(folder, budget=budget, http_key=http_key)
    port = free_port()
    command = guard_command(config, "serve", "--http", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/mcp"
    headers = {"Authorization": f"Bearer {http_key}"}
    return http_target(key, label, command, url, log, headers, cwd=folder, ledger=folder / "ledger.db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- fastmcp, in a venv of its own ----------------------------------------------------------------


def fastmcp_python() -> Path:
    return FASTMCP_VENV / "bin" / "python"


def ensure_fastmcp(log: Callable[[str], None]) -> tuple[str | None, str | None]:
    """(fastmcp version, None) once fastmcp is importable in FASTMCP_VENV, else (None, why not).

    Creates the venv and installs fastmcp from PyPI on first use."""
    py = fastmcp_python()

    def version() -> str | None:
        if not py.exists():
            return None
        probe = subprocess.run(
            [str(py), "-c", "import fastmcp, sys; sys.stdout.write(fastmcp.__version__)"],
            capture_output=True,
            text=True,
            check=False,
        )
        return probe.stdout.strip() if probe.returncode == 0 else None

    found = version()
    if found:
        return found, None
    log(f"installing fastmcp into {FASTMCP_VENV.relative_to(REPO)} (first run only)")
    steps = [
        [sys.executable, "-m", "venv", str(FASTMCP_VENV)],
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "fastmcp"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return None, f"skipped: installing fastmcp failed ({tail[0][:120]})"
    found = version()
    return (found, None) if found else (None, "skipped: fastmcp does not import after installing it")


def fastmcp_target(log: TextIO, version: str | None, why_not: str | None, tools: int = 0) -> Target:
    label = f"fastmcp {version} create_proxy" if version else "fastmcp create_proxy"
    if why_not:
        return Target("fastmcp", label, skip=why_not)
    command = [str(fastmcp_python()), str(FASTMCP_PROXY), "--", *upstream_command(tools)]
    return stdio_target("fastmcp", label, command, log)


def bare_target(log: TextIO, tools: int = 0) -> Target:
    command = [sys.executable, str(BARE_PROXY), "--", *upstream_command(tools)]
    return stdio_target("bare", "bare SDK proxy", command, log)


def direct_target(log: TextIO, tools: int = 0) -> Target:
    return stdio_target("direct", "direct (no proxy)", upstream_command(tools), log)


def allowed_call(arguments: dict[str, Any], session: str) -> Any:
    """An allowed call of the benchmark's tool, as the guard records its decision (for ledgers
    filled ahead of a measurement)."""
    import uuid

    from mcp_guard.ledger.entries import CallRecord

    return CallRecord(
        uuid.uuid4().hex, AGENT, session, "bench", "echo", arguments, "allow", None, None, "0" * 64
    )
