"""End to end over Streamable HTTP: the real `mcp-guard serve --http` command with the bundled
example upstreams, real HTTP clients (the SDK's client on an httpx2 client carrying the header,
and raw httpx2 requests), and the ledger file and upstream journal read from disk."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from mcp_guard.examples.journal import JOURNAL_ENV, read_journal
from mcp_guard.identity.keys import hash_key, new_key
from tests.helpers import Run, cli_blocking, drain_serving, free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
SIGNING_KEY = "e2e-http-signing-key-5d0c9a7e41b2f3086c1d"
MAX_MESSAGE_BYTES = 256 * 1024
SUPPORT_TOOLS = {
    "billing__lookup_order",
    "billing__refund",
    "tickets__search_tickets",
    "tickets__get_ticket",
    "tickets__add_comment",
    "tickets__close_ticket",
}
FINANCE_TOOLS = {"billing__lookup_order", "billing__refund", "billing__diagnostics"}
PROTOCOL = "2025-11-25"
CONSOLE_ORIGIN = "https://console.example:8443"


# -- the guard process ----------------------------------------------------------------------------


@dataclass
class HttpGuard:
    url: str
    root: Path
    keys: dict[str, str]
    stderr: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "guard.yaml"

    def bearer(self, agent: str) -> str:
        return f"Bearer {self.keys[agent]}"

    def decisions(self) -> list[dict[str, Any]]:
        """Every call decision in the ledger's `entries` table, oldest first."""
        with sqlite3.connect(f"file:{self.root / 'ledger.db'}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM entries WHERE kind = 'decision' ORDER BY id").fetchall()
        return [dict(row) for row in rows]

    def decisions_mentioning(self, text: str) -> list[dict[str, Any]]:
        return [row for row in self.decisions() if text in (row["arguments"] or "") + (row["tool"] or "")]

    def journal(self) -> list[dict[str, Any]]:
        """What the example upstreams actually received."""
        return read_journal(self.root / "journal.jsonl")


def _command() -> list[str]:
    script = Path(sys.executable).with_name("mcp-guard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mcp_guard"]


def _write_deployment(root: Path, keys: dict[str, str]) -> None:
    (root / "tool_manifests").mkdir()
    for source in sorted((REPO_ROOT / "tool_manifests").glob("*.yaml")):
        manifest = yaml.safe_load(source.read_text(encoding="utf-8"))
        manifest["upstream"].setdefault("env", {})[JOURNAL_ENV] = str(root / "journal.jsonl")
        (root / "tool_manifests" / source.name).write_text(yaml.safe_dump(manifest), encoding="utf-8")
    config = {
        "manifests": "tool_manifests",
        "ledger": {"path": "ledger.db"},
        "agents": {
            "support-bot": {"roles": ["support"], "keys": [hash_key(keys["support-bot"])]},
            "finance-bot": {"roles": ["finance"], "keys": [hash_key(keys["finance-bot"])]},
        },
        "tokens": {"signing_key": SIGNING_KEY, "max_ttl": "1h"},
        "limits": {"max_message_bytes": MAX_MESSAGE_BYTES},
        "http": {"allowed_origins": [CONSOLE_ORIGIN]},
    }
    (root / "guard.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGuard]:
    """One `mcp-guard serve --http 127.0.0.1:PORT` for the module: two agents with static keys."""
    root = tmp_path_factory.mktemp("http-guard")
    keys = {"support-bot": new_key(), "finance-bot": new_key()}
    _write_deployment(root, keys)
    port = free_port()
    process = subprocess.Popen(
        [*_command(), "--config", str(root / "guard.yaml"), "serve", "--http", f"127.0.0.1:{port}"],
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    served = HttpGuard(f"http://127.0.0.1:{port}/mcp", root, keys)
    ready: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=drain_serving, args=(process.stderr, served.stderr, ready), daemon=True)
    reader.start()
    try:
        line = ready.get(timeout=TIMEOUT)
        assert line, f"the guard exited before serving: {''.join(served.stderr)}"
        wait_for_port(port, time.monotonic() + TIMEOUT)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        reader.join(timeout=TIMEOUT)
        process.stderr.close()
    assert code == 0, f"the guard did not stop cleanly on SIGTERM ({code}): {''.join(served.stderr)}"


# -- clients --------------------------------------------------------------------------------------


@asynccontextmanager
async def connect(
    url: str, headers: dict[str, str], client_info: types.Implementation | None = None
) -> AsyncIterator[ClientSession]:
    """The SDK's Streamable HTTP client on an httpx2 client that carries the headers."""
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT)) as http,
        streamable_http_client(url, http_client=http) as streams,
        ClientSession(
            streams[0], streams[1], read_timeout_seconds=TIMEOUT, client_info=client_info
        ) as session,
    ):
        await session.initialize()
        yield session


def _rpc(method: str, params: dict[str, Any] | None = None, msg_id: int | None = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if msg_id is not None:
        message["id"] = msg_id
    if params is not None:
        message["params"] = params
    return message


INITIALIZE = _rpc(
    "initialize",
    {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
)


def _headers(authorization: str | None, sid: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if authorization is not None:
        headers["Authorization"] = authorization
    if sid is not None:
        headers["Mcp-Session-Id"] = sid
        headers["MCP-Protocol-Version"] = PROTOCOL
    return headers | extra


def _messages(response: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a JSON or SSE response body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [
            json.loads(line[5:])
            for line in response.text.splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
    return [response.json()]


async def _open_raw_session(http: httpx2.AsyncClient, url: str, authorization: str) -> str:
    opened = await http.post(url, json=INITIALIZE, headers=_headers(authorization))
    assert opened.status_code == 200, opened.text
    sid = opened.headers["mcp-session-id"]
    done = await http.post(
        url, json=_rpc("notifications/initialized", msg_id=None), headers=_headers(authorization, sid)
    )
    assert done.status_code == 202, done.text
    return sid


def _lookup(order: str) -> dict[str, Any]:
    return _rpc("tools/call", {"name": "billing__lookup_order", "arguments": {"order_id": order}}, msg_id=2)


# -- tokens made by hand, to attack the verifier ---------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any], *, key: str = SIGNING_KEY, header: dict[str, Any] | None = None) -> str:
    head = _b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "support-bot",
        "aud": "mcp-guard",
        "iat": now,
        "exp": now + 600,
        "jti": secrets.token_hex(8),
    }
    return claims | changes


def _tampered() -> str:
    head, _, signature = _jwt(_claims()).split(".")
    return f"{head}.{_b64(json.dumps(_claims(sub='finance-bot')).encode())}.{signature}"


def _alg_none() -> str:
    head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{_b64(json.dumps(_claims()).encode())}."


BAD_CREDENTIALS: dict[str, Any] = {
    "no header": lambda keys: None,
    "bearer scheme without a credential": lambda keys: "Bearer",
    "wrong key": lambda keys: f"Bearer {new_key()}",
    "basic header with a valid key": lambda keys: (
        "Basic " + base64.b64encode(f"support-bot:{keys['support-bot']}".encode()).decode()
    ),
    "key without the Bearer scheme": lambda keys: keys["support-bot"],
    "token for another audience": lambda keys: f"Bearer {_jwt(_claims(aud='another-guard'))}",
    "expired token": lambda keys: (
        f"Bearer {_jwt(_claims(iat=int(time.time()) - 1200, exp=int(time.time()) - 600))}"
    ),
    "tampered token": lambda keys: f"Bearer {_tampered()}",
    "alg none token": lambda keys: f"Bearer {_alg_none()}",
    "token signed with another key": lambda keys: f"Bearer {_jwt(_claims(), key='x' * 40)}",
    "token for an unknown agent": lambda keys: f"Bearer {_jwt(_claims(sub='ghost-bot'))}",
    "token issued in the future": lambda keys: (
        f"Bearer {_jwt(_claims(iat=int(time.time()) + 600, exp=int(time.time()) + 900))}"
    ),
}


# -- identity -------------------------------------------------------------------------------------


async def test_two_agents_connected_at_once_see_only_their_own_tools_and_are_recorded_under_their_own_names(
    guard: HttpGuard,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            connect(guard.url, {"Authorization": guard.bearer("support-bot")}) as support,
            connect(guard.url, {"Authorization": guard.bearer("finance-bot")}) as finance,
        ):
            support_tools = {t.name for t in (await support.list_tools()).tools}
            finance_tools = {t.name for t in (await finance.list_tools()).tools}
            async with anyio.create_task_group() as tg:
                tg.start_soon(support.call_tool, "billing__lookup_order", {"order_id": "ORD-11001"})
                tg.start_soon(finance.call_tool, "billing__lookup_order", {"order_id": "ORD-11002"})
            diagnostics = await finance.call_tool("billing__diagnostics", {})
            with pytest.raises(MCPError) as hidden:
                await support.call_tool("billing__diagnostics", {})
    assert support_tools == SUPPORT_TOOLS
    assert finance_tools == FINANCE_TOOLS
    assert not diagnostics.is_error
    assert hidden.value.error.code == types.INVALID_PARAMS
    [by_support] = guard.decisions_mentioning("ORD-11001")
    [by_finance] = guard.decisions_mentioning("ORD-11002")
    assert (by_support["agent"], by_support["decision"]) == ("support-bot", "allow")
    assert (by_finance["agent"], by_finance["decision"]) == ("finance-bot", "allow")
    assert by_support["session"]
    assert by_finance["session"]
    assert by_support["session"] != by_finance["session"]
    refused = [
        r for r in guard.decisions() if r["tool"] == "billing__diagnostics" and r["agent"] == "support-bot"
    ]
    assert [r["reason"] for r in refused] == ["unknown_tool"]


async def test_client_info_meta_and_headers_claiming_another_agent_change_nothing(guard: HttpGuard) -> None:
    impostor = types.Implementation(name="finance-bot", version="1.0")
    headers = {"Authorization": guard.bearer("support-bot"), "X-Agent": "finance-bot", "From": "finance-bot"}
    meta = cast(
        types.RequestParamsMeta,
        {
            "agent": "finance-bot",
            "io.modelcontextprotocol/clientInfo": {"name": "finance-bot", "version": "1"},
        },
    )
    with anyio.fail_after(TIMEOUT):
        async with connect(guard.url, headers, client_info=impostor) as session:
            listed = {t.name for t in (await session.list_tools()).tools}
            await session.call_tool("billing__lookup_order", {"order_id": "ORD-12001"}, meta=meta)
            with pytest.raises(MCPError):
                await session.call_tool("billing__diagnostics", {}, meta=meta)
    assert listed == SUPPORT_TOOLS
    [row] = guard.decisions_mentioning("ORD-12001")
    assert row["agent"] == "support-bot"
    [received] = [e for e in guard.journal() if e["arguments"] == {"order_id": "ORD-12001"}]
    assert "finance-bot" not in json.dumps(received), "the client's _meta reached the upstream"


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
async def test_a_request_without_a_valid_bearer_credential_gets_401_and_reaches_nothing(
    guard: HttpGuard, case: str
) -> None:
    authorization = BAD_CREDENTIALS[case](guard.keys)
    order = f"ORD-{13000 + list(BAD_CREDENTIALS).index(case)}"
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            opened = await http.post(guard.url, json=INITIALIZE, headers=_headers(authorization))
            called = await http.post(guard.url, json=_lookup(order), headers=_headers(authorization))
    for response in (opened, called):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "mcp-session-id" not in response.headers
    assert guard.decisions_mentioning(order) == []
    assert [e for e in guard.journal() if e["arguments"] == {"order_id": order}] == []


async def test_a_token_from_token_issue_works_and_names_its_agent(guard: HttpGuard) -> None:
    with anyio.fail_after(TIMEOUT):
        issued = await anyio.run_process(
            [
                *_command(),
                "--config",
                str(guard.config),
                "token",
                "issue",
                "--agent",
                "finance-bot",
                "--ttl",
                "5m",
            ]
        )
        token = issued.stdout.decode().strip()
        async with connect(guard.url, {"Authorization": f"Bearer {token}"}) as session:
            listed = {t.name for t in (await session.list_tools()).tools}
            await session.call_tool("billing__lookup_order", {"order_id": "ORD-14001"})
    assert listed == FINANCE_TOOLS
    [row] = guard.decisions_mentioning("ORD-14001")
    assert row["agent"] == "finance-bot"
    assert token not in guard.config.read_text() + (guard.root / "ledger.db").read_bytes().decode("latin-1")


async def test_the_agents_credential_is_never_forwarded_upstream_nor_recorded(guard: HttpGuard) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(guard.url, {"Authorization": guard.bearer("support-bot")}) as session:
            await session.call_tool("billing__lookup_order", {"order_id": "ORD-15001"})
    key = guard.keys["support-bot"]
    assert key not in (guard.root / "journal.jsonl").read_text(encoding="utf-8")
    for path in guard.root.glob("ledger.db*"):
        assert key.encode() not in path.read_bytes()
    assert all(key not in line for line in guard.stderr)


async def test_a_credential_in_the_query_string_is_refused_even_when_valid(guard: HttpGuard) -> None:
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            response = await http.post(
                guard.url,
                params={"access_token": guard.keys["support-bot"]},
                json=INITIALIZE,
                headers=_headers(None),
            )
    assert response.status_code == 400
    assert "mcp-session-id" not in response.headers


async def test_a_new_protocol_era_client_without_sessions_is_served_with_its_key(guard: HttpGuard) -> None:
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(
            headers={"Authorization": guard.bearer("finance-bot")}, timeout=TIMEOUT
        ) as http:
            transport = streamable_http_client(guard.url, http_client=http)
            async with Client(transport, mode="2026-07-28") as client:
                listed = {t.name for t in (await client.list_tools()).tools}
                await client.call_tool("billing__lookup_order", {"order_id": "ORD-16001"})
    assert listed == FINANCE_TOOLS
    [row] = guard.decisions_mentioning("ORD-16001")
    assert (row["agent"], row["session"]) == ("finance-bot", None)


# -- sessions -------------------------------------------------------------------------------------


async def test_another_agent_using_a_session_id_gets_404_and_the_owner_keeps_it(guard: HttpGuard) -> None:
    support, finance = guard.bearer("support-bot"), guard.bearer("finance-bot")
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            sid = await _open_raw_session(http, guard.url, support)
            hijack_list = await http.post(guard.url, json=_rpc("tools/list"), headers=_headers(finance, sid))
            hijack_call = await http.post(
                guard.url, json=_lookup("ORD-17001"), headers=_headers(finance, sid)
            )
            hijack_stream = await http.get(
                guard.url, headers=_headers(finance, sid, Accept="text/event-stream")
            )
            hijack_delete = await http.delete(guard.url, headers=_headers(finance, sid))
            own = await _open_raw_session(http, guard.url, finance)
            doubled = [
                await http.post(
                    guard.url,
                    json=_lookup("ORD-17001"),
                    headers=[*_headers(finance, first).items(), ("Mcp-Session-Id", second)],
                )
                for first, second in ((own, sid), (sid, own))
            ]
            made_up = await http.post(guard.url, json=_rpc("tools/list"), headers=_headers(support, "f" * 32))
            owner = await http.post(guard.url, json=_rpc("tools/list"), headers=_headers(support, sid))
            closed = await http.delete(guard.url, headers=_headers(support, sid))
            after_close = await http.post(guard.url, json=_rpc("tools/list"), headers=_headers(support, sid))
    for response in (hijack_list, hijack_call, hijack_stream, hijack_delete, made_up, after_close):
        assert response.status_code == 404, response.text
    assert [response.status_code for response in doubled] == [400, 400]
    assert owner.status_code == 200
    assert {t["name"] for t in _messages(owner)[0]["result"]["tools"]} == SUPPORT_TOOLS
    assert closed.status_code == 200
    assert guard.decisions_mentioning("ORD-17001") == []


# -- transport checks -----------------------------------------------------------------------------


LOOK_ALIKE_ORIGINS = [
    "http://evil.example",
    "http://localhost:1@evil.com",
    "http://localhost.evil.com",
    "http://127.0.0.1:8765.evil.com",
    "https://console.example:9443",  # wrong port
    "https://console.example",  # wrong port: 443 is not 8443
    "http://console.example:8443",  # wrong scheme
    "null",
    "http://localhost.:6274",  # trailing dot
    "http://[::2]:6274",
    "http://localhost:6274/path",
]


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        *[({"Origin": origin}, 403) for origin in LOOK_ALIKE_ORIGINS],
        ({"Host": "evil.example"}, 421),
        ({"Host": "evil.example:80"}, 421),
        ({"Host": "localhost:1@evil.com"}, 421),
        ({"Host": "127.0.0.1:8765.evil.com"}, 421),
    ],
)
async def test_a_request_from_another_site_is_refused_before_identity_and_reaches_nothing(
    guard: HttpGuard, extra: dict[str, str], status: int
) -> None:
    order = f"ORD-{secrets.randbelow(10**8):08d}"
    call = _rpc("tools/call", {"name": "billing__lookup_order", "arguments": {"order_id": order}})
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            opened = await http.post(
                guard.url, json=INITIALIZE, headers=_headers(guard.bearer("support-bot"), **extra)
            )
            called = await http.post(
                guard.url, json=call, headers=_headers(guard.bearer("support-bot"), **extra)
            )
    for response in (opened, called):
        assert response.status_code == status, response.text
        assert "mcp-session-id" not in response.headers
    assert guard.decisions_mentioning(order) == []
    assert [e for e in guard.journal() if order in json.dumps(e)] == []


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:6274",
        "http://127.0.0.1:6274",
        "http://[::1]:6274",
        "http://LOCALHOST:6274",  # host names are case-insensitive
        CONSOLE_ORIGIN,
    ],
)
async def test_a_loopback_or_configured_origin_is_accepted(guard: HttpGuard, origin: str) -> None:
    headers = _headers(guard.bearer("support-bot"), Origin=origin)
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            response = await http.post(guard.url, json=INITIALIZE, headers=headers)
    assert response.status_code == 200, response.text


async def test_a_body_over_the_size_cap_is_refused_and_nothing_is_forwarded(guard: HttpGuard) -> None:
    support = guard.bearer("support-bot")
    call = _rpc(
        "tools/call",
        {
            "name": "tickets__add_comment",
            "arguments": {"ticket_id": "ORD-18001", "body": "x" * MAX_MESSAGE_BYTES},
        },
    )
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            sid = await _open_raw_session(http, guard.url, support)
            response = await http.post(guard.url, json=call, headers=_headers(support, sid))

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap counts what arrives
                data = json.dumps(call).encode()
                for start in range(0, len(data), 65536):
                    yield data[start : start + 65536]

            streamed = await http.post(guard.url, content=chunks(), headers=_headers(support, sid))
    assert response.status_code == 413
    assert streamed.status_code == 413
    assert guard.decisions_mentioning("ORD-18001") == []
    assert [e for e in guard.journal() if "ORD-18001" in json.dumps(e)] == []


async def test_a_body_with_a_duplicate_key_gets_parse_error_400_and_nothing_is_forwarded(
    guard: HttpGuard,
) -> None:
    support = guard.bearer("support-bot")
    body = (
        '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"billing__refund",'
        '"arguments":{"order_id":"ORD-19001","amount":5,"amount":5000,"currency":"USD"}}}'
    )
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            sid = await _open_raw_session(http, guard.url, support)
            response = await http.post(guard.url, content=body, headers=_headers(support, sid))
            nan = await http.post(
                guard.url,
                content=body.replace('"amount":5,', "").replace("5000", "NaN"),
                headers=_headers(support, sid),
            )
    for refused in (response, nan):
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == types.PARSE_ERROR
    assert guard.decisions_mentioning("ORD-19001") == []
    assert [e for e in guard.journal() if "ORD-19001" in json.dumps(e)] == []


async def test_a_json_rpc_batch_is_refused_whole(guard: HttpGuard) -> None:
    support = guard.bearer("support-bot")
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            sid = await _open_raw_session(http, guard.url, support)
            response = await http.post(
                guard.url, json=[_rpc("tools/list"), _lookup("ORD-19501")], headers=_headers(support, sid)
            )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == types.INVALID_REQUEST
    assert guard.decisions_mentioning("ORD-19501") == []


# -- the command line -----------------------------------------------------------------------------


def _run(*args: str, config: Path | None = None) -> Run:
    prefix = ["--config", str(config)] if config else []
    return cli_blocking(*prefix, *args)


def test_agent_key_prints_a_new_key_once_with_its_sha256_line() -> None:
    first, second = _run("agent", "key", "support-bot"), _run("agent", "key", "support-bot")
    assert first.returncode == 0
    key = first.stdout.split("key: ", 1)[1].split()[0]
    assert key.startswith("mcpg_")
    assert len(key) >= 40
    assert f'"{hash_key(key)}"' in first.stdout
    assert key not in second.stdout


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--ttl", "2h"], "max_ttl"),
        (["--ttl", "soon"], "--ttl"),
        (["--agent", "ghost-bot"], "ghost-bot"),
    ],
)
def test_token_issue_refuses_a_ttl_over_max_ttl_or_an_unknown_agent_with_exit_2(
    guard: HttpGuard, args: list[str], problem: str
) -> None:
    command = (
        ["token", "issue", "--agent", "finance-bot", *args]
        if args[0] != "--agent"
        else ["token", "issue", *args]
    )
    result = _run(*command, config=guard.config)
    assert result.returncode == 2
    assert result.stdout == ""
    assert problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_token_issue_without_a_tokens_section_exits_2(tmp_path: Path) -> None:
    (tmp_path / "tool_manifests").mkdir()
    (tmp_path / "guard.yaml").write_text("agents:\n  support-bot: {roles: [support]}\n", encoding="utf-8")
    result = _run("token", "issue", "--agent", "support-bot", config=tmp_path / "guard.yaml")
    assert result.returncode == 2
    assert "tokens" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", "::1:80", ":8080", "host:port"])
def test_serve_http_with_a_bad_address_exits_2_with_one_line(guard: HttpGuard, listen: str) -> None:
    result = _run("serve", "--http", listen, config=guard.config)
    assert result.returncode == 2
    assert "[HOST:]PORT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_http_on_a_busy_port_exits_1_with_one_line(guard: HttpGuard) -> None:
    port = guard.url.split(":")[2].split("/")[0]
    result = _run("serve", "--http", port, config=guard.config)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_http_refuses_an_agent_flag_since_credentials_name_the_agent(guard: HttpGuard) -> None:
    result = _run("serve", "--agent", "support-bot", "--http", "0", config=guard.config)
    assert result.returncode == 2
    assert "credential" in result.stderr


def test_manifest_init_with_an_authorization_header_writes_a_variable_never_the_token(
    guard: HttpGuard,
) -> None:
    key = guard.keys["support-bot"]
    done = _run("manifest", "init", "--url", guard.url, "--header", f"Authorization: Bearer {key}")
    assert done.returncode == 0, done.stderr
    assert key not in done.stdout
    assert key not in done.stderr
    manifest = yaml.safe_load(done.stdout)
    assert manifest["upstream"] == {
        "url": guard.url,
        "headers": {"Authorization": "Bearer ${UPSTREAM_TOKEN}"},
        "timeout": "1m",
    }
    assert set(manifest["tools"]) == SUPPORT_TOOLS  # the live list, fetched with the real header
    (note,) = [line for line in done.stderr.splitlines() if "UPSTREAM_TOKEN" in line]
    assert "set UPSTREAM_TOKEN where the guard runs" in note
    assert "'Authorization'" in note


# -- escalation across calls ----------------------------------------------------------------------


async def test_over_http_a_refund_needs_its_lookup_and_an_activation_reaches_the_session_within_2s(
    guard: HttpGuard,
) -> None:
    changed, changed_at = anyio.Event(), []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification) and not changed.is_set():
            changed_at.append(time.monotonic())
            changed.set()

    def cap(listed: types.ListToolsResult) -> Any:
        return next(t for t in listed.tools if t.name == "billing__refund").input_schema["properties"][
            "amount"
        ]["maximum"]

    support = {"Authorization": guard.bearer("support-bot")}
    refund = {"order_id": "ORD-1002", "amount": 5, "currency": "EUR"}
    grants = [*_command(), "--config", str(guard.config), "grants"]
    activate = [*grants, "activate", "support-bot", "billing.refund", "--for", "5m", "--reason", "http test"]
    with anyio.fail_after(TIMEOUT):
        async with (
            httpx2.AsyncClient(headers=support, timeout=httpx2.Timeout(TIMEOUT)) as http,
            streamable_http_client(guard.url, http_client=http) as streams,
            ClientSession(
                streams[0], streams[1], read_timeout_seconds=TIMEOUT, message_handler=on_message
            ) as session,
        ):
            await session.initialize()
            missing = await session.call_tool("billing__refund", refund)
            await session.call_tool("billing__lookup_order", {"order_id": "ORD-1002"})
            paid = await session.call_tool("billing__refund", refund)
            again = await session.call_tool("billing__refund", refund)
            before = cap(await session.list_tools())
            done = await anyio.run_process(activate, check=False)
            written = time.monotonic()  # the activation is in the ledger by the time the CLI exits
            assert done.returncode == 0, done.stderr.decode()
            await changed.wait()
            after = cap(await session.list_tools())
            await anyio.run_process([*grants, "revoke", "support-bot", "billing.refund"])
    assert text_of_result(missing).startswith("denied (prerequisite_missing): call billing__lookup_order")
    assert not paid.is_error
    assert text_of_result(again).startswith("denied (duplicate_call): ")
    assert changed_at[0] - written < 2.0
    assert (before, after) == (100, 1000)
    refunds = [
        e for e in guard.journal() if e["tool"] == "refund" and e["arguments"]["order_id"] == "ORD-1002"
    ]
    assert len(refunds) == 1
    reasons = [
        r["reason"] for r in guard.decisions_mentioning('"order_id":"ORD-1002"') if r["tool"] == "refund"
    ]
    assert reasons == ["prerequisite_missing", None, "duplicate_call"]


def text_of_result(result: types.CallToolResult) -> str:
    assert result.is_error
    return "".join(getattr(block, "text", "") for block in result.content)


async def test_over_stateless_http_a_prerequisite_is_the_agents_across_requests(guard: HttpGuard) -> None:
    refund = {"order_id": "ORD-1005", "amount": 6, "currency": "EUR"}

    async def client() -> Any:
        http = httpx2.AsyncClient(headers={"Authorization": guard.bearer("support-bot")}, timeout=TIMEOUT)
        return http, Client(streamable_http_client(guard.url, http_client=http), mode="2026-07-28")

    with anyio.fail_after(TIMEOUT):
        http, first = await client()
        async with http, first:
            await first.call_tool("billing__lookup_order", {"order_id": "ORD-1005"})
        http, second = await client()
        async with http, second:  # a new connection, no session: the same agent's lookup counts
            paid = await second.call_tool("billing__refund", refund)
    assert not paid.is_error, paid
    rows = [
        r
        for r in guard.decisions_mentioning('"order_id":"ORD-1005"')
        if r["tool"] in ("refund", "lookup_order")
    ]
    assert [(r["tool"], r["decision"], r["session"]) for r in rows][-2:] == [
        ("lookup_order", "allow", None),
        ("refund", "allow", None),
    ]
