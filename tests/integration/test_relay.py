"""Upstream elicitation, sampling and log messages relayed by the guard (manifest `upstream.relay`):
the guard's own Server in-process, real ClientSessions over memory streams (one per agent, all on
one guard, as HTTP serves them), and an upstream that asks things while it serves a call
(tests/upstreams/asking.py) in memory. What each client was asked, what the upstream heard back,
and the ledger file (plain sqlite3) are checked; the adversarial cases are the point."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, MCPError
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.message import SessionMessage

from mcp_guard.errors import ConfigError, UpstreamError
from mcp_guard.guard.app import open_guard
from mcp_guard.guard.caller import Caller
from mcp_guard.upstream import inbound
from mcp_guard.upstream.transports import memory_transport
from tests.helpers import TIMEOUT, Deployment, _connect, assert_no_secret, text_of
from tests.upstreams.asking import SECRET_ENV, Observed
from tests.upstreams.asking import build_server as build_asking

SECRET = "asking-secret-4b1e9c7d"
RELAY_ALL = {"elicitation": True, "sampling": {"max_tokens": 50}, "logging": True}
TOOLS = ("elicit", "elicit_url", "sample", "log", "ask_later", "input_required")


@dataclass
class Client:
    """One agent's connection: what it was asked, and what it answers."""

    session: ClientSession
    asked: list[Any] = field(default_factory=list)
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)


@dataclass
class Relayed:
    clients: dict[str, Client]
    observed: Observed
    deployment: Deployment

    async def call(self, agent: str, tool: str, arguments: Mapping[str, Any] | None = None) -> str:
        with anyio.fail_after(TIMEOUT):
            result = await self.clients[agent].session.call_tool(f"asking__{tool}", dict(arguments or {}))
        return text_of(result)

    def entries(self, kind: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{self.deployment.ledger_path}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT agent, server, tool, call_id, payload FROM entries WHERE kind = ? ORDER BY id",
                (kind,),
            ).fetchall()
            calls = dict(
                conn.execute("SELECT call_id, agent FROM entries WHERE kind = 'decision'").fetchall()
            )
        finally:
            conn.close()
        return [
            {"agent": a, "server": s, "tool": t, "call_agent": calls.get(c), **json.loads(p)}
            for a, s, t, c, p in rows
        ]


def _client(
    answer: Any = None, *, sampling: bool = True, elicitation: bool = True, modern: bool = False
) -> dict[str, Any]:
    """ClientSession callbacks for a client that declares what it is given, records what it was
    asked, and answers with `answer(params)` (or runs it, if it is a coroutine function)."""
    box: dict[str, Any] = {}

    async def respond(_: Any, params: Any) -> Any:
        box["client"].asked.append(params)
        result = answer(params) if answer is not None else None
        if hasattr(result, "__await__"):
            result = await result
        if result is not None:
            return result
        if isinstance(params, types.CreateMessageRequestParams):
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(text="a completion"), model="m"
            )
        return types.ElicitResult(action="accept", content={"name": "ada"})

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        box["client"].logs.append(params)

    args: dict[str, Any] = {"logging_callback": on_log, "_box": box, "modern": modern}
    if sampling:
        args["sampling_callback"] = respond
    if elicitation:
        args["elicitation_callback"] = respond
    return args


@asynccontextmanager
async def relayed(
    deployment: Deployment,
    clients: Mapping[str, dict[str, Any]],
    relay: Mapping[str, Any] | None = RELAY_ALL,
    grants: Mapping[str, Sequence[str]] | None = None,
) -> AsyncIterator[Relayed]:
    """One guard over the asking upstream (relay block `relay`; every tool granted to role qa
    unless `grants` says otherwise), and one client per agent, built by `_client`."""
    upstream: dict[str, Any] = {"command": "python", "args": ["-m", "asking"], "env": {SECRET_ENV: SECRET}}
    if relay is not None:
        upstream["relay"] = dict(relay)
    allowed = grants or {tool: ["role:qa"] for tool in TOOLS}
    tools = {tool: {"allow": list(allow)} for tool, allow in allowed.items()}
    deployment.agents = {"qa-bot": ["qa"], "qa-two": ["qa"], "idle-bot": []}
    deployment.add("asking", {"server": "asking", "upstream": upstream, "tools": tools})
    config, manifests = deployment.load()
    observed = Observed()
    transport = memory_transport(lambda m: build_asking(observed, m.upstream.env[SECRET_ENV]))
    agents = tuple(clients)
    async with (
        open_guard(config, manifests, agents, {"asking": transport}) as guard,
        AsyncExitStack() as stack,
    ):
        connected = {}
        for agent, args in clients.items():
            args = dict(args)
            box = args.pop("_box")
            session = await stack.enter_async_context(_connect(Caller(guard, agent), args))
            connected[agent] = box["client"] = Client(session)
        yield Relayed(connected, observed, deployment)


# -- elicitation and sampling ------------------------------------------------------------------------


async def test_an_elicitation_reaches_its_caller_scrubbed_and_is_recorded_without_its_content(
    deployment: Deployment,
) -> None:
    async with relayed(deployment, {"qa-bot": _client()}) as r:
        said = await r.call("qa-bot", "elicit", {"message": "Your name? (key SECRET)"})
        url = await r.call("qa-bot", "elicit_url", {"url": "https://example.test/login?k=SECRET"})
    assert said == 'accept {"name": "ada"}'
    assert url == 'accept {"name": "ada"}'
    asked = r.clients["qa-bot"].asked
    assert [type(p) for p in asked] == [types.ElicitRequestFormParams, types.ElicitRequestURLParams]
    assert asked[0].message.startswith("Your name? (key ")
    for params in asked:
        assert_no_secret(params.model_dump_json(), SECRET)
    entries = r.entries("elicitation")
    assert [(e["agent"], e["call_agent"], e["tool"], e["action"], e["mode"]) for e in entries] == [
        ("qa-bot", "qa-bot", "elicit", "accept", "form"),
        ("qa-bot", "qa-bot", "elicit_url", "accept", "url"),
    ]
    assert "ada" not in json.dumps(entries)
    assert "Your name" not in json.dumps(entries)


async def test_sampling_is_capped_at_max_tokens_loses_its_context_and_is_scrubbed(
    deployment: Deployment,
) -> None:
    async with relayed(deployment, {"qa-bot": _client()}) as r:
        over = await r.call(
            "qa-bot", "sample", {"prompt": "say SECRET", "max_tokens": 5000, "context": "allServers"}
        )
        under = await r.call("qa-bot", "sample", {"prompt": "hi", "max_tokens": 7})
    assert over == under == "sampled a completion"
    first, second = r.clients["qa-bot"].asked
    assert (first.max_tokens, second.max_tokens) == (50, 7)
    assert first.include_context is None
    assert_no_secret(first.model_dump_json(), SECRET)
    entries = r.entries("sampling")
    assert [(e["action"], e["max_tokens"], e["capped"]) for e in entries] == [
        ("completed", 50, True),
        ("completed", 7, False),
    ]
    assert "completion" not in json.dumps(entries)


async def test_concurrent_calls_of_two_agents_never_cross(deployment: Deployment) -> None:
    """While qa-bot's elicitation waits for its user, qa-two's call asks too: with calls of two
    connections in flight, a 2025-form request names no call, so the guard refuses it rather than
    guess; qa-bot is asked only its own question, qa-two nothing. One at a time, each gets its own."""
    results: dict[str, str] = {}

    async def while_asked(params: Any) -> Any:
        results["qa-two"] = await r.call("qa-two", "elicit", {"message": "for qa-two"})
        return None

    async with relayed(deployment, {"qa-bot": _client(while_asked), "qa-two": _client()}) as r:
        results["qa-bot"] = await r.call("qa-bot", "elicit", {"message": "for qa-bot"})
        alone = await r.call("qa-two", "elicit", {"message": "qa-two alone"})
    assert results["qa-bot"] == 'accept {"name": "ada"}'
    assert results["qa-two"].startswith("error ")
    assert alone == 'accept {"name": "ada"}'
    assert [p.message for p in r.clients["qa-bot"].asked] == ["for qa-bot"]
    assert [p.message for p in r.clients["qa-two"].asked] == ["qa-two alone"]
    assert [(e["agent"], e["call_agent"]) for e in r.entries("elicitation")] == [
        ("qa-bot", "qa-bot"),
        ("qa-two", "qa-two"),
    ]


async def test_an_upstream_request_made_after_its_call_has_ended_is_refused(deployment: Deployment) -> None:
    async with relayed(deployment, {"qa-bot": _client()}) as r:
        assert await r.call("qa-bot", "ask_later") == "later"
        r.observed.release.set()
        with anyio.fail_after(TIMEOUT):
            await r.observed.later_done.wait()
    assert r.observed.later == [
        "error elicitation/create refused: it cannot be tied to the call it belongs to"
    ]
    assert r.clients["qa-bot"].asked == []
    assert r.entries("elicitation") == []


async def test_without_relay_the_upstream_is_refused_as_before_and_sees_no_capability(
    deployment: Deployment,
) -> None:
    async with relayed(deployment, {"qa-bot": _client()}, relay=None) as r:
        said = await r.call("qa-bot", "elicit", {"message": "name?"})
        sampled = await r.call("qa-bot", "sample", {"prompt": "hi"})
        await r.call("qa-bot", "log", {"level": "error", "text": "boom"})
    assert (said, sampled) == ("error Elicitation not supported", "error Sampling not supported")
    assert r.clients["qa-bot"].asked == []
    assert r.clients["qa-bot"].logs == []
    capabilities = r.observed.capabilities[0]
    assert capabilities is not None
    assert (capabilities.sampling, capabilities.elicitation) == (None, None)
    assert r.entries("elicitation") == r.entries("sampling") == []


async def test_a_client_without_the_capability_is_asked_nothing_and_the_upstream_gets_an_error(
    deployment: Deployment,
) -> None:
    async with relayed(deployment, {"qa-bot": _client(sampling=False, elicitation=False)}) as r:
        said = await r.call("qa-bot", "elicit", {"message": "name?"})
        sampled = await r.call("qa-bot", "sample", {"prompt": "hi"})
    assert said.startswith("error ")
    assert sampled.startswith("error ")
    assert r.clients["qa-bot"].asked == []
    refused = [(e["action"], e["reason"]) for e in r.entries("elicitation") + r.entries("sampling")]
    assert refused == [("refused", "did not declare the capability")] * 2


async def test_a_declined_elicitation_and_a_failing_client_are_recorded_as_such(
    deployment: Deployment,
) -> None:
    def answer(params: Any) -> Any:
        if isinstance(params, types.CreateMessageRequestParams):
            return types.ErrorData(code=-1, message="user said no")
        return types.ElicitResult(action="decline")

    async with relayed(deployment, {"qa-bot": _client(answer)}) as r:
        said = await r.call("qa-bot", "elicit", {"message": "name?"})
        sampled = await r.call("qa-bot", "sample", {"prompt": "hi"})
    assert said == "decline null"
    assert sampled.startswith("error the client refused")
    assert [e["action"] for e in r.entries("elicitation") + r.entries("sampling")] == ["decline", "error"]


@asynccontextmanager
async def modern_upstream() -> AsyncIterator[ClientSession]:
    """A client session with the asking upstream on protocol 2026-07-28 (discover, no handshake)."""
    server = build_asking(Observed(), SECRET)
    to_server, server_in = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    server_out, to_client = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    async with anyio.create_task_group() as tg, to_server, server_in, server_out, to_client:
        tg.start_soon(server.run, server_in, server_out, server.create_initialization_options())
        async with ClientSession(to_client, to_server, read_timeout_seconds=TIMEOUT) as session:
            with anyio.fail_after(TIMEOUT):
                await session.discover()
            yield session
        tg.cancel_scope.cancel()


async def test_input_asked_for_in_the_multi_round_trip_form_goes_to_the_waiting_calls_own_ask() -> None:
    asked: list[Any] = []

    async def ask(request: Any) -> Any:
        asked.append(request)
        return types.ElicitResult(action="accept", content={"name": "ada"})

    async with modern_upstream() as session:
        token = inbound.ASK.set(ask)
        try:
            result = await inbound.call_tool(
                session, "asking", "input_required", {"message": "who?"}, TIMEOUT, None
            )
        finally:
            inbound.ASK.reset(token)
        with pytest.raises(UpstreamError, match="refused"):  # no call waiting: nobody may be asked
            await inbound.call_tool(session, "asking", "input_required", {"message": "who?"}, TIMEOUT, None)
    assert text_of(result) == 'round-1 accept {"name": "ada"}'
    assert [type(r.params) for r in asked] == [types.ElicitRequestFormParams]


async def rounds(client: Client, tool: str, arguments: dict[str, Any]) -> tuple[list[Any], Any]:
    """A multi-round-trip call: each round's input requests answered as `_client` answers them
    (accept, a completion), then retried with the `requestState`; the rounds seen and the result."""
    session, seen = client.session, []
    with anyio.fail_after(TIMEOUT):
        result = await session.call_tool(f"asking__{tool}", arguments, allow_input_required=True)
        while isinstance(result, types.InputRequiredResult):
            seen.append(result)
            answers: dict[str, Any] = {}
            for key, request in (result.input_requests or {}).items():
                client.asked.append(request.params)
                answers[key] = (
                    types.ElicitResult(action="accept", content={"name": "ada"})
                    if isinstance(request, types.ElicitRequest)
                    else types.CreateMessageResult(
                        role="assistant", content=types.TextContent(text="a completion"), model="m"
                    )
                )
            result = await session.call_tool(
                f"asking__{tool}",
                arguments,
                input_responses=answers,
                request_state=result.request_state,
                allow_input_required=True,
            )
    return seen, result


async def test_a_multi_round_trip_client_is_asked_in_its_calls_result_and_its_retry_completes_the_call(
    deployment: Deployment,
) -> None:
    clients = {"qa-bot": _client(modern=True), "qa-two": _client(modern=True)}
    async with relayed(deployment, clients) as r:
        seen, said = await rounds(r.clients["qa-bot"], "elicit", {"message": "name? SECRET"})
        _, sampled = await rounds(r.clients["qa-bot"], "sample", {"prompt": "hi", "max_tokens": 900})
        # Another agent holding the requestState of qa-bot's call cannot answer it, nor can anyone
        # name a call that does not exist.
        first = await r.clients["qa-bot"].session.call_tool(
            "asking__elicit", {"message": "again"}, allow_input_required=True
        )
        assert isinstance(first, types.InputRequiredResult)
        for agent, state in (("qa-two", first.request_state), ("qa-bot", "made-up")):
            with pytest.raises(MCPError, match="requestState names no call of yours"):
                await r.clients[agent].session.call_tool(
                    "asking__elicit", {}, input_responses={}, request_state=state, allow_input_required=True
                )
    assert text_of(said) == 'accept {"name": "ada"}'
    assert text_of(sampled) == "sampled a completion"
    assert len(seen) == 1
    assert seen[0].request_state is not None
    assert "round" not in seen[0].request_state  # the guard's own key, not the upstream's
    first_asked, sample_asked = r.clients["qa-bot"].asked
    assert_no_secret(first_asked.model_dump_json(), SECRET)
    assert sample_asked.max_tokens == 50
    assert r.clients["qa-two"].asked == []
    assert [
        (e["agent"], e["tool"], e["action"]) for e in r.entries("elicitation") + r.entries("sampling")
    ] == [
        ("qa-bot", "elicit", "accept"),
        ("qa-bot", "sample", "completed"),
    ]
    assert [c["tool"] for c in r.deployment.ledger()] == ["elicit", "sample", "elicit"]  # decided once each


async def test_a_multi_round_trip_client_without_the_capability_is_asked_nothing(
    deployment: Deployment,
) -> None:
    async with relayed(deployment, {"qa-bot": _client(modern=True, elicitation=False)}) as r:
        seen, said = await rounds(r.clients["qa-bot"], "elicit", {"message": "name?"})
    assert seen == []
    assert text_of(said).startswith("error ")
    assert [(e["action"], e["reason"]) for e in r.entries("elicitation")] == [
        ("refused", "did not declare the capability")
    ]


# -- log messages -------------------------------------------------------------------------------------


async def set_level(client: Client, level: types.LoggingLevel) -> None:
    with warnings.catch_warnings():  # deprecated by 2026-07-28, not by the versions it serves
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.session.set_logging_level(level)


async def test_log_messages_reach_listeners_with_a_grant_at_or_above_their_level_scrubbed(
    deployment: Deployment,
) -> None:
    grants = {tool: ["qa-bot"] for tool in TOOLS} | {"elicit": ["qa-two"]}
    clients = {"qa-bot": _client(), "qa-two": _client(), "idle-bot": _client()}
    async with relayed(deployment, clients, grants=grants) as r:
        for agent in ("idle-bot", "qa-two"):
            await set_level(r.clients[agent], "debug")
        await set_level(r.clients["qa-bot"], "warning")
        await r.call("qa-bot", "log", {"level": "info", "text": "quiet"})
        await r.call("qa-bot", "log", {"level": "error", "text": "key SECRET"})
        with anyio.fail_after(TIMEOUT):
            while len(r.clients["qa-two"].logs) < 2 or not r.clients["qa-bot"].logs:
                await anyio.wait_all_tasks_blocked()
    (heard,) = r.clients["qa-bot"].logs
    assert (heard.level, heard.logger) == ("error", "asking")
    assert isinstance(heard.data, dict)
    assert heard.data["text"].startswith("key ")
    assert_no_secret(json.dumps(heard.data), SECRET)
    assert [log.level for log in r.clients["qa-two"].logs] == ["info", "error"]  # a grant on the server
    assert r.clients["idle-bot"].logs == []  # no grant there


async def test_without_a_level_or_without_relay_no_log_message_reaches_a_client(
    deployment: Deployment,
) -> None:
    async with relayed(deployment, {"qa-bot": _client()}, relay={"logging": False}) as r:
        await set_level(r.clients["qa-bot"], "debug")  # accepted all the same
        await r.call("qa-bot", "log", {"level": "error", "text": "boom"})
        await anyio.wait_all_tasks_blocked()
    assert r.clients["qa-bot"].logs == []


async def test_a_flood_of_log_messages_is_bounded_for_the_operator_and_for_every_client(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(inbound, "LOG_MESSAGES_PER_SECOND", 5)
    caplog.set_level("INFO")
    async with relayed(deployment, {"qa-bot": _client()}) as r:
        await set_level(r.clients["qa-bot"], "debug")
        began = time.monotonic()
        await r.call("qa-bot", "log", {"level": "error", "text": "flood", "count": 500})
        await r.call("qa-bot", "log", {"level": "error", "text": "after", "count": 1})
        await anyio.wait_all_tasks_blocked()
        seconds = time.monotonic() - began
    windows = int(seconds) + 2  # the seconds the calls spanned, each letting 5 through
    heard = r.clients["qa-bot"].logs
    assert 5 <= len(heard) <= 5 * windows < 500
    shown = [m for m in caplog.messages if "[error]" in m and "flood" in m]
    assert 5 <= len(shown) <= 5 * windows
    if seconds < 1:  # both calls in one second: the second's message was held back too
        assert all(h.data["text"] == "flood" for h in heard)  # type: ignore[index]


@pytest.mark.parametrize("relay", [{"sampling": {"max_tokens": 0}}, {"sampling": True}, {"logs": True}])
def test_a_bad_relay_block_is_a_load_error(deployment: Deployment, relay: dict[str, Any]) -> None:
    upstream = {"command": "python", "relay": relay}
    deployment.add("asking", {"server": "asking", "upstream": upstream, "tools": {}})
    with pytest.raises(ConfigError, match="relay"):
        deployment.load()


async def test_a_modern_call_leaves_no_task_behind_once_its_client_has_the_result(
    deployment: Deployment,
) -> None:
    """The background forward of a multi-round-trip call ends with the call: a task left waiting
    per call piles up under load (tens of thousands at a few hundred calls a second)."""
    async with relayed(deployment, {"qa-bot": _client(modern=True)}) as r:
        assert await r.call("qa-bot", "log", {"level": "info", "text": "warm"})
        before = len(asyncio.all_tasks())
        for n in range(5):
            assert await r.call("qa-bot", "log", {"level": "info", "text": f"call {n}"})
        with anyio.fail_after(5):
            while len(asyncio.all_tasks()) > before:  # noqa: ASYNC110 - tasks have no event to wait on
                await anyio.sleep(0.01)
    assert [c["tool"] for c in deployment.ledger()] == ["log"] * 6
