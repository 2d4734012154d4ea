"""Shared helpers for the integration and end-to-end tiers: a real deployment written into a
temporary folder, the guard run in-process (its upstreams in memory, or as processes where the
process is the point) or as the real `mcp-guard` command, a raw JSON-RPC line client, and readers
for the ledger file (plain sqlite3) and the upstream journals."""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import io
import json
import os
import queue
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import mcp_types as types
import yaml
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.server import Server
from mcp.shared.message import SessionMessage

from mcp_guard.examples import billing, tickets
from mcp_guard.examples.journal import JOURNAL_ENV, read_journal
from mcp_guard.guard.app import build_server, open_guard
from mcp_guard.guard.caller import Caller
from mcp_guard.manifest import Manifest, load_deployment
from mcp_guard.upstream.transports import Transport, memory_transport
from tests.conformance import upstream as conformance_upstream
from tests.upstreams import decimal_refunds, files, hostile

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0
"""Upper bound for any one step (start a guard, make a call); tests fail, never hang."""

BILLING_KEY = "sk_test_guardtests9d1f0c2b7a41"
TICKETS_TOKEN = "tkt-guardtests-51b0aa77"
HOSTILE_SECRET = 'hs/sec+ret="guard-42"'
SECRETS = (BILLING_KEY, TICKETS_TOKEN, HOSTILE_SECRET)

DEFAULT_AGENTS: dict[str, list[str]] = {
    "support-bot": ["support"],
    "finance-bot": ["finance"],
    "qa-bot": ["qa"],
    "idle-bot": [],
}

BILLING_TOOLS: dict[str, Any] = {
    "lookup_order": {"allow": ["role:support", "role:finance"]},
    "refund": [
        {
            "allow": ["role:support"],
            "arguments": {
                "amount": {"exclusiveMinimum": 0, "maximum": 100},
                "currency": {"enum": ["USD", "EUR"]},
                "note": False,
            },
        },
        {"allow": ["finance-bot"], "arguments": {"amount": {"exclusiveMinimum": 0, "maximum": 5000}}},
    ],
    "set_payout_destination": {"allow": []},
    "diagnostics": {"allow": ["finance-bot"]},
}
TICKETS_TOOLS: dict[str, Any] = {
    "search_tickets": {"allow": ["role:support"]},
    "get_ticket": {"allow": ["role:support"]},
    "add_comment": {"allow": ["role:support"], "arguments": {"body": {"maxLength": 1000}}},
    "close_ticket": {
        "allow": ["role:support"],
        "arguments": {"resolution": {"enum": ["fixed", "duplicate"]}},
    },
}
HOSTILE_TOOL_NAMES = (
    "echo",
    "crash",
    "hang",
    "fail",
    "huge",
    "leak",
    "ask_sampling",
    "progress",
    "stderr",
    "log",
    "sized",
    "slow",
)
ALL_UPSTREAM_TOOLS = {
    "billing": ("lookup_order", "refund", "set_payout_destination", "diagnostics"),
    "tickets": ("search_tickets", "get_ticket", "add_comment", "close_ticket"),
    "hostile": HOSTILE_TOOL_NAMES,
}


def secret_forms(secret: str) -> list[str]:
    """A secret as a careless server might send it back: raw and base64."""
    encoded = base64.b64encode(secret.encode()).decode()
    return [secret, encoded, encoded.rstrip("=")]


def base64_windows(secret: str, width: int = 8) -> set[str]:
    """Every run of `width` base64 characters, standard or URL-safe, that spells part of the secret
    alone at some alignment: the runs shared by its encodings after two different prefixes of each
    length 0, 1 and 2 and before two different tails. Found by encoding, not by the guard's formula."""

    def runs(text: str) -> set[str]:
        return {text[i : i + width] for i in range(len(text) - width + 1)}

    raw, found = secret.encode(), set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            one = encode(b"a" * offset + raw + b"tail").decode()
            other = encode(b"\xff" * offset + raw + b"\x00\x01").decode()
            found |= runs(one) & runs(other)
    return found


def assert_no_secret(text: str, secret: str) -> None:
    """Neither the secret nor any part of its base64, at any alignment, is in text."""
    assert secret not in text, text
    assert json.dumps(secret)[1:-1] not in text, text
    leaked = [window for window in base64_windows(secret) if window in text]
    assert not leaked, (leaked, text)


@dataclass
class Deployment:
    """A guard.yaml and tool_manifests/ written into `root`, with the ledger and one call journal
    per upstream inside it. Build it, then `write()` it (the guard helpers write it for you)."""

    root: Path
    agents: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_AGENTS))
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "guard.yaml"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "tool_manifests"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.db"

    @property
    def stderr_path(self) -> Path:
        return self.root / "guard-stderr.log"

    def journal_path(self, server: str) -> Path:
        return self.root / f"journal-{server}.jsonl"

    # -- building ----------------------------------------------------------------------------

    def add(self, server: str, manifest: Mapping[str, Any]) -> Deployment:
        self.manifests[server] = copy.deepcopy(dict(manifest))  # cases may edit it freely
        return self

    def stdio_upstream(
        self, server: str, module: str, env: Mapping[str, str] = (), **extra: Any
    ) -> dict[str, Any]:
        """An upstream block running a bundled module with `python -m`, journaling its calls."""
        return {
            "command": "python",
            "args": ["-m", module],
            "env": {**dict(env), JOURNAL_ENV: str(self.journal_path(server))},
            **extra,
        }

    def with_billing(self, tools: Mapping[str, Any] | None = None, **upstream: Any) -> Deployment:
        block = self.stdio_upstream("billing", "mcp_guard.examples.billing", {"BILLING_API_KEY": BILLING_KEY})
        return self.add(
            "billing",
            {"server": "billing", "upstream": {**block, **upstream}, "tools": tools or BILLING_TOOLS},
        )

    def with_tickets(self, tools: Mapping[str, Any] | None = None, **upstream: Any) -> Deployment:
        block = self.stdio_upstream(
            "tickets", "mcp_guard.examples.tickets", {"TICKETS_API_TOKEN": TICKETS_TOKEN}
        )
        return self.add(
            "tickets",
            {"server": "tickets", "upstream": {**block, **upstream}, "tools": tools or TICKETS_TOOLS},
        )

    def with_examples(self) -> Deployment:
        return self.with_billing().with_tickets()

    def with_hostile(
        self,
        tools: Mapping[str, Any] | None = None,
        *,
        description_suffix: str = "",
        **upstream: Any,
    ) -> Deployment:
        """The hostile upstream (tests.upstreams.hostile, run from the repo root), every tool
        granted to role qa unless `tools` says otherwise."""
        env = {"HOSTILE_SECRET": HOSTILE_SECRET, "HOSTILE_DESCRIPTION_SUFFIX": description_suffix}
        block = self.stdio_upstream("hostile", "tests.upstreams.hostile", env, cwd=str(REPO_ROOT))
        granted = tools or {name: {"allow": ["role:qa"]} for name in HOSTILE_TOOL_NAMES}
        return self.add("hostile", {"server": "hostile", "upstream": {**block, **upstream}, "tools": granted})

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "manifests": "tool_manifests",
            "ledger": {"path": self.ledger_path.name, "durability": "normal"},
            "agents": {name: {"roles": roles} for name, roles in self.agents.items()},
        }
        if self.limits:
            config["limits"] = dict(self.limits)
        config.update(self.extra_config)
        return config

    def write(self) -> Path:
        """Write guard.yaml and the manifests (mode 0644); return the guard.yaml path."""
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        write_private(self.config_path, yaml.safe_dump(self.config(), sort_keys=False))
        for server, manifest in self.manifests.items():
            write_private(self.manifests_dir / f"{server}.yaml", yaml.safe_dump(manifest, sort_keys=False))
        return self.config_path

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> tuple[Any, Any]:
        return load_deployment(self.write())

    def journal(self, server: str) -> list[dict[str, Any]]:
        return read_journal(self.journal_path(server))

    def journals(self) -> list[dict[str, Any]]:
        """Every call any upstream received, all servers together."""
        return [entry for server in self.manifests for entry in self.journal(server)]

    def ledger(self) -> list[dict[str, Any]]:
        return ledger_calls(self.ledger_path)

    def stderr(self) -> str:
        return (
            self.stderr_path.read_text(encoding="utf-8", errors="replace")
            if self.stderr_path.exists()
            else ""
        )


def write_private(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)  # not group- or world-writable, whatever the umask: the guard warns or refuses


# -- the ledger file, read with plain sqlite3 ------------------------------------------------------


def ledger_calls(path: Path) -> list[dict[str, Any]]:
    """Every decision entry, oldest first, with its first outcome (`outcome`, `outcome_detail`,
    `duration_ms`) merged in and `arguments` parsed; [] when there is no ledger file."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        decisions = conn.execute(
            "SELECT id, ts, call_id, agent, session, server, tool, arguments, decision, reason, detail, "
            "policy_hash FROM entries WHERE kind = 'decision' ORDER BY id"
        ).fetchall()
        outcomes: dict[str, sqlite3.Row] = {}
        for row in conn.execute(
            "SELECT call_id, outcome, detail, duration_ms FROM entries WHERE kind = 'outcome' ORDER BY id"
        ):
            outcomes.setdefault(row["call_id"], row)
    finally:
        conn.close()
    calls = []
    for row in decisions:
        call = dict(row)
        call["arguments"] = json.loads(call["arguments"]) if call["arguments"] is not None else None
        outcome = outcomes.get(call["call_id"])
        call["outcome"] = outcome["outcome"] if outcome else None
        call["outcome_detail"] = outcome["detail"] if outcome else None
        call["duration_ms"] = outcome["duration_ms"] if outcome else None
        calls.append(call)
    return calls


def ledger_events(path: Path, kind: str) -> list[dict[str, Any]]:
    """Every policy, pin or approval entry of one kind, oldest first: its payload with the entry's
    server, tool and policy_hash."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT server, tool, policy_hash, payload FROM entries WHERE kind = ? ORDER BY id", (kind,)
        ).fetchall()
    finally:
        conn.close()
    return [{"server": s, "tool": t, "policy_hash": h, **json.loads(p)} for s, t, h, p in rows]


async def gather(*awaitables: Awaitable[Any]) -> list[Any]:
    """Await all at once; their results in the order given."""
    results: list[Any] = [None] * len(awaitables)

    async def one(i: int, awaitable: Awaitable[Any]) -> None:
        results[i] = await awaitable

    async with anyio.create_task_group() as tg:
        for i, awaitable in enumerate(awaitables):
            tg.start_soon(one, i, awaitable)
    return results


def list_changed_listener() -> tuple[Callable[[Any], Awaitable[None]], anyio.Event]:
    """A ClientSession message handler, and the event it sets on notifications/tools/list_changed."""
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    return on_message, changed


def ledger_bytes(path: Path) -> bytes:
    """The raw bytes of the ledger and its WAL, as anyone with the file could read them."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


# -- results -------------------------------------------------------------------------------------


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def dumped(result: Any) -> str:
    """Everything an agent received in a result, as one JSON text."""
    return json.dumps(result.model_dump(mode="json", by_alias=True), ensure_ascii=False)


def assert_denied(result: Any, reason: str) -> None:
    assert result.is_error is True, text_of(result)
    assert len(result.content) == 1
    assert text_of(result).startswith(f"denied ({reason}): "), text_of(result)


# -- upstreams in memory ---------------------------------------------------------------------------

Env = Mapping[str, str]


def _journal(env: Env) -> Path | None:
    return Path(env[JOURNAL_ENV]) if env.get(JOURNAL_ENV) else None


IN_MEMORY: dict[str, Callable[[Env], Server[Any]]] = {
    "mcp_guard.examples.billing": lambda env: billing.build_server(env[billing.API_KEY_ENV], _journal(env)),
    "mcp_guard.examples.tickets": lambda env: tickets.build_server(
        env[tickets.CREDENTIAL_ENV], _journal(env)
    ),
    "tests.upstreams.hostile": lambda env: hostile.build_server(
        hostile.Settings(
            env.get(hostile.SECRET_ENV, ""),
            env.get(hostile.DESCRIPTION_SUFFIX_ENV, ""),
            _journal(env),
            in_process=True,
        )
    ),
    "tests.upstreams.decimal_refunds": lambda env: decimal_refunds.build_server(_journal(env)),
    "tests.upstreams.files": lambda env: files.build_server(_journal(env)),
    "tests.conformance.upstream": lambda env: conformance_upstream.build_server(
        env.get("CONFORMANCE_SECRET", ""), _journal(env), env.get("CONFORMANCE_DRIFT", "")
    ),
}
"""The servers our `python -m MODULE` upstreams run, built from the environment the process gets."""


def _module(manifest: Manifest) -> str | None:
    args = manifest.upstream.args
    return args[1] if manifest.upstream.command == "python" and args[:1] == ("-m",) else None


def in_memory(manifest: Manifest) -> Server[Any]:
    """The server the manifest's upstream block would start as a process, built in this process
    from the same environment (its credential, its journal): a fresh one for each session."""
    module = _module(manifest)
    assert module in IN_MEMORY, f"{manifest.server}: no in-memory server for {module!r}"
    return IN_MEMORY[module](manifest.upstream.env)


def memory_transports(manifests: Sequence[Manifest]) -> dict[str, Transport]:
    """An in-memory transport for each upstream that is one of ours; any other (a command that does
    not exist, a process that never answers) stays what its manifest says."""
    transport = memory_transport(in_memory)
    return {m.server: transport for m in manifests if _module(m) in IN_MEMORY}


# -- the guard in-process and over real stdio ------------------------------------------------------


@asynccontextmanager
async def inprocess_guard(
    deployment: Deployment, agent: str, *, processes: bool = False, **session_args: Any
) -> AsyncIterator[ClientSession]:
    """The guard's own Server, in this process, connected to a ClientSession by memory streams;
    the upstreams run in memory too (`processes=True`: as real subprocesses)."""
    async with inprocess_guards(deployment, [agent], processes=processes, **session_args) as sessions:
        yield sessions[agent]


@asynccontextmanager
async def inprocess_guards(
    deployment: Deployment, agents: Sequence[str], *, processes: bool = False, **session_args: Any
) -> AsyncIterator[dict[str, ClientSession]]:
    """One client session per agent, each a caller with its own MCP server, all on one guard: one
    set of upstreams and one ledger connection (as HTTP serves many agents). The upstreams run in
    memory unless `processes` is set."""
    config, manifests = deployment.load()
    transports = None if processes else memory_transports(manifests)
    async with open_guard(config, manifests, tuple(agents), transports) as guard, AsyncExitStack() as stack:
        sessions: dict[str, ClientSession] = {}
        for name in agents:
            caller = Caller(guard, name)
            sessions[name] = await stack.enter_async_context(_connect(caller, session_args))
        yield sessions


@asynccontextmanager
async def _connect(caller: Caller, session_args: dict[str, Any]) -> AsyncIterator[ClientSession]:
    """An in-process client of the 2025 form (initialize); with `modern=True` in the arguments, one
    of the 2026-07-28 form (discover, no handshake: requests from servers come back as results)."""
    session_args = dict(session_args)
    modern = session_args.pop("modern", False)
    server = build_server(caller)
    to_server, server_in = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    server_out, to_client = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    async with anyio.create_task_group() as tg, to_server, server_in, server_out, to_client:
        tg.start_soon(server.run, server_in, server_out, server.create_initialization_options())
        async with ClientSession(
            to_client, to_server, read_timeout_seconds=TIMEOUT, **session_args
        ) as session:
            with anyio.fail_after(TIMEOUT):
                await (session.discover() if modern else session.initialize())
            yield session
        tg.cancel_scope.cancel()


def guard_command(deployment: Deployment, agent: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mcp_guard",
        "--config",
        str(deployment.config_path),
        "serve",
        "--agent",
        agent,
    ]


def guard_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_GUARD")}
    env.update(extra)
    return env


@dataclass
class Run:
    """What a command left: its exit status and everything it printed."""

    returncode: int
    stdout: str
    stderr: str


_CLI_LOCK = threading.Lock()  # one command at a time: it swaps this process's environment and folder


async def cli(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Run:
    """`mcp-guard ARGS` as the operator runs it, in this process: the command's own `main`, with
    the environment (`guard_env()` unless given), working folder, stdout and stderr swapped in, on a
    worker thread since it runs its own event loop. Starting a Python process that imports the SDK
    costs about a second of CPU; the tests where the process itself is the point (the entry point,
    signals, a reader that goes away) start the real command instead."""
    call = functools.partial(cli_blocking, *args, cwd=cwd, env=env)
    with anyio.fail_after(TIMEOUT):
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)


def cli_blocking(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Run:
    """`cli` for a test with no event loop of its own running."""
    from mcp_guard.cli.main import main

    env = guard_env() if env is None else dict(env)
    out, err = io.StringIO(), io.StringIO()
    if not _CLI_LOCK.acquire(timeout=TIMEOUT):
        raise TimeoutError("another in-process command is still running")
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        with (
            contextlib.chdir(cwd or Path.cwd()),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _CLI_LOCK.release()
    return Run(code, out.getvalue(), err.getvalue())


@asynccontextmanager
async def stdio_guard(
    deployment: Deployment, agent: str, *, from_environment: bool = False, **session_args: Any
) -> AsyncIterator[ClientSession]:
    """The real `mcp-guard ... serve --agent AGENT` command, spoken to by a real MCP client over
    stdio; its stderr goes to `deployment.stderr_path`. `from_environment` passes the config and
    the agent as MCP_GUARD_CONFIG and MCP_GUARD_AGENT instead of flags."""
    deployment.write()
    if from_environment:
        command = [sys.executable, "-m", "mcp_guard", "serve"]
        env = guard_env(MCP_GUARD_CONFIG=str(deployment.config_path), MCP_GUARD_AGENT=agent)
    else:
        command, env = guard_command(deployment, agent), guard_env()
    params = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(deployment.root))
    with deployment.stderr_path.open("a", encoding="utf-8") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, read_timeout_seconds=TIMEOUT, **session_args) as session,
        ):
            with anyio.fail_after(TIMEOUT):
                await session.initialize()
            yield session


def meta(values: Mapping[str, Any]) -> types.RequestParamsMeta:
    return cast(types.RequestParamsMeta, dict(values))


# -- raw JSON-RPC lines ------------------------------------------------------------------------------


class RawGuard:
    """The real guard as a subprocess, spoken to in raw lines: what a hostile client can send."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._next_id = 1000
        self.other: list[dict[str, Any]] = []  # notifications and stray messages seen while waiting

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_line(self, line: bytes) -> None:
        await self._stdin.send(line + b"\n")

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.send_line(json.dumps(message).encode())

    async def receive(self) -> dict[str, Any]:
        with anyio.fail_after(TIMEOUT):
            line = await self._stdout.receive_until(b"\n", 64 * 1024 * 1024)
        message = json.loads(line)
        assert isinstance(message, dict), line[:200]
        return message

    async def response(self, msg_id: Any) -> dict[str, Any]:
        """The response with this id; anything else that arrives first is kept in `other`."""
        while True:
            message = await self.receive()
            if "id" in message and message["id"] == msg_id and ("result" in message or "error" in message):
                return message
            self.other.append(message)

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        msg_id = self.next_id()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = dict(params)
        await self.send(message)
        return await self.response(msg_id)

    async def request_line(self, line: bytes) -> list[dict[str, Any]]:
        """Send one raw line, then a ping; return what came back before the ping's answer."""
        await self.send_line(line)
        ping_id = self.next_id()
        await self.send({"jsonrpc": "2.0", "id": ping_id, "method": "ping"})
        before: list[dict[str, Any]] = []
        while True:
            message = await self.receive()
            if message.get("id") == ping_id and "result" in message:
                return before
            before.append(message)

    async def initialize(self) -> dict[str, Any]:
        answer = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-test-client", "version": "0"},
            },
        )
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer


@asynccontextmanager
async def raw_guard(deployment: Deployment, agent: str) -> AsyncIterator[RawGuard]:
    deployment.write()
    with deployment.stderr_path.open("a", encoding="utf-8") as errlog:
        async with await anyio.open_process(
            guard_command(deployment, agent), env=guard_env(), cwd=deployment.root, stderr=errlog
        ) as process:
            guard = RawGuard(process)
            try:
                answer = await guard.initialize()
                assert "result" in answer, answer
                yield guard
            finally:
                await guard._stdin.aclose()
                with anyio.move_on_after(TIMEOUT) as waited:
                    await process.wait()
                if waited.cancelled_caught:
                    process.kill()
                    await process.wait()


# -- HTTP guards started as subprocesses --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline: float) -> None:
    """Block until something listens on the loopback port, or raise once `deadline` passes."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise


def drain_serving(stream: Any, lines: list[str], ready: queue.Queue[str]) -> None:
    """Keep a server's stderr lines; say on `ready` when it starts serving (or its stream ends)."""
    for line in stream:
        lines.append(line)
        if "serving Streamable HTTP at" in line:
            ready.put(line)
    ready.put("")
